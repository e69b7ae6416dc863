"""``RMSNormalization``: a drop-in for keras's layer, on every axis, with fused GPU kernels."""

import keras

from kzoo.layers.layer_normalization import _check_axis, _NormLayer
from kzoo.ops.layer_norm import add_rms_norm, check_epsilon, rms_norm


@keras.saving.register_keras_serializable(package="kzoo")
class RMSNormalization(_NormLayer):
    """RMS normalisation (Zhang & Sennrich, 2019), a drop-in for ``keras.layers.RMSNormalization``.

    ``y = x * rsqrt(mean(x^2, axis) + epsilon) * scale``. Same arguments, weight (``scale``,
    shaped like the normalised axes, initialised to ones) and config as keras's layer, so it
    loads that layer's weights and gives its outputs. The computation goes through
    ``kzoo.ops.rms_norm``: a Triton kernel for torch on CUDA, a Pallas kernel for JAX on GPU,
    ``F.rms_norm`` for torch on the CPU and a ``keras.ops`` composition elsewhere. It is also
    correct on axes other than the trailing ones, where keras's layer multiplies by ``scale``
    along the last axis (an error, or wrong numbers when the sizes happen to agree). Statistics
    are float32; under a mixed precision policy the scale stays float32 (keras's layer rounds it
    to the compute dtype first).

    ``layer(x, residual=r)`` returns ``(layer(x + r), x + r)`` through ``kzoo.ops.add_rms_norm``:
    one pass over ``x`` and ``r`` where a kernel runs.

    Args:
        axis: Int or list of ints, the axes to normalise over. Defaults to -1.
        epsilon: Positive float added to the mean square, at least 2**-126 (the smallest
            normal float32): an all-zero row then normalises to 0, where keras's layer with
            ``epsilon=0`` returns NaN. Defaults to 1e-6.
        **kwargs: Base layer arguments (``name``, ``dtype``, ...).

    Example:

    >>> import numpy as np
    >>> layer = RMSNormalization()
    >>> x = np.random.rand(2, 8, 16).astype("float32")
    >>> tuple(layer(x).shape), tuple(layer.scale.shape)
    ((2, 8, 16), (16,))
    >>> normed, total = layer(x, residual=x)  # normalises x + x
    """

    def __init__(self, axis=-1, epsilon=1e-6, **kwargs):
        super().__init__(**kwargs)
        self.axis = _check_axis(axis)
        self.epsilon = check_epsilon(epsilon)
        self.supports_masking = True
        self.autocast = False

    def build(self, input_shape):
        self.scale = self.add_weight(
            name="scale",
            shape=self._param_shape(input_shape),
            initializer="ones",
            autocast=False,
        )

    def call(self, inputs, residual=None):
        if residual is None:
            return self._output(rms_norm(inputs, self.scale, self._axis_key, self.epsilon))
        y, total = add_rms_norm(inputs, residual, self.scale, self._axis_key, self.epsilon)
        return self._output(y), total

    def get_config(self):
        return {**super().get_config(), "axis": self.axis, "epsilon": self.epsilon}
