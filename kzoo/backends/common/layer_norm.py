"""The portable norms: layer and RMS normalisation (and their fused residual-add forms) in
``keras.ops``, correct on every backend and every set of axes, statistics in at least float32.

``kzoo.ops.layer_norm`` validates its arguments and registers these as the fallbacks of its four
ops; backends build on them (``kzoo/backends/jax/layer_norm.py`` jits them).
"""

import keras
from keras import ops


def is_trailing(axes, ndim):
    """Whether ``axes`` are exactly the last ``len(axes)`` dimensions."""
    return tuple(axes) == tuple(range(ndim - len(axes), ndim))


def _float_dtype(dtype):
    dtype = keras.backend.standardize_dtype(dtype)
    return dtype if "float" in dtype else "float32"


def _upcast(x):
    """``x`` in its compute dtype (at least float32), its output dtype and the compute dtype."""
    dtype = keras.backend.standardize_dtype(x.dtype)
    out_dtype = dtype if "float" in dtype else "float32"
    compute_dtype = keras.backend.result_type(out_dtype, "float32")
    return (x if dtype == compute_dtype else ops.cast(x, compute_dtype)), out_dtype, compute_dtype


def layer_norm_portable(x, gamma, beta, axes, epsilon, rms_scaling=False):
    """The ``keras.ops`` implementation: statistics in at least float32, any axes, any backend.

    ``axes`` must already be normalised (sorted, non-negative; see ``normalize_axes``). The
    variance is the mean of squared deviations from the mean (two passes), so inputs with a mean
    much larger than their spread keep their precision.
    """
    ndim = len(x.shape)
    x, out_dtype, compute_dtype = _upcast(x)
    gamma, beta = (
        None if p is None else _broadcast(p, x.shape, axes, ndim, compute_dtype)
        for p in (gamma, beta)
    )
    mean = ops.mean(x, axis=axes, keepdims=True)
    centred = x - mean
    variance = ops.mean(ops.square(centred), axis=axes, keepdims=True)
    inv = ops.rsqrt(variance + epsilon)
    if rms_scaling:
        # keras's (deprecated) rms_scaling: scale by the centred variance, do not subtract the
        # mean, and ignore beta.
        out = x * inv
        if gamma is not None:
            out = out * gamma
    else:
        out = centred * inv
        if gamma is not None:
            out = out * gamma
        if beta is not None:
            out = out + beta
    return out if out_dtype == compute_dtype else ops.cast(out, out_dtype)


def rms_norm_portable(x, gamma, axes, epsilon):
    """The ``keras.ops`` RMS norm: ``x * rsqrt(mean(x^2) + epsilon) * gamma`` in at least float32.

    The same formula as ``keras.ops.rms_normalization``, on any set of ``axes`` (normalised, as
    for ``layer_norm_portable``), with ``gamma`` broadcast along them.
    """
    ndim = len(x.shape)
    x, out_dtype, compute_dtype = _upcast(x)
    out = x * ops.rsqrt(ops.mean(ops.square(x), axis=axes, keepdims=True) + epsilon)
    if gamma is not None:
        out = out * _broadcast(gamma, x.shape, axes, ndim, compute_dtype)
    return out if out_dtype == compute_dtype else ops.cast(out, out_dtype)


def add_layer_norm_portable(x, residual, gamma, beta, axes, epsilon):
    """``(layer_norm_portable(x + residual), x + residual)``; XLA fuses the add into the norm."""
    z = ops.add(x, residual)
    return layer_norm_portable(z, gamma, beta, axes, epsilon), z


def add_rms_norm_portable(x, residual, gamma, axes, epsilon):
    """``(rms_norm_portable(x + residual), x + residual)``."""
    z = ops.add(x, residual)
    return rms_norm_portable(z, gamma, axes, epsilon), z


def _broadcast(p, shape, axes, ndim, dtype):
    """``p`` in ``dtype``, shaped to broadcast along ``axes`` of a rank-``ndim`` ``shape``.

    Parameters of the trailing axes broadcast as they are; casts and reshapes that would change
    nothing are skipped (each is a dispatched op when running eagerly).
    """
    if keras.backend.standardize_dtype(p.dtype) != dtype:
        p = ops.cast(p, dtype)
    pshape = tuple(p.shape)
    if pshape == tuple(shape[a] for a in axes) and is_trailing(axes, ndim):
        return p
    target = [1] * ndim
    for a in axes:
        target[a] = shape[a]
    return p if pshape == tuple(target) else ops.reshape(p, target)
