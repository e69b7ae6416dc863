"""Context-parallel attention for JAX, the all-to-all ("Ulysses") strategy.

**All-to-all** (``all_to_all_attention``). One all-to-all re-shards the packed query, key,
value and ids from the sequence to the heads (copying key/value heads first when only the
query heads divide by CP); each device then attends over the whole sequence for ``1/CP`` of
the heads, in natural order, in blocks of at most ``ATTENTION_BLOCK`` tokens, with the causal
and window skips decided statically and the document skip by ``lax.cond``; a second
all-to-all brings the output back. The backward pass has two more all-to-alls (the output
gradient in, the query/key/value gradients out).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from kzoo.backends.common.ring_schedule import (
    block_reaches,
    block_split,
    chunk_ids,
    window_covers,
)
from kzoo.backends.jax import sharded
from kzoo.backends.jax.attention_blocks import (
    F32,
    _attend_block,
    _grad_block,
    _pack,
    _unpack,
)

# ---------------------------------------------------------------------------------------------
# All-to-all.


@functools.cache
def _local_plan(causal, window, seq, blocks):
    """For each query block of the whole sequence (natural order, in ``blocks`` blocks), the key
    blocks it needs and their position offsets (``None`` where every pair is visible)."""
    size = seq // blocks
    plan = []
    for i in range(blocks):
        row = []
        for j in range(blocks):
            offset = (i - j) * size
            if not block_reaches(offset, size, size, causal, window):
                continue
            needs = causal and (i == j or not window_covers(i - j, size, window))
            row.append((j, offset if needs else None))
        plan.append(tuple(row))
    return size, tuple(plan)


@functools.cache
def _make_all_to_all(num_shards, axis, causal, load_balance, scale, window, repl, seq, blocks):
    size, plan = _local_plan(causal, window, seq, blocks)
    # After the all-to-all each device holds the whole sequence in layout order; its attention
    # runs in natural order (static slices), where blocks are contiguous.
    chunk = seq // (2 * num_shards)
    slot_of = {chunk_ids(i // 2, num_shards, load_balance)[i % 2]: i for i in range(2 * num_shards)}
    chunk_of = {i: g for g, i in slot_of.items()}

    def reorder(x, source_of):
        parts = [
            x[:, source_of[t] * chunk : (source_of[t] + 1) * chunk] for t in range(len(slot_of))
        ]
        return jnp.concatenate(parts, axis=1)

    def to_natural(x):
        return reorder(x, slot_of)

    def to_layout(x):
        return reorder(x, chunk_of)

    def part(x, i):
        return x[:, i * size : (i + 1) * size]

    def seq_to_heads(x):
        return lax.all_to_all(x, axis, split_axis=2, concat_axis=1, tiled=True)

    def heads_to_seq(x):
        return lax.all_to_all(x, axis, split_axis=1, concat_axis=2, tiled=True)

    def local_forward(q, k, v, q_ids, k_ids):
        outs, lses = [], []
        for i, row in enumerate(plan):
            qi, qid = part(q, i), part(q_ids, i)
            carry = (jnp.zeros(qi.shape[:-1] + (v.shape[-1],), F32),)
            carry += (jnp.full(qi.shape[:-1], -jnp.inf, F32),)
            for j, offset in row:
                carry = _attend_block(
                    carry, qi, part(k, j), part(v, j), qid, part(k_ids, j), offset, window, scale
                )
            outs.append(carry[0])
            lses.append(carry[1])
        return jnp.concatenate(outs, 1), jnp.concatenate(lses, 1)

    def local_backward(q, k, v, q_ids, k_ids, do, lse, delta):
        n2 = len(plan)
        dk = [jnp.zeros(part(k, j).shape, F32) for j in range(n2)]
        dv = [jnp.zeros(part(v, j).shape, F32) for j in range(n2)]
        dqs = []
        for i, row in enumerate(plan):
            qi, qid = part(q, i), part(q_ids, i)
            dq = jnp.zeros(qi.shape, F32)
            for j, offset in row:
                dq, dk[j], dv[j] = _grad_block(
                    (dq, dk[j], dv[j]), qi, part(k, j), part(v, j), qid, part(k_ids, j), offset,
                    part(do, i), part(lse, i), part(delta, i), window, scale,
                )  # fmt: skip
            dqs.append(dq)
        return (jnp.concatenate(x, 1) for x in (dqs, dk, dv))

    def forward(q, k, v, q_ids, k_ids):
        b, length, hk, g, d = q.shape
        dv = v.shape[-1]
        if repl > 1:
            k, v = jnp.repeat(k, repl, axis=2), jnp.repeat(v, repl, axis=2)
        heads, group = hk * repl, g // repl
        packed = _pack([q.reshape(b, length, heads, group * d), k, v], [q_ids, k_ids], heads)
        heads_layout = _unpack(seq_to_heads(packed), (group * d, d, dv), q.dtype, 2)
        qh, kh, vh, qid, kid = (to_natural(x) for x in heads_layout)
        qh = qh.reshape(qh.shape[:3] + (group, d))
        out_h, lse_h = local_forward(qh, kh, vh, qid, kid)
        out_h = out_h.astype(q.dtype)
        out = heads_to_seq(to_layout(out_h.reshape(out_h.shape[:3] + (group * dv,))))
        return out.reshape(b, length, hk, g, dv), (qh, kh, vh, qid, kid, out_h, lse_h)

    @jax.custom_vjp
    def attend(q, k, v, q_ids, k_ids):
        return forward(q, k, v, q_ids, k_ids)[0]

    def attend_bwd(res, dout):
        qh, kh, vh, qid, kid, out_h, lse_h = res
        b, length, hk, g, dv = dout.shape
        heads, group, d = hk * repl, g // repl, qh.shape[-1]
        dout_h = to_natural(seq_to_heads(dout.reshape(b, length, heads, group * dv)))
        dout_h = dout_h.reshape(dout_h.shape[:3] + (group, dv))
        delta = jnp.sum(dout_h.astype(F32) * out_h.astype(F32), axis=-1)
        dq, dk, dvv = local_backward(qh, kh, vh, qid, kid, dout_h.astype(qh.dtype), lse_h, delta)
        # Copies of a key/value head live on different devices: their gradients are summed
        # after the all-to-all, in float32.
        dtype = qh.dtype if repl == 1 else F32
        flat = jnp.concatenate([dq.reshape(dq.shape[:3] + (group * d,)), dk, dvv], -1)
        grads = heads_to_seq(to_layout(flat.astype(dtype)))
        dq = grads[..., : group * d].reshape(b, length, hk, g, d)
        dk = grads[..., group * d : group * d + d]
        dvv = grads[..., group * d + d :]
        if repl > 1:
            dk = dk.reshape(b, length, hk, repl, d).sum(3)
            dvv = dvv.reshape(b, length, hk, repl, dv).sum(3)
        return dq.astype(qh.dtype), dk.astype(kh.dtype), dvv.astype(vh.dtype), None, None

    attend.defvjp(forward, attend_bwd)
    return attend


def all_to_all_attention(
    query,
    key,
    value,
    key_mask=None,
    segment_ids=None,
    *,
    mesh,
    sequence_axis,
    batch_axis=None,
    causal=False,
    load_balance="zigzag",
    scale=None,
    window_size=None,
    kv_replication=1,
):
    """All-to-all ("Ulysses") attention over ``mesh``'s ``sequence_axis``.

    Arguments as :func:`ring_attention`; ``kv_replication`` copies each key/value head that
    many times so that the heads divide by CP (``kzoo.ops.ring_attention.kv_replication``).
    """
    num_shards = sharded.check_shapes(
        query, key, value, key_mask, mesh, sequence_axis, batch_axis, causal
    )
    h, hk = query.shape[2], key.shape[2]
    if (hk * kv_replication) % num_shards or (h // hk) % kv_replication:
        raise ValueError(
            f"all-to-all needs the key/value heads ({hk}) times kv_replication "
            f"({kv_replication}) to divide by CP = {num_shards}."
        )
    options = dict(
        mesh=mesh,
        sequence_axis=sequence_axis,
        batch_axis=batch_axis,
        causal=bool(causal),
        load_balance=load_balance,
        scale=None if scale is None else float(scale),
        window_size=None if window_size is None else int(window_size),
        kv_replication=int(kv_replication),
    )
    return sharded.run(_all_to_all_program, (query, key, value, key_mask, segment_ids), options)


def _all_to_all_program(query, key, value, key_mask, segment_ids, *, mesh, sequence_axis,
                        batch_axis, causal, load_balance, scale, window_size,
                        kv_replication):  # fmt: skip
    num_shards, q, q_ids, k_ids = sharded.prepare(
        query, key, value, key_mask, segment_ids, mesh, sequence_axis, batch_axis, causal
    )
    b, tq, h, d = query.shape
    scale = float(scale if scale is not None else 1.0 / np.sqrt(d))
    attend = _make_all_to_all(
        num_shards,
        sequence_axis,
        causal,
        load_balance,
        scale,
        window_size,
        kv_replication,
        tq,
        2 * block_split(tq // 2),  # at least 2 blocks, of at most ATTENTION_BLOCK tokens
    )
    # One all-to-all carries query, key and value, so they share the query's dtype.
    key, value = key.astype(query.dtype), value.astype(query.dtype)
    out = sharded.over_mesh(attend, mesh, sequence_axis, batch_axis)(q, key, value, q_ids, k_ids)
    return jnp.reshape(out, (b, tq, h, value.shape[-1]))
