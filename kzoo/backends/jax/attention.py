"""Dot-product attention on the CPU, one block of queries at a time under ``lax.map``.

XLA's CPU code for ``jax.nn.dot_product_attention`` (what ``keras.ops.dot_product_attention``
runs) builds the full score tensor and makes several passes over it; at 1,200 queries and keys
with 8 heads it took 66 ms a call on a 2-core CPU. Looping over blocks of about 256 queries with
``lax.map`` (a compiled loop: each block's scores stay small) took 15 ms; unrolling the blocks
in Python lets XLA fuse and schedule them as one program again and took 29 ms, and blocks of 600
were slow again. The blocks are as equal as they can be; the queries are padded to a whole
number of blocks and the padding's outputs dropped.

Semantics are keras's: scores scaled and masked with keras's finite fill (a query with every
key masked gets the mean of the values), softmax in float32 (half-precision inputs are computed
in float32 and the output cast back).
"""

import functools

import jax
import jax.numpy as jnp
from jax import lax

from kzoo.backends.common.attention import MASK_FILL, query_blocks

# Queries per block (at most): the measured optimum was flat from 200 to 400.
BLOCK = 256


@functools.partial(jax.jit, static_argnames=("scale", "block"))
def dot_product_attention(query, key, value, mask, scale, block=BLOCK):
    """``softmax(scale * q k^T, masked) v`` for ``(batch, length, heads, dim)`` inputs and a
    rank-4 boolean ``mask`` broadcastable to ``(batch, heads, queries, keys)`` (or ``None``)."""
    dtype = query.dtype
    b, tq, h, d = query.shape
    count, size = query_blocks(tq, block)
    padded = count * size
    f32 = jnp.float32
    # (B, H, T, D) in float32; the scale goes on the queries (T x D products, not T x S).
    q = jnp.transpose(query, (0, 2, 1, 3)).astype(f32) * jnp.asarray(scale, f32)
    k = jnp.transpose(key, (0, 2, 1, 3)).astype(f32)
    v = jnp.transpose(value, (0, 2, 1, 3)).astype(f32)
    if padded != tq:
        q = jnp.pad(q, ((0, 0), (0, 0), (0, padded - tq), (0, 0)))
    q_blocks = jnp.moveaxis(q.reshape(b, h, count, size, d), 2, 0)
    per_query = mask is not None and mask.shape[2] != 1
    if per_query:
        if padded != tq:
            mask = jnp.pad(mask, ((0, 0), (0, 0), (0, padded - tq), (0, 0)))
        mb, mh, _, s = mask.shape
        mask_blocks = jnp.moveaxis(mask.reshape(mb, mh, count, size, s), 2, 0)
    else:
        mask_blocks = None

    def block_out(xs):
        qc, mc = xs
        scores = jnp.einsum("bhqd,bhkd->bhqk", qc, k)
        if mask is not None:
            scores = jnp.where(mask if mc is None else mc, scores, MASK_FILL)
        top = jnp.max(scores, axis=-1, keepdims=True)
        weights = jnp.exp(scores - top)
        total = jnp.sum(weights, axis=-1, keepdims=True)
        # Dividing the (queries x dim) product costs less than normalising the weights.
        return jnp.einsum("bhqk,bhkd->bhqd", weights, v) / total

    out = lax.map(block_out, (q_blocks, mask_blocks))  # (count, B, H, size, Dv)
    out = jnp.moveaxis(out, 0, 2).reshape(b, h, padded, v.shape[-1])[:, :, :tq]
    return jnp.transpose(out, (0, 2, 1, 3)).astype(dtype)
