"""Layer norm over trailing axes on torch: ``F.layer_norm`` (Welford statistics, one kernel).

keras hands torch tensors to ``F.layer_norm`` for trailing axes, which is both right and
fastest there; other axes (where keras's torch path is wrong) take the portable composition.
"""

from keras import ops


def supports(shape, dtype, axes=(), rms_scaling=False, params_match=False, **kwargs):
    """Trailing axes, and gamma/beta shaped like them (``F.layer_norm``'s normalized_shape)."""
    ndim = len(shape)
    return not rms_scaling and params_match and tuple(axes) == tuple(range(ndim - len(axes), ndim))


def layer_norm(x, gamma, beta, axes, epsilon, rms_scaling=False):
    return ops.layer_normalization(x, gamma, beta, axis=list(axes), epsilon=epsilon)
