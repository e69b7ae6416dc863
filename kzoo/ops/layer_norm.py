"""Layer normalisation as a function, sent through ``kzoo.backends.dispatch``.

``layer_norm`` validates its arguments, then hands the call to the implementation that the
dispatch table picks for this backend, device, dtype and shape: a Triton kernel for torch tensors
on CUDA (``kzoo/backends/torch/``), a Pallas kernel for JAX on GPU (``kzoo/backends/jax/``),
``F.layer_norm`` for torch on trailing axes, and otherwise ``layer_norm_portable``, written in
``keras.ops`` and correct on every backend and every set of axes (unlike
``keras.ops.layer_normalization`` on torch, which treats any run of consecutive axes as the
trailing ones). The kernel modules are named by a dotted path and imported on first use, so
importing this module imports neither triton nor Pallas.
"""

import math

import keras
from keras import ops

from kzoo.backends import dispatch

OP_NAME = "layer_norm"
KERNEL_DTYPES = ("float16", "bfloat16", "float32")


def normalize_axes(axis, ndim, argument="axis"):
    """``axis`` (an int or a sequence of ints) as a sorted tuple of non-negative axes.

    Raises:
        ValueError: when an axis is not an int, is out of range for ``ndim`` dimensions, or is
            repeated (``-1`` and ``ndim - 1`` count as the same axis).
    """
    if isinstance(axis, bool):
        raise ValueError(f"`{argument}` must be an int or a list of ints; received {axis!r}.")
    axes = [axis] if isinstance(axis, int) else axis
    if not isinstance(axes, (list, tuple)) or not axes:
        raise ValueError(
            f"`{argument}` must be an int or a non-empty list of ints; received {axis!r}."
        )
    result = []
    for a in axes:
        if isinstance(a, bool) or not isinstance(a, int):
            raise ValueError(f"`{argument}` must contain only ints; received {axis!r}.")
        if not -ndim <= a < ndim:
            raise ValueError(
                f"`{argument}`={axis!r} is out of range for an input of rank {ndim}; "
                f"expected axes in [{-ndim}, {ndim - 1}]."
            )
        result.append(a % ndim)
    if len(set(result)) != len(result):
        raise ValueError(
            f"`{argument}`={axis!r} names the same axis more than once (rank {ndim} input)."
        )
    return tuple(sorted(result))


def is_trailing(axes, ndim):
    """Whether ``axes`` are exactly the last ``len(axes)`` dimensions."""
    return tuple(axes) == tuple(range(ndim - len(axes), ndim))


def _float_dtype(dtype):
    dtype = keras.backend.standardize_dtype(dtype)
    return dtype if "float" in dtype else "float32"


def layer_norm_portable(x, gamma, beta, axes, epsilon, rms_scaling=False):
    """The ``keras.ops`` implementation: statistics in at least float32, any axes, any backend.

    ``axes`` must already be normalised (sorted, non-negative; see ``normalize_axes``). The
    variance is the mean of squared deviations from the mean (two passes), so inputs with a mean
    much larger than their spread keep their precision.
    """
    ndim = len(x.shape)
    out_dtype = _float_dtype(x.dtype)
    compute_dtype = keras.backend.result_type(out_dtype, "float32")
    x = ops.cast(x, compute_dtype)
    broadcast = [1] * ndim
    for a in axes:
        broadcast[a] = x.shape[a]

    def _param(p):
        if p is None:
            return None
        p = ops.cast(p, compute_dtype)
        if tuple(p.shape) != tuple(broadcast):
            p = ops.reshape(p, broadcast)
        return p

    gamma, beta = _param(gamma), _param(beta)
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
    return ops.cast(out, out_dtype)


def _platform_of(x):
    """The platform holding ``x`` (a torch tensor may sit on the CPU of a CUDA machine)."""
    return dispatch.select("tensor_platform", platform="any").load()(x)


def _distributed():
    """Whether a ``keras.distribution`` is active (its layouts are for XLA to partition)."""
    try:
        return keras.distribution.distribution() is not None
    except (AttributeError, TypeError):
        return False


def kernel_supports(
    shape, dtype, axes=(), rms_scaling=False, params_flat=True, distributed=False, **kwargs
):
    """The hand kernels cover standard layer norm over the trailing axes with flat-able params.

    Under an active ``keras.distribution`` the portable path runs instead: XLA partitions it
    along the sharded axes, while a kernel call would be gathered onto every device.
    """
    ndim = len(shape)
    if distributed or rms_scaling or not params_flat or not is_trailing(axes, ndim):
        return False
    return all(d is not None for d in shape)


