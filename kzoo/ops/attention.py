"""Dot-product attention for models, sent through the dispatch.

:func:`dot_product_attention` computes what ``keras.ops.dot_product_attention`` computes for
``(batch, length, heads, head_dim)`` inputs and a rank-4 boolean mask, and on the CPU of JAX and
TensorFlow computes it one block of queries at a time when the queries are many
(``kzoo/backends/common/attention.py`` says when; ``kzoo/backends/jax/attention.py`` and
``kzoo/backends/tensorflow/attention.py`` how). Everywhere else, and with ``KZOO_KERNELS=off``,
keras's own function runs.

Arguments are validated once per call signature (shapes, dtypes, mask, scale) and the chosen
implementation cached with them, so a call costs one key and one dictionary lookup before the
implementation runs.
"""

import math
import os

import keras
from keras import ops

from kzoo.backends import dispatch
from kzoo.utils.errors import ArgumentTypeError

OP = "dot_product_attention"
# (implementation, function, casts, scale) per call signature; emptied when an implementation
# is registered.
_PLANS = dispatch.new_cache()
_MAX_PLANS = 4096

dispatch.register(
    OP,
    dispatch.Implementation(
        name="keras",
        target="kzoo.backends.common.attention:keras_attention",
        description="keras.ops.dot_product_attention",
    ),
    fallback=True,
)


def _shape_text(shape):
    return "(" + ", ".join("None" if d is None else str(d) for d in shape) + ")"


def _check_rank(name, shape, axes):
    if len(shape) != 4:
        raise ValueError(
            f"`{name}` must have rank 4 ({axes}); received shape {_shape_text(shape)}."
        )


def _agree(a, b):
    return a is None or b is None or not isinstance(a, int) or not isinstance(b, int) or a == b


def check_scale(scale):
    """``scale`` as a float (``None`` stays ``None``): a finite real number.

    Raises:
        ArgumentTypeError: (a ``ValueError`` and a ``TypeError``) when it is not a number.
        ValueError: when it is infinite or NaN.
    """
    if scale is None:
        return None
    if isinstance(scale, bool) or not isinstance(scale, (int, float)):
        raise ArgumentTypeError(
            f"`scale` must be a float or None; received {scale!r} of type {type(scale).__name__}."
        )
    if not math.isfinite(scale):
        raise ValueError(f"`scale` must be finite; received {scale!r}.")
    return float(scale)


def check_shapes(query_shape, key_shape, value_shape, mask_shape=None):
    """Refuse shapes that do not make one attention call (unknown sizes are not checked).

    Raises:
        ValueError: naming the argument and what was expected.
    """
    _check_rank("query", query_shape, "batch, query_length, heads, head_dim")
    _check_rank("key", key_shape, "batch, key_length, key_heads, head_dim")
    _check_rank("value", value_shape, "batch, key_length, key_heads, head_dim")
    b, tq, h, d = query_shape
    for name, shape in (("key", key_shape), ("value", value_shape)):
        if not _agree(shape[0], b):
            raise ValueError(
                f"`{name}` has batch size {shape[0]} but `query` has {b} (shapes "
                f"{_shape_text(shape)} and {_shape_text(query_shape)})."
            )
    if not _agree(key_shape[1], value_shape[1]) or not _agree(key_shape[2], value_shape[2]):
        raise ValueError(
            "`key` and `value` must have the same length and number of heads; received shapes "
            f"{_shape_text(key_shape)} and {_shape_text(value_shape)}."
        )
    for name, shape in (("key", key_shape), ("value", value_shape)):
        # keras's JAX backend cannot give values another width: refused everywhere alike.
        if not _agree(shape[3], d):
            raise ValueError(
                f"`{name}` has head_dim {shape[3]} but `query` has {d} (shapes "
                f"{_shape_text(shape)} and {_shape_text(query_shape)})."
            )
    hk = key_shape[2]
    if isinstance(h, int) and isinstance(hk, int) and (hk == 0 or h % hk):
        raise ValueError(
            f"`query`'s {h} heads must be a multiple of `key`'s {hk} heads (shapes "
            f"{_shape_text(query_shape)} and {_shape_text(key_shape)})."
        )
    if mask_shape is None:
        return
    expected = (b, h, tq, key_shape[1])
    if len(mask_shape) != 4 or not all(
        m == 1 or _agree(m, e) for m, e in zip(mask_shape, expected)
    ):
        raise ValueError(
            "`mask` must have rank 4 and broadcast to (batch, heads, query_length, key_length) "
            f"= {_shape_text(expected)}, each axis 1 or that size; received shape "
            f"{_shape_text(mask_shape)}."
        )


def _make_plan(q_shape, k_shape, v_shape, dtypes, mask_shape, mask_dtype, scale):
    """Validate a call's arguments and pick its implementation: ``(implementation, function,
    casts, scale)``, ``casts`` the dtype each of query, key, value and mask is cast to first
    (``None``: none)."""
    check_shapes(q_shape, k_shape, v_shape, mask_shape)
    scale = check_scale(scale)
    names = [keras.backend.standardize_dtype(d) for d in dtypes]
    dtype = keras.backend.result_type(*names)
    casts = tuple(None if n == dtype else dtype for n in names)
    if mask_shape is not None:
        casts += (None if keras.backend.standardize_dtype(mask_dtype) == "bool" else "bool",)
    if scale is None and isinstance(q_shape[3], int):
        scale = q_shape[3] ** -0.5
    impl = dispatch.select(
        OP,
        dtype=dtype,
        shape=q_shape,
        key_shape=k_shape,
        value_shape=v_shape,
        mask_shape=mask_shape,
    )
    return impl, impl.load(), casts, scale


