"""Dot-product attention on the CPU, one block of queries at a time (blocks unrolled in Python).

keras's TensorFlow ``dot_product_attention`` computes the full score tensor, then masks it,
softmaxes it and multiplies it by the values, each a pass over ``(batch, heads, queries, keys)``
floats: 24 ms a call at 1,200 queries and keys with 8 heads on a 2-core CPU. The same ops on
blocks of about 100 queries, unrolled as separate slices, took 15 ms (``tf.map_fn`` 15-19 ms,
XLA-compiled 19 ms): each block's scores stay in the cache between the passes. Unrolling needs
the number of queries when the graph is traced; the dispatch sends unknown lengths to keras.

Semantics are keras's: scores scaled and masked with keras's finite fill (a query with every
key masked gets the mean of the values), softmax in float32 (half-precision inputs are computed
in float32 and the output cast back).
"""

import tensorflow as tf

from kzoo.backends.common.attention import MASK_FILL, query_blocks

# Queries per block (at most).
BLOCK = 128


def dot_product_attention(query, key, value, mask, scale, block=BLOCK):
    """``softmax(scale * q k^T, masked) v`` for ``(batch, length, heads, dim)`` inputs and a
    rank-4 boolean ``mask`` broadcastable to ``(batch, heads, queries, keys)`` (or ``None``)."""
    dtype = query.dtype
    tq = query.shape[1]
    _, size = query_blocks(tq, block)
    f32 = tf.float32
    # (B, H, T, D) in float32; the scale goes on the queries (T x D products, not T x S).
    q = tf.cast(tf.transpose(query, (0, 2, 1, 3)), f32) * tf.constant(scale, f32)
    k = tf.cast(tf.transpose(key, (0, 2, 1, 3)), f32)
    v = tf.cast(tf.transpose(value, (0, 2, 1, 3)), f32)
    per_query = mask is not None and mask.shape[2] != 1
    fill = tf.constant(MASK_FILL, f32)
    outs = []
    for start in range(0, tq, size):
        scores = tf.linalg.matmul(q[:, :, start : start + size], k, transpose_b=True)
        if mask is not None:
            keep = mask[:, :, start : start + size] if per_query else mask
            scores = tf.where(keep, scores, fill)
        outs.append(tf.linalg.matmul(tf.nn.softmax(scores, axis=-1), v))
    out = tf.concat(outs, axis=2) if len(outs) > 1 else outs[0]
    return tf.cast(tf.transpose(out, (0, 2, 1, 3)), dtype)