def _check_params(name, p, expected):
    if p is None:
        return
    shape = tuple(p.shape)
    n = math.prod(expected)
    if shape != tuple(expected) and math.prod(shape) != n:
        raise ValueError(
            f"`{name}` has shape {shape}; expected {tuple(expected)} (the sizes of the "
            "normalised axes) or any shape with the same number of elements."
        )


def layer_norm(x, gamma=None, beta=None, axis=-1, epsilon=1e-3, rms_scaling=False):
    """Layer normalisation over ``axis`` of ``x``, with optional scale ``gamma`` and offset ``beta``.

    Computes ``(x - mean) / sqrt(var + epsilon) * gamma + beta`` with the mean and variance taken
    over ``axis`` (statistics in float32 for float16/bfloat16 inputs; the result has the input's
    dtype). On torch with CUDA tensors the Triton kernel runs, on JAX on GPU the Pallas kernel,
    elsewhere (or with ``KZOO_KERNELS=off``) a ``keras.ops`` composition; all are differentiable
    with respect to ``x``, ``gamma`` and ``beta``.

    Args:
        x: Input tensor.
        gamma: Optional scale with the shape of the normalised axes (or the same number of
            elements).
        beta: Optional offset, shaped like ``gamma``.
        axis: Int or list of ints: the axes to normalise over. Defaults to -1.
        epsilon: Non-negative float added to the variance. Defaults to 1e-3 (keras's default).
        rms_scaling: keras's deprecated variant: scale by the variance without centring and
            without ``beta``.

    Returns:
        A tensor shaped and typed like ``x``.

    Example:

    >>> import numpy as np
    >>> x = np.arange(6, dtype="float32").reshape(2, 3)
    >>> y = layer_norm(x, epsilon=0.0)
    >>> np.round(keras.ops.convert_to_numpy(y), 4)
    array([[-1.2247,  0.    ,  1.2247],
           [-1.2247,  0.    ,  1.2247]], dtype=float32)
    """
    if not isinstance(epsilon, (int, float)) or isinstance(epsilon, bool) or epsilon < 0:
        raise ValueError(f"`epsilon` must be a non-negative float; received {epsilon!r}.")
    epsilon = float(epsilon)
    if isinstance(x, keras.KerasTensor) or any(
        isinstance(p, keras.KerasTensor) for p in (gamma, beta)
    ):
        return LayerNormOp(axis=axis, epsilon=epsilon, rms_scaling=rms_scaling)(x, gamma, beta)
    x = ops.convert_to_tensor(x)
    shape = tuple(x.shape)
    axes = normalize_axes(axis, len(shape))
    normalized = [shape[a] for a in axes]
    if any(d == 0 for d in normalized):
        raise ValueError(
            f"Cannot normalise over axes {axes} of an input of shape {shape}: the normalised "
            "size is 0."
        )
    if all(d is not None for d in normalized):
        _check_params("gamma", gamma, normalized)
        _check_params("beta", beta, normalized)
    if gamma is not None:
        gamma = ops.convert_to_tensor(gamma)
    if beta is not None:
        beta = ops.convert_to_tensor(beta)
    params_flat = all(p is None or len(p.shape) <= len(axes) for p in (gamma, beta))
    params_match = all(p is None or len(p.shape) == len(axes) for p in (gamma, beta))
    dtype = keras.backend.standardize_dtype(x.dtype)
    impl = dispatch.select(
        OP_NAME,
        platform=_platform_of(x),
        dtype=dtype,
        shape=shape,
        axes=axes,
        rms_scaling=rms_scaling,
        params_flat=params_flat,
        params_match=params_match,
        distributed=_distributed(),
    )
    return impl.load()(x, gamma, beta, axes, epsilon, rms_scaling)


class LayerNormOp(keras.Operation):
    """The symbolic form of ``layer_norm`` for functional models."""

    def __init__(self, axis=-1, epsilon=1e-3, rms_scaling=False, name=None):
        super().__init__(name=name)
        self.axis = axis
        self.epsilon = epsilon
        self.rms_scaling = rms_scaling

    def call(self, x, gamma=None, beta=None):
        return layer_norm(x, gamma, beta, self.axis, self.epsilon, self.rms_scaling)

    def compute_output_spec(self, x, gamma=None, beta=None):
        normalize_axes(self.axis, len(x.shape))
        return keras.KerasTensor(x.shape, dtype=_float_dtype(x.dtype))


dispatch.register(
    OP_NAME,
    dispatch.Implementation(
        name="portable",
        target="kzoo.ops.layer_norm:layer_norm_portable",
        description="keras.ops, fp32 two-pass statistics, any axes",
    ),
    fallback=True,
)
