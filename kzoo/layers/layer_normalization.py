"""``LayerNormalization``: keras's layer, right on every axis and backend, with fused GPU kernels.

``_NormLayer`` holds what it shares with ``RMSNormalization``: axis checks, the built axes, the
optional ``residual`` call argument (fused residual add) and the checks of loaded weights.
"""

import keras
from keras import constraints, initializers, regularizers

from kzoo.ops.layer_norm import add_layer_norm, check_epsilon, layer_norm, normalize_axes
from kzoo.utils.errors import ArgumentTypeError

# Whether a backend dtype object names a given keras dtype, so that a call casts only when needed.
_SAME_DTYPE = {}


def _check_axis(axis):
    """``axis`` as an int or a list of distinct ints.

    The wrong type is an ``ArgumentTypeError`` (keras raises ``TypeError`` for it); an empty or
    repeated list a ``ValueError``. Whether the axes exist is checked at build, against the input.
    """
    if isinstance(axis, bool) or not isinstance(axis, (int, list, tuple)):
        raise ArgumentTypeError(
            f"`axis` must be an int or a list of ints; received {axis!r} of type "
            f"{type(axis).__name__}."
        )
    if isinstance(axis, (list, tuple)):
        if any(isinstance(a, bool) or not isinstance(a, int) for a in axis):
            raise ArgumentTypeError(f"`axis` must be an int or a list of ints; received {axis!r}.")
        if not axis:
            raise ValueError("`axis` must be an int or a non-empty list of ints; received [].")
        if len(set(axis)) != len(axis):
            raise ValueError(f"`axis`={axis!r} names the same axis more than once.")
        axis = list(axis)
    return axis


class _NormLayer(keras.layers.Layer):
    """A normalisation layer over ``axis``, optionally fused with a residual add.

    Called as ``layer(x)`` it returns the normalised ``x``; called as ``layer(x, residual=r)`` it
    returns ``(normalised x + r, x + r)``, computed in one pass where a kernel runs: the residual
    step of a pre-norm transformer block.
    """

    def _param_shape(self, input_shape):
        """The shape of the weights; sets ``self.axis`` as keras's layers store it once built."""
        axes = normalize_axes(self.axis, len(input_shape))
        shape = tuple(input_shape[a] for a in axes)
        if any(d is None for d in shape):
            raise ValueError(
                f"The normalised axes {list(axes)} of input shape {tuple(input_shape)} must have "
                "known sizes."
            )
        if any(d == 0 for d in shape):
            raise ValueError(
                f"Cannot normalise over axes {list(axes)} of input shape {tuple(input_shape)}: "
                "the normalised size is 0."
            )
        # keras stores the built axes as a sorted list of the axes as given (negative kept).
        given = self.axis if isinstance(self.axis, list) else [self.axis]
        self.axis = sorted(given)
        # The hashable form the op caches its plans under, computed once here, not per call.
        self._axis_key = tuple(self.axis)
        return shape

    def _output(self, y):
        """``y`` in the layer's compute dtype (keras's layers end with the same cast)."""
        key = (y.dtype, self.compute_dtype)
        same = _SAME_DTYPE.get(key)
        if same is None:
            same = _SAME_DTYPE[key] = keras.backend.standardize_dtype(y.dtype) == self.compute_dtype
        return y if same else keras.ops.cast(y, self.compute_dtype)

    def compute_output_shape(self, input_shape, residual_shape=None):
        normalize_axes(self.axis, len(input_shape))
        if residual_shape is None:
            return tuple(input_shape)
        return tuple(input_shape), tuple(input_shape)

    def compute_output_spec(self, inputs, residual=None):
        out = keras.KerasTensor(self.compute_output_shape(inputs.shape), dtype=self.compute_dtype)
        if residual is None:
            return out
        if tuple(residual.shape) != tuple(inputs.shape):
            raise ValueError(
                f"`residual` has shape {tuple(residual.shape)}; expected the input's shape "
                f"{tuple(inputs.shape)}."
            )
        total = keras.backend.result_type(inputs.dtype, residual.dtype)
        return out, keras.KerasTensor(inputs.shape, dtype=total)

    def load_own_variables(self, store):
        expected = list(self.weights) if self.built else []
        if self.built and len(store.keys()) == len(expected):
            for i, v in enumerate(expected):
                found = tuple(store[str(i)].shape)
                if found != tuple(v.shape):
                    raise ValueError(
                        f"Layer '{self.name}': the saved `{v.name}` has shape {found}; this "
                        f"layer expects {tuple(v.shape)} (axis={self.axis})."
                    )
        super().load_own_variables(store)


