"""``Dropout``: keras's layer, with a mask that costs JAX a quarter of the random hashing."""

import numbers

import keras

from kzoo.backends import dispatch
from kzoo.utils.errors import ArgumentTypeError

OP = "dropout"


def dropout_portable(inputs, rate, noise_shape, seed_generator):
    """keras's dropout: the mask from ``keras.random``, kept values scaled by ``1 / (1 - rate)``."""
    return keras.random.dropout(inputs, rate, noise_shape=noise_shape, seed=seed_generator)


dispatch.register(
    OP,
    dispatch.Implementation(
        name="portable",
        target="kzoo.layers.dropout:dropout_portable",
        description="keras.random.dropout",
    ),
    fallback=True,
)


@keras.saving.register_keras_serializable(package="kzoo")
class Dropout(keras.layers.Dropout):
    """Dropout, a drop-in for ``keras.layers.Dropout`` (same arguments, config and seeding).

    During training each element (or each slice along the axes where ``noise_shape`` is 1) is
    zeroed with probability ``rate`` and the others are scaled so that the expected output is
    the input. On TensorFlow and torch this is keras's own dropout. On JAX the mask comes from
    16-bit fields of a threefry hash (``kzoo/backends/jax/dropout.py``): four mask elements per
    hash instead of one, which halves the cost of dropout's random numbers in DETR's training
    step on the CPU. The drop probability is then ``round(rate * 65536) / 65536`` (within
    ``2**-17`` of ``rate``: 0.1000061 for 0.1) and the kept values are scaled by the inverse of
    the matching keep probability, so the expected output is still exactly the input.

    Args:
        rate: Float in ``[0, 1]``, the fraction of the input to drop.
        noise_shape: Optional shape of the mask, broadcast to the input (``None`` entries take
            the input's size).
        seed: Optional int, the seed of the layer's random stream.
        **kwargs: Base layer arguments (``name``, ``dtype``, ...).

    Example:

    >>> import numpy as np
    >>> layer = Dropout(0.5, seed=1)
    >>> x = np.ones((2, 1000), "float32")
    >>> y = np.asarray(layer(x, training=True))
    >>> sorted(set(np.round(y.ravel(), 4).tolist()))
    [0.0, 2.0]
    >>> bool(np.all(np.asarray(layer(x)) == x))  # inference: the identity
    True
    """

    def __init__(self, rate, noise_shape=None, seed=None, **kwargs):
        # keras compares ``rate`` with 0 and 1 and fails with a bare TypeError on a string or
        # None; this says which argument, and is still a TypeError (and a ValueError).
        if isinstance(rate, bool) or not isinstance(rate, numbers.Real):
            raise ArgumentTypeError(
                f"`rate` must be a float in [0, 1]; received {rate!r} of type "
                f"{type(rate).__name__}."
            )
        super().__init__(rate, noise_shape=noise_shape, seed=seed, **kwargs)

    def call(self, inputs, training=False):
        if not training or self.rate == 0:
            return inputs
        dtype = keras.backend.standardize_dtype(inputs.dtype)
        if "float" not in dtype:
            # keras's dropout fails on integer inputs on every backend, in the backend's terms
            # (a TypeError on JAX, a ValueError on TensorFlow, a RuntimeError on torch); kzoo's
            # JAX mask would scale them with integer arithmetic.
            raise ArgumentTypeError(
                f"`inputs` of Dropout must be floating point in training; got dtype {dtype}."
            )
        if self.rate >= 1:
            return keras.ops.zeros_like(inputs)
        noise_shape = self.noise_shape
        if noise_shape is not None:
            shape = tuple(inputs.shape)
            # Checked here so that every backend gives this error (keras's differ: a ValueError
            # on JAX, TensorFlow's InvalidArgumentError, torch's RuntimeError).
            if len(noise_shape) != len(shape) or any(
                n is not None and d is not None and n not in (1, d)
                for n, d in zip(noise_shape, shape)
            ):
                raise ValueError(
                    f"`noise_shape`={noise_shape} does not broadcast to the inputs' shape "
                    f"{shape}: it needs one entry per axis, each 1, None or the input's size."
                )
            noise_shape = tuple(
                inputs.shape[i] if size is None else size for i, size in enumerate(noise_shape)
            )
        return dispatch.select(OP).load()(inputs, self.rate, noise_shape, self.seed_generator)
