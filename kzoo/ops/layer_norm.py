"""Layer and RMS normalisation, and their fused residual-add forms, sent through the dispatch.

Four ops share one path: ``layer_norm``, ``rms_norm``, ``add_layer_norm`` and ``add_rms_norm``
(the last two return ``(norm(x + residual), x + residual)`` from one pass over the inputs where
a kernel runs). Each validates its arguments, then hands the call to the implementation that the
dispatch table picks for this backend, device, dtype and shape: Triton kernels for torch tensors
on CUDA (``kzoo/backends/torch/``), Pallas kernels for JAX on GPU (``kzoo/backends/jax/``),
``F.layer_norm`` / ``F.rms_norm`` for torch on trailing axes, and otherwise the ``*_portable``
functions here, written in ``keras.ops`` and correct on every backend and every set of axes
(unlike ``keras.ops.layer_normalization`` on torch, which treats any run of consecutive axes as
the trailing ones). The kernel modules are named by a dotted path and imported on first use, so
importing this module imports neither triton nor Pallas.

Nothing that depends only on shapes, dtypes and arguments is recomputed per call: the validated
axes and the chosen implementation are cached by the call's shapes, dtypes, axis, platform and
switches, so a call costs one key and one dictionary lookup before the implementation runs (a
layer must cost no more than keras's own; see ``docs/normalization.md``).
"""

import math
import os

import keras
from keras import ops

from kzoo.backends import dispatch
from kzoo.backends.common.layer_norm import (  # noqa: F401  (re-exported)
    _float_dtype,
    add_layer_norm_portable,
    add_rms_norm_portable,
    is_trailing,
    layer_norm_portable,
    rms_norm_portable,
)
from kzoo.utils.errors import ArgumentIndexError, ArgumentTypeError

OP_NAME = "layer_norm"
RMS_OP = "rms_norm"
ADD_LAYER_OP = "add_layer_norm"
ADD_RMS_OP = "add_rms_norm"
OPS = (OP_NAME, RMS_OP, ADD_LAYER_OP, ADD_RMS_OP)
KERNEL_DTYPES = ("float16", "bfloat16", "float32")
# (implementation, axes) per call signature; emptied when an implementation is registered.
_PLANS = dispatch.new_cache()
_MAX_PLANS = 4096


def normalize_axes(axis, ndim, argument="axis"):
    """``axis`` (an int or a sequence of ints) as a sorted tuple of non-negative axes.

    Raises:
        ArgumentTypeError: (a ``ValueError`` and a ``TypeError``) when an axis is not an int.
        ArgumentIndexError: (a ``ValueError`` and an ``IndexError``) when an axis is out of
            range for ``ndim`` dimensions.
        ValueError: when no axis is given or one is repeated (``-1`` and ``ndim - 1`` count as
            the same axis).
    """
    if isinstance(axis, bool):
        raise ArgumentTypeError(
            f"`{argument}` must be an int or a list of ints; received {axis!r}."
        )
    axes = [axis] if isinstance(axis, int) else axis
    if not isinstance(axes, (list, tuple)):
        raise ArgumentTypeError(
            f"`{argument}` must be an int or a non-empty list of ints; received {axis!r}."
        )
    if not axes:
        raise ValueError(
            f"`{argument}` must be an int or a non-empty list of ints; received {axis!r}."
        )
    result = []
    for a in axes:
        if isinstance(a, bool) or not isinstance(a, int):
            raise ArgumentTypeError(f"`{argument}` must contain only ints; received {axis!r}.")
        if not -ndim <= a < ndim:
            raise ArgumentIndexError(
                f"`{argument}`={axis!r} is out of range for an input of rank {ndim}; "
                f"expected axes in [{-ndim}, {ndim - 1}]."
            )
        result.append(a % ndim)
    if len(set(result)) != len(result):
        raise ValueError(
            f"`{argument}`={axis!r} names the same axis more than once (rank {ndim} input)."
        )
    return tuple(sorted(result))


def _distributed():
    """Whether a ``keras.distribution`` is active (its layouts are for XLA to partition)."""
    try:
        return keras.distribution.distribution() is not None
    except (AttributeError, TypeError):
        return False


def _no_platform(x):
    return None


_TENSOR_PLATFORM = []


def _platform_of(x):
    """The platform holding ``x``, or ``None`` (the machine's) on a machine with only a CPU.

    A torch tensor may sit on the CPU of a CUDA machine, so there the tensor decides; with no
    accelerator every tensor is on the CPU and nothing needs asking per call.
    """
    if not _TENSOR_PLATFORM:
        from kzoo.backends import environment

        if environment.platform() == "cpu":
            _TENSOR_PLATFORM.append(_no_platform)
        else:
            _TENSOR_PLATFORM.append(dispatch.select("tensor_platform", platform="any").load())
    return _TENSOR_PLATFORM[0](x)