def _plan(query, key, value, mask, scale):
    """``(implementation, function, casts, scale)`` for this call, validated once per call
    signature."""
    signature = (
        tuple(query.shape),
        tuple(key.shape),
        tuple(value.shape),
        (query.dtype, key.dtype, value.dtype),
        None if mask is None else tuple(mask.shape),
        None if mask is None else mask.dtype,
        (scale.__class__, scale),  # the class too: True == 1, but only 1 is a scale
        os.environ.get("KZOO_KERNELS"),
    )
    try:
        return _PLANS[signature]
    except KeyError:
        pass
    except TypeError:  # an unhashable scale or size: validation reports it or plans uncached
        return _make_plan(*signature[:6], scale)
    plan = _make_plan(*signature[:6], scale)
    if len(_PLANS) >= _MAX_PLANS:
        _PLANS.clear()
    _PLANS[signature] = plan
    return plan


def _tensor(x):
    return x if ops.is_tensor(x) else ops.convert_to_tensor(x)


def dot_product_attention(query, key, value, *, mask=None, scale=None):
    """``softmax(scale * query key^T, masked) value`` for each batch item and head.

    The numbers of ``keras.ops.dot_product_attention(query, key, value, mask=mask,
    scale=scale)``: scores and softmax in float32 (half-precision inputs give a result in their
    dtype), masked scores filled with keras's large finite negative, so that a query whose keys
    are all masked gets the mean of the values (on every backend, as keras returns). On the CPU
    of JAX and TensorFlow, with at least 512 queries of a length known when traced, the softmax
    is computed one block of queries at a time (faster there at DETR-DC5's sizes, see
    ``scripts/bench/attention.py``; the results agree to float32 rounding); elsewhere, or with
    ``KZOO_KERNELS=off``, keras's function runs.

    ``mask`` and ``scale`` are keyword-only: keras's fourth positional argument is ``bias``.

    Args:
        query: ``(batch, query_length, heads, head_dim)``.
        key: ``(batch, key_length, key_heads, head_dim)``; ``heads`` a multiple of
            ``key_heads`` (grouped-query attention runs keras's function).
        value: ``(batch, key_length, key_heads, head_dim)``.
        mask: Optional rank-4 mask, ``True`` (or nonzero) where a query may attend to a key,
            each axis 1 or the size of ``(batch, heads, query_length, key_length)``: e.g.
            ``(batch, 1, 1, key_length)`` for key padding.
        scale: Float multiplying the scores; ``1 / sqrt(head_dim)`` by default.

    Returns:
        ``(batch, query_length, heads, head_dim)`` in the inputs' common dtype.

    Raises:
        ValueError: for inputs of the wrong rank, sizes that disagree, a mask that does not
            broadcast, or a scale that is not a finite number (before any backend code runs).

    Example:

    >>> import numpy as np
    >>> q = np.ones((1, 2, 1, 4), "float32")  # (batch, length, heads, head_dim)
    >>> v = np.stack([np.full((1, 4), 1.0), np.full((1, 4), 3.0)])[None].astype("float32")
    >>> keep = np.array([True, False]).reshape(1, 1, 1, 2)  # the second key is padding
    >>> out = dot_product_attention(q, q, v, mask=keep)
    >>> keras.ops.convert_to_numpy(out)[0, :, 0, 0]
    array([1., 1.], dtype=float32)
    """
    if any(isinstance(t, keras.KerasTensor) for t in (query, key, value, mask)):
        return DotProductAttention(scale)(query, key, value, mask)
    query, key, value = _tensor(query), _tensor(key), _tensor(value)
    if mask is not None:
        mask = _tensor(mask)
    _, fn, casts, scale = _plan(query, key, value, mask, scale)
    args = [query, key, value] if mask is None else [query, key, value, mask]
    for i, dtype in enumerate(casts):
        if dtype is not None:
            args[i] = ops.cast(args[i], dtype)
    if mask is None:
        args.append(None)
    return fn(*args, scale)


def implementation(query, key, value, *, mask=None, scale=None):
    """The dispatch entry (a ``kzoo.backends.Implementation``) that the same call of
    :func:`dot_product_attention` runs, after the same validation; its ``name`` is e.g.
    ``"jax-query-blocks"``, or ``"keras"`` for the fallback."""
    query, key, value = _tensor(query), _tensor(key), _tensor(value)
    return _plan(query, key, value, None if mask is None else _tensor(mask), scale)[0]


class DotProductAttention(keras.Operation):
    """The symbolic form of :func:`dot_product_attention`, for functional models."""

    def __init__(self, scale=None, name=None):
        super().__init__(name=name)
        self.scale = check_scale(scale)

    def call(self, query, key, value, mask=None):
        return dot_product_attention(query, key, value, mask=mask, scale=self.scale)

    def compute_output_spec(self, query, key, value, mask=None):
        check_shapes(
            tuple(query.shape),
            tuple(key.shape),
            tuple(value.shape),
            None if mask is None else tuple(mask.shape),
        )
        dtype = keras.backend.result_type(query.dtype, key.dtype, value.dtype)
        return keras.KerasTensor((*query.shape[:3], value.shape[3]), dtype=dtype)
