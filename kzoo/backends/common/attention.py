"""What the query-blocked attention implementations share: when blocking pays, how long the blocks
are, the masked-score fill, and keras's attention as the portable fallback.

On the CPU, ``keras.ops.dot_product_attention`` materialises the whole ``(batch, heads, queries,
keys)`` score tensor and passes over it several times (scale, mask, max, exp, sum, divide):
at DETR-DC5's 1,200 encoder tokens (8 heads) that is 46 MB per pass, far beyond the caches.
Computing the same softmax one block of queries at a time keeps each block's scores small
(``kzoo/backends/jax/attention.py``, ``kzoo/backends/tensorflow/attention.py``). Below
``MIN_QUERIES`` the score tensor is small enough that there is nothing to gain, and the one-block
case would only be keras's computation again.
"""

import math

from keras import ops

# Blocking is chosen for at least this many queries: at 512 queries x 512 keys x 8 heads the
# float32 scores (8 MB) no longer fit a core's share of the cache and there are at least two
# blocks of the backends' target sizes (256 on JAX, 128 on TensorFlow).
MIN_QUERIES = 512
# keras's fill for masked scores (``-0.7 * float32 max``, the value of its JAX and TensorFlow
# backends): finite, so a query whose keys are all masked gets uniform weights (the mean of the
# values), as keras returns, not NaN.
MASK_FILL = -0.7 * 3.4028234663852886e38
# The input dtypes the blocked implementations take; half types compute in float32.
BLOCKED_DTYPES = ("float32", "bfloat16", "float16")


def keras_attention(query, key, value, mask, scale):
    """The portable fallback: ``keras.ops.dot_product_attention``."""
    return ops.dot_product_attention(query, key, value, mask=mask, scale=scale)


def query_blocks(length, target):
    """``(count, size)``: ``length`` queries in ``count`` blocks of ``size`` (the last may be
    shorter), the fewest blocks of at most ``target`` queries, as equal as they can be (1,200
    queries with a target of 256 give 5 blocks of 240, not 4 of 256 and one of 176)."""
    count = max(1, math.ceil(length / target))
    return count, math.ceil(length / count)


def _static(shape):
    return shape is not None and all(isinstance(d, int) for d in shape)


def _long_and_plain(shape, key_shape, value_shape):
    # Grouped-query attention (fewer key heads) stays with keras, which handles the grouping.
    return (
        isinstance(shape[1], int)
        and shape[1] >= MIN_QUERIES
        and key_shape is not None
        and value_shape is not None
        and shape[2] == key_shape[2] == value_shape[2]
    )


def supports_static(shape, dtype, key_shape=None, value_shape=None, mask_shape=None, **kwargs):
    """Long queries with every size known when traced (JAX: the blocks are a reshape).

    A symbolic size (a shape-polymorphic export) sends the call to keras's implementation, which
    the exporters already convert.
    """
    shapes = (shape, key_shape, value_shape) + (() if mask_shape is None else (mask_shape,))
    return all(_static(s) for s in shapes) and _long_and_plain(shape, key_shape, value_shape)


def supports_static_queries(
    shape, dtype, key_shape=None, value_shape=None, mask_shape=None, **kwargs
):
    """Long queries whose count is known when traced (TensorFlow: the blocks are Python slices;
    the batch, key length and a mask's batch may be unknown). A mask's query axis must be known
    too, since it is sliced along with the queries unless it is 1."""
    if mask_shape is not None and mask_shape[2] is None:
        return False
    return _long_and_plain(shape, key_shape, value_shape)
