"""Layer norm on TensorFlow: keras's own formula, written in ``tf`` directly.

keras's TensorFlow layer takes the two-pass ``tf.nn.moments`` and folds ``gamma`` into the
inverse deviation (``x * inv + (beta - mean * inv)``); the portable form (``(x - mean) * inv *
gamma + beta``) compiles under XLA to a different fused tail. With keras's arithmetic kzoo's
layer compiles to exactly keras's program (``tests/ops/test_layer_norm_programs.py``), so it
cannot cost more, on any axes. The variance is still the mean of squared deviations, so
large-mean inputs keep their precision; the fold costs at most an ulp of ``x * inv``.
"""

import tensorflow as tf


def _param(p, compute, shape, axes, ndim):
    """``p`` in ``compute``, shaped to broadcast along ``axes`` of an input of ``shape``."""
    if p.dtype != compute:
        p = tf.cast(p, compute)
    trailing = tuple(axes) == tuple(range(ndim - len(axes), ndim))
    if trailing and len(p.shape) <= len(axes):
        if len(p.shape) == len(axes):
            return p
        return tf.reshape(p, [shape[a] for a in axes])
    target = [1] * ndim
    for a in axes:
        target[a] = shape[a]
    return tf.reshape(p, target)


def layer_norm(x, gamma, beta, axes, epsilon, rms_scaling=False):
    dtype = x.dtype
    out_dtype = dtype if dtype.is_floating else tf.float32
    compute = tf.float64 if dtype == tf.float64 else tf.float32
    if dtype != compute:
        x = tf.cast(x, compute)
    ndim = len(x.shape)
    shape = tf.shape(x) if any(x.shape[a] is None for a in axes) else x.shape
    axes = list(axes)
    mean, variance = tf.nn.moments(x, axes, keepdims=True)
    inv = tf.math.rsqrt(variance + epsilon)
    if gamma is not None:
        inv = inv * _param(gamma, compute, shape, axes, ndim)
    shift = -mean * inv
    if beta is not None:
        shift = shift + _param(beta, compute, shape, axes, ndim)
    y = x * inv + shift
    return y if y.dtype == out_dtype else tf.cast(y, out_dtype)


def supports(shape, dtype, axes=(), rms_scaling=False, **kwargs):
    """Every layer norm but keras's deprecated ``rms_scaling`` (the portable form serves it)."""
    return not rms_scaling