@keras.saving.register_keras_serializable(package="kzoo")
class LayerNormalization(_NormLayer):
    """Layer normalisation (Ba et al., 2016), a drop-in for ``keras.layers.LayerNormalization``.

    Same arguments, weights (``gamma`` then ``beta``, shaped like the normalised axes) and
    config as keras's layer, so it loads that layer's weights. The computation goes through
    ``kzoo.ops.layer_norm``: a Triton kernel for torch on CUDA, a Pallas kernel for JAX on GPU,
    and a ``keras.ops`` composition elsewhere. Unlike keras 3.15 on torch it is also correct when
    the normalised axes are not the trailing ones (e.g. ``axis=1`` on channels-first data).

    ``layer(x, residual=r)`` returns ``(layer(x + r), x + r)`` through
    ``kzoo.ops.add_layer_norm``: one pass over ``x`` and ``r`` where a kernel runs (the residual
    step of a pre-norm transformer block).

    Args:
        axis: Int or list of ints, the axes to normalise over. Defaults to -1.
        epsilon: Positive float added to the variance, at least 2**-126 (the smallest normal
            float32): an all-zero row then normalises to ``beta``, where keras's layer with
            ``epsilon=0`` returns NaN. Defaults to 1e-3.
        center: Whether to add the learned offset ``beta``. Defaults to True.
        scale: Whether to multiply by the learned scale ``gamma``. Defaults to True.
        rms_scaling: keras's deprecated variant: scale by the variance without centring (no
            ``beta``). Defaults to False.
        beta_initializer, gamma_initializer: Initialisers of the weights.
        beta_regularizer, gamma_regularizer: Optional regularisers.
        beta_constraint, gamma_constraint: Optional constraints.
        **kwargs: Base layer arguments (``name``, ``dtype``, ...).

    Example:

    >>> import numpy as np
    >>> layer = LayerNormalization(axis=1)  # channels-first: normalise over C
    >>> x = np.random.rand(2, 4, 5, 5).astype("float32")
    >>> y = layer(x)
    >>> tuple(y.shape), tuple(layer.gamma.shape)
    ((2, 4, 5, 5), (4,))
    >>> normed, total = LayerNormalization()(x, residual=x)  # normalises x + x
    """

    def __init__(
        self,
        axis=-1,
        epsilon=1e-3,
        center=True,
        scale=True,
        rms_scaling=False,
        beta_initializer="zeros",
        gamma_initializer="ones",
        beta_regularizer=None,
        gamma_regularizer=None,
        beta_constraint=None,
        gamma_constraint=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        axis = _check_axis(axis)
        epsilon = check_epsilon(epsilon)
        for name, value in (("center", center), ("scale", scale), ("rms_scaling", rms_scaling)):
            if not isinstance(value, bool):
                raise ValueError(f"`{name}` must be True or False; received {value!r}.")
        self.axis = axis
        self.epsilon = epsilon
        self.center = center
        self.scale = scale
        self.rms_scaling = rms_scaling
        self.beta_initializer = initializers.get(beta_initializer)
        self.gamma_initializer = initializers.get(gamma_initializer)
        self.beta_regularizer = regularizers.get(beta_regularizer)
        self.gamma_regularizer = regularizers.get(gamma_regularizer)
        self.beta_constraint = constraints.get(beta_constraint)
        self.gamma_constraint = constraints.get(gamma_constraint)
        self.supports_masking = True
        # Statistics are computed in float32 whatever the input; keep the weights in their dtype.
        self.autocast = False

    def build(self, input_shape):
        shape = self._param_shape(input_shape)
        if self.scale or self.rms_scaling:
            self.gamma = self.add_weight(
                name="gamma",
                shape=shape,
                initializer=self.gamma_initializer,
                regularizer=self.gamma_regularizer,
                constraint=self.gamma_constraint,
                trainable=True,
                autocast=False,
            )
        else:
            self.gamma = None
        if self.center and not self.rms_scaling:
            self.beta = self.add_weight(
                name="beta",
                shape=shape,
                initializer=self.beta_initializer,
                regularizer=self.beta_regularizer,
                constraint=self.beta_constraint,
                trainable=True,
                autocast=False,
            )
        else:
            self.beta = None

    def call(self, inputs, residual=None):
        if residual is None:
            y = layer_norm(
                inputs, self.gamma, self.beta, self._axis_key, self.epsilon, self.rms_scaling
            )
            return self._output(y)
        if self.rms_scaling:
            total = keras.ops.add(inputs, residual)
            y = layer_norm(total, self.gamma, None, self._axis_key, self.epsilon, True)
        else:
            y, total = add_layer_norm(
                inputs, residual, self.gamma, self.beta, self._axis_key, self.epsilon
            )
        return self._output(y), total

    def get_config(self):
        config = {
            "axis": self.axis,
            "epsilon": self.epsilon,
            "center": self.center,
            "scale": self.scale,
            "rms_scaling": self.rms_scaling,
            "beta_initializer": initializers.serialize(self.beta_initializer),
            "gamma_initializer": initializers.serialize(self.gamma_initializer),
            "beta_regularizer": regularizers.serialize(self.beta_regularizer),
            "gamma_regularizer": regularizers.serialize(self.gamma_regularizer),
            "beta_constraint": constraints.serialize(self.beta_constraint),
            "gamma_constraint": constraints.serialize(self.gamma_constraint),
        }
        return {**super().get_config(), **config}