def kernel_supports(
    shape,
    dtype,
    axes=(),
    rms_scaling=False,
    params_flat=True,
    distributed=False,
    residual_match=True,
    **kwargs,
):
    """The hand kernels cover the norms over the trailing axes with flat-able params.

    A residual must have the input's shape and dtype. Under an active ``keras.distribution`` the
    portable path runs instead: XLA partitions it along the sharded axes, while a kernel call
    would be gathered onto every device.
    """
    ndim = len(shape)
    if distributed or rms_scaling or not params_flat or not residual_match:
        return False
    return is_trailing(axes, ndim) and all(d is not None for d in shape)


def _check_params(name, shape, expected):
    if shape is None:
        return
    n = math.prod(expected)
    if shape != tuple(expected) and math.prod(shape) != n:
        raise ValueError(
            f"`{name}` has shape {shape}; expected {tuple(expected)} (the sizes of the "
            "normalised axes) or any shape with the same number of elements."
        )


# The smallest epsilon accepted: the smallest normal float32. With epsilon = 0 a row of zero
# variance (layer norm) or zero mean square (RMS norm), such as an all-zero row, computes
# 0 * rsqrt(0) = NaN, as keras's layers do. The statistics are float32, where a smaller epsilon
# rounds to zero (or, subnormal, is flushed to zero on GPUs). With epsilon >= this bound the
# row's statistic plus epsilon is positive and the output finite (an all-zero row gives 0).
MIN_EPSILON = 2.0**-126


def check_epsilon(epsilon):
    """``epsilon`` as a float: a finite number of at least ``MIN_EPSILON``.

    Raises:
        ArgumentTypeError: (a ``ValueError`` and a ``TypeError``) when it is not a number.
        ValueError: when it is below ``MIN_EPSILON`` (0 included), infinite or NaN.
    """
    if epsilon.__class__ is float and MIN_EPSILON <= epsilon < math.inf:
        return epsilon
    if not isinstance(epsilon, (int, float)) or isinstance(epsilon, bool):
        raise ArgumentTypeError(
            f"`epsilon` must be a positive float; received {epsilon!r} of type "
            f"{type(epsilon).__name__}."
        )
    if not MIN_EPSILON <= epsilon < math.inf:  # also refuses NaN
        raise ValueError(
            "`epsilon` must be a finite float of at least 2**-126 (about 1.2e-38, the smallest "
            "normal float32; the statistics are float32) so that an all-zero row normalises "
            f"to 0 instead of NaN; received {epsilon!r}."
        )
    return float(epsilon)


def _symbolic(*tensors):
    return any(isinstance(t, keras.KerasTensor) for t in tensors)


def _tensor(x):
    return x if ops.is_tensor(x) else ops.convert_to_tensor(x)


def _param(p):
    if p is None:
        return None
    if isinstance(p, keras.Variable):
        return p.value
    return p if ops.is_tensor(p) else ops.convert_to_tensor(p)


def _same_shape(a, b):
    return len(a) == len(b) and all(i == j or i is None or j is None for i, j in zip(a, b))


def _make_plan(op, shape, dtype, axis, gshape, bshape, residual, rms_scaling, platform, dist):
    """Validate a call's arguments and pick its implementation: ``(function, axes)``."""
    ndim = len(shape)
    axes = normalize_axes(axis, ndim)
    normalized = [shape[a] for a in axes]
    if any(d == 0 for d in normalized):
        raise ValueError(
            f"Cannot normalise over axes {axes} of an input of shape {shape}: the normalised "
            "size is 0."
        )
    dtype = keras.backend.standardize_dtype(dtype)
    residual_match = True
    if residual is not None:
        rshape, rdtype = residual
        if not _same_shape(rshape, shape):
            raise ValueError(f"`residual` has shape {rshape}; expected the input's shape {shape}.")
        residual_match = keras.backend.standardize_dtype(rdtype) == dtype
    if all(d is not None for d in normalized):
        _check_params("gamma", gshape, normalized)
        _check_params("beta", bshape, normalized)
    params = [p for p in (gshape, bshape) if p is not None]
    impl = dispatch.select(
        op,
        platform=platform,
        dtype=dtype,
        shape=shape,
        axes=axes,
        rms_scaling=rms_scaling,
        params_flat=all(len(p) <= len(axes) for p in params),
        params_match=all(len(p) == len(axes) for p in params),
        residual_match=residual_match,
        distributed=dist,
    )
    return impl.load(), axes


def _plan(op, x, residual, gamma, beta, axis, rms_scaling=False):
    """``(implementation, axes)`` for this call, validated once per call signature."""
    shape = tuple(x.shape)
    key = (
        op,
        shape,
        x.dtype,
        axis if axis.__class__ is int else tuple(axis) if isinstance(axis, list) else axis,
        None if gamma is None else tuple(gamma.shape),
        None if beta is None else tuple(beta.shape),
        None if residual is None else (tuple(residual.shape), residual.dtype),
        rms_scaling,
        _platform_of(x),
        _distributed(),
        os.environ.get("KZOO_KERNELS"),
    )
    try:
        return _PLANS[key]
    except KeyError:
        pass
    except TypeError:  # an unhashable axis: validation reports it
        return _make_plan(*key[:10])
    plan = _make_plan(*key[:10])
    if len(_PLANS) >= _MAX_PLANS:
        _PLANS.clear()
    _PLANS[key] = plan
    return plan


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
        epsilon: Positive float added to the variance, at least ``MIN_EPSILON`` (2**-126, so
            that an all-zero row normalises to 0, not NaN). Defaults to 1e-3 (keras's default).
        rms_scaling: keras's deprecated variant: scale by the variance without centring and
            without ``beta``.

    Returns:
        A tensor shaped and typed like ``x``.

    Example:

    >>> import numpy as np
    >>> x = np.arange(6, dtype="float32").reshape(2, 3)
    >>> y = layer_norm(x, epsilon=1e-12)
    >>> np.round(keras.ops.convert_to_numpy(y), 4)
    array([[-1.2247,  0.    ,  1.2247],
           [-1.2247,  0.    ,  1.2247]], dtype=float32)
    """
    epsilon = check_epsilon(epsilon)
    if _symbolic(x, gamma, beta):
        return NormOp(OP_NAME, axis, epsilon, rms_scaling)(x, None, gamma, beta)
    x, gamma, beta = _tensor(x), _param(gamma), _param(beta)
    fn, axes = _plan(OP_NAME, x, None, gamma, beta, axis, rms_scaling)
    return fn(x, gamma, beta, axes, epsilon, rms_scaling)


def rms_norm(x, gamma=None, axis=-1, epsilon=1e-6):
    """RMS normalisation (Zhang & Sennrich, 2019) over ``axis`` of ``x``, with optional ``gamma``.

    Computes ``x * rsqrt(mean(x^2) + epsilon) * gamma`` over ``axis`` (float32 statistics; the
    result has the input's dtype), the formula of ``keras.ops.rms_normalization``, on any set of
    axes. Dispatched like ``layer_norm``: Triton (torch on CUDA), Pallas (JAX on GPU),
    ``F.rms_norm`` (torch, trailing axes) or ``keras.ops``.

    Args:
        x: Input tensor.
        gamma: Optional scale with the shape of the normalised axes (or the same number of
            elements).
        axis: Int or list of ints: the axes to normalise over. Defaults to -1.
        epsilon: Positive float added to the mean square, at least ``MIN_EPSILON`` (so that an
            all-zero row normalises to 0, not NaN). Defaults to 1e-6 (the default of
            ``keras.layers.RMSNormalization``).

    Returns:
        A tensor shaped and typed like ``x``.

    Example:

    >>> import numpy as np
    >>> x = np.array([[3.0, 4.0]], "float32")
    >>> np.round(keras.ops.convert_to_numpy(rms_norm(x, epsilon=1e-12)), 4)
    array([[0.8485, 1.1314]], dtype=float32)
    """
    epsilon = check_epsilon(epsilon)
    if _symbolic(x, gamma):
        return NormOp(RMS_OP, axis, epsilon)(x, None, gamma)
    x, gamma = _tensor(x), _param(gamma)
    fn, axes = _plan(RMS_OP, x, None, gamma, None, axis)
    return fn(x, gamma, axes, epsilon)


def add_layer_norm(x, residual, gamma=None, beta=None, axis=-1, epsilon=1e-3):
    """``(layer_norm(x + residual), x + residual)`` in one pass: a pre-norm block's residual step.

    Where a kernel runs (Triton on CUDA torch, Pallas on JAX GPU) ``x`` and ``residual`` are read
    once and the normalised output and the sum are written once; elsewhere it is the add followed
    by ``layer_norm``. Gradients flow to ``x``, ``residual``, ``gamma`` and ``beta`` from both
    outputs.

    Args:
        x: Input tensor (e.g. a sub-layer's output).
        residual: Tensor of the same shape (the residual stream).
        gamma, beta, axis, epsilon: As for ``layer_norm``.

    Returns:
        ``(normalised, sum)``: the layer norm of ``x + residual``, shaped and typed like it, and
        ``x + residual`` itself.

    Example:

    >>> import numpy as np
    >>> x = np.ones((2, 3), "float32")
    >>> r = np.arange(6, dtype="float32").reshape(2, 3)
    >>> y, s = add_layer_norm(x, r, epsilon=1e-12)
    >>> keras.ops.convert_to_numpy(s)[0], np.round(keras.ops.convert_to_numpy(y)[0], 4)
    (array([1., 2., 3.], dtype=float32), array([-1.2247,  0.    ,  1.2247], dtype=float32))
    """
    epsilon = check_epsilon(epsilon)
    if _symbolic(x, residual, gamma, beta):
        return NormOp(ADD_LAYER_OP, axis, epsilon)(x, residual, gamma, beta)
    x, residual, gamma, beta = _tensor(x), _tensor(residual), _param(gamma), _param(beta)
    fn, axes = _plan(ADD_LAYER_OP, x, residual, gamma, beta, axis)
    return fn(x, residual, gamma, beta, axes, epsilon)


def add_rms_norm(x, residual, gamma=None, axis=-1, epsilon=1e-6):
    """``(rms_norm(x + residual), x + residual)`` in one pass (see ``add_layer_norm``).

    Args:
        x: Input tensor (e.g. a sub-layer's output).
        residual: Tensor of the same shape (the residual stream).
        gamma, axis, epsilon: As for ``rms_norm``.

    Returns:
        ``(normalised, sum)``.

    Example:

    >>> import numpy as np
    >>> y, s = add_rms_norm(np.array([[1.0, 2.0]], "float32"), np.array([[2.0, 2.0]], "float32"))
    >>> keras.ops.convert_to_numpy(s)
    array([[3., 4.]], dtype=float32)
    """
    epsilon = check_epsilon(epsilon)
    if _symbolic(x, residual, gamma):
        return NormOp(ADD_RMS_OP, axis, epsilon)(x, residual, gamma)
    x, residual, gamma = _tensor(x), _tensor(residual), _param(gamma)
    fn, axes = _plan(ADD_RMS_OP, x, residual, gamma, None, axis)
    return fn(x, residual, gamma, axes, epsilon)


class NormOp(keras.Operation):
    """The symbolic form of the four norm ops, for functional models."""

    def __init__(self, op, axis=-1, epsilon=1e-3, rms_scaling=False, name=None):
        super().__init__(name=name)
        self.op = op
        self.axis = axis
        self.epsilon = epsilon
        self.rms_scaling = rms_scaling

    def call(self, x, residual=None, gamma=None, beta=None):
        if self.op == OP_NAME:
            return layer_norm(x, gamma, beta, self.axis, self.epsilon, self.rms_scaling)
        if self.op == RMS_OP:
            return rms_norm(x, gamma, self.axis, self.epsilon)
        if self.op == ADD_LAYER_OP:
            return add_layer_norm(x, residual, gamma, beta, self.axis, self.epsilon)
        return add_rms_norm(x, residual, gamma, self.axis, self.epsilon)

    def compute_output_spec(self, x, residual=None, gamma=None, beta=None):
        normalize_axes(self.axis, len(x.shape))
        if residual is None:
            return keras.KerasTensor(x.shape, dtype=_float_dtype(x.dtype))
        if not _same_shape(tuple(residual.shape), tuple(x.shape)):
            raise ValueError(
                f"`residual` has shape {tuple(residual.shape)}; expected the input's shape "
                f"{tuple(x.shape)}."
            )
        total = keras.backend.result_type(x.dtype, residual.dtype)
        return (
            keras.KerasTensor(x.shape, dtype=_float_dtype(total)),
            keras.KerasTensor(x.shape, dtype=total),
        )


for _op, _fn, _what in (
    (OP_NAME, "layer_norm_portable", "fp32 two-pass statistics, any axes"),
    (RMS_OP, "rms_norm_portable", "fp32 statistics, any axes"),
    (ADD_LAYER_OP, "add_layer_norm_portable", "add, then the portable layer norm"),
    (ADD_RMS_OP, "add_rms_norm_portable", "add, then the portable RMS norm"),
):
    dispatch.register(
        _op,
        dispatch.Implementation(
            name="portable",
            target=f"kzoo.backends.common.layer_norm:{_fn}",
            description=f"keras.ops, {_what}",
        ),
        fallback=True,
    )
