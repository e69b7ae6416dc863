"""Context-parallel attention for JAX: the ring and the all-to-all ("Ulysses") strategies.

Both run inside ``jax.shard_map`` over the sequence axis and merge partial results in float32
with their log-sum-exp: ``out += sigmoid(lse_b - lse) * (out_b - out)``,
``lse = logaddexp(lse, lse_b)``. Both are ``custom_vjp`` functions that store only O(S/CP)
per device (query, key, value, output, log-sum-exp) and recompute the scores block by block
in the backward pass.

**Ring** (``ring_attention``). Every device keeps its query chunk and its output; key/value
chunks travel to other devices. Key, value and the keys' document ids are packed into one
array (bit-cast to unsigned integers, so ids are exact in any float dtype) so each step is one
collective-permute.

* The send of the next block is issued before the current block is computed, so the transfer
  can overlap the compute (the steps are unrolled: ``CP - 1`` sends in the forward pass).
* The schedule is ``kzoo.ops.ring_attention.step_pairs``: with the zigzag layout every
  off-diagonal step computes exactly half a block on every device; fully masked blocks are
  never computed (``lax.switch`` runs the branch of the device's rank).
* Sliding window: steps that no query can reach are dropped statically (``ring_steps``); the
  remaining blocks are then sent directly by a shift of ``s`` devices rather than relayed, so
  a window shorter than a chunk sends 2 blocks instead of ``CP - 1``.
* Packed documents: whether two documents meet in a block depends on the data, so each block
  is guarded by a ``lax.cond`` on the id ranges of its query and key chunks (the ids travel
  with the keys); a block no document spans is not computed. The block is still sent.
* Backward: the key/value blocks are sent again (XLA shares these sends with the forward's),
  and the dK/dV accumulators travel after them; one last send brings each device's dK/dV
  home (``2 * CP - 1`` sends). Plain autodiff through the loop would keep every remote
  key/value block alive. With skipped steps, each block's dK/dV goes straight back.

**All-to-all** (``all_to_all_attention``). One all-to-all re-shards the packed query, key,
value and ids from the sequence to the heads; each device then attends over the whole sequence
for ``1/CP`` of the heads, block by block over the same ``2 * CP`` chunks with the causal,
window and document skips decided statically (and by ``lax.cond`` for documents); a second
all-to-all brings the output back. The backward pass has two more all-to-alls (the output
gradient in, the query/key/value gradients out).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.sharding import PartitionSpec as P

from kzoo.ops.ring_attention import (
    chunk_ids,
    ring_steps,
    step_pairs,
    validate_ring_shapes,
    window_covers,
    window_reaches,
)

F32 = jnp.float32
_INT_MAX = np.iinfo(np.int32).max
_UINT = {2: jnp.uint16, 4: jnp.uint32, 8: jnp.uint64}


# ---------------------------------------------------------------------------------------------
# One block: scores, masks, forward and backward.


def _scores(q, k, scale):
    # q (B, Lq, Hk, G, D), k (B, Lk, Hk, D) -> (B, Hk, G, Lq, Lk) in float32.
    return jnp.einsum("bqhgd,bkhd->bhgqk", q, k, preferred_element_type=F32) * scale


def _valid(q_ids, k_ids, distance, window):
    """(B, 1, 1, Lq, Lk): same document (key padding has id -1), causal and in the window.

    ``distance`` is query position minus key position (``None`` when every pair of the block
    is causally visible and in the window).
    """
    valid = q_ids[:, :, None] == k_ids[:, None, :]
    if distance is not None:
        distance = jnp.asarray(distance)
        ok = distance >= 0
        if window is not None:
            ok = ok & (distance < window)
        valid = valid & ok[None]
    return valid[:, None, None]


def _block_forward(q, k, v, valid, scale):
    """Attention of q against one key block: (out float32, lse float32 (B, Lq, Hk, G))."""
    s = jnp.where(valid, _scores(q, k, scale), -jnp.inf)
    m = jnp.max(s, axis=-1, keepdims=True)
    m = jnp.where(jnp.isfinite(m), m, 0.0)
    p = jnp.exp(s - m)
    den = jnp.sum(p, axis=-1, keepdims=True)
    out = jnp.einsum("bhgqk,bkhd->bqhgd", p.astype(v.dtype), v, preferred_element_type=F32)
    den_t = jnp.moveaxis(den[..., 0], -1, 1)  # (B, Lq, Hk, G)
    out = out / jnp.where(den_t > 0, den_t, 1.0)[..., None]
    m_t = jnp.moveaxis(m[..., 0], -1, 1)
    lse = jnp.where(den_t > 0, m_t + jnp.log(jnp.where(den_t > 0, den_t, 1.0)), -jnp.inf)
    return out, lse


def _merge(out, lse, out_b, lse_b):
    new_lse = jnp.logaddexp(lse, lse_b)
    finite = jnp.isfinite(new_lse)
    weight = jnp.where(finite, jnp.exp(lse_b - jnp.where(finite, new_lse, 0.0)), 0.0)
    return out + weight[..., None] * (out_b - out), new_lse


def _block_backward(q, k, v, valid, do, lse, delta, scale):
    """Gradient contributions (dq, dk, dv, float32) of one block given the final lse."""
    lse_t = jnp.moveaxis(jnp.where(jnp.isfinite(lse), lse, 0.0), 1, -1)[..., None]
    p = jnp.where(valid, jnp.exp(_scores(q, k, scale) - lse_t), 0.0)
    dv = jnp.einsum("bhgqk,bqhgd->bkhd", p.astype(do.dtype), do, preferred_element_type=F32)
    dp = jnp.einsum("bqhgd,bkhd->bhgqk", do, v, preferred_element_type=F32)
    ds = p * (dp - jnp.moveaxis(delta, 1, -1)[..., None])
    dq = jnp.einsum("bhgqk,bkhd->bqhgd", ds.astype(k.dtype), k, preferred_element_type=F32)
    dk = jnp.einsum("bhgqk,bqhgd->bkhd", ds.astype(q.dtype), q, preferred_element_type=F32)
    return dq * scale, dk * scale, dv


def _id_range(ids):
    """Lowest and highest document id (> 0) of each batch row of a block."""
    real = ids > 0
    return jnp.min(jnp.where(real, ids, _INT_MAX), axis=1), jnp.max(jnp.where(real, ids, -1), 1)


def _meet(q_range, k_range):
    """Whether some document has queries in one block and keys in the other (any batch row);
    the same test as ``kzoo.ops.ring_attention.blocks_meet``."""
    return jnp.any((q_range[0] <= k_range[1]) & (k_range[0] <= q_range[1]))


def _attend_block(carry, q, k, v, q_ids, k_ids, distance, meet, window, scale):
    """Merge one block into the running (out, lse); under ``lax.cond`` when ``meet`` is traced."""

    def compute(out, lse):
        valid = _valid(q_ids, k_ids, distance, window)
        return _merge(out, lse, *_block_forward(q, k, v, valid, scale))

    if meet is None:
        return compute(*carry)
    return lax.cond(meet, compute, lambda out, lse: (out, lse), *carry)


def _grad_block(acc, q, k, v, q_ids, k_ids, distance, meet, do, lse, delta, window, scale):
    """Add one block's (dq, dk, dv) to the accumulators ``acc``."""

    def compute(dq, dk, dv):
        valid = _valid(q_ids, k_ids, distance, window)
        a, b, c = _block_backward(q, k, v, valid, do, lse, delta, scale)
        return dq + a, dk + b, dv + c

    if meet is None:
        return compute(*acc)
    return lax.cond(meet, compute, lambda *a: a, *acc)


# ---------------------------------------------------------------------------------------------
# Packing: float blocks and int32 ids in one array of unsigned integers, so a block and its ids
# travel in one collective and no id is rounded (or a NaN payload canonicalised) on the way.


def _as_uint(x):
    return lax.bitcast_convert_type(x, _UINT[jnp.dtype(x.dtype).itemsize])


def _from_uint(x, dtype):
    return lax.bitcast_convert_type(x, dtype)


def _id_channels(itemsize):
    return 2 if itemsize == 2 else 1


def _ids_to_uint(ids, itemsize):
    """(B, L) int32 -> (B, L, channels) unsigned integers of ``itemsize`` bytes."""
    ids = ids.astype(jnp.int32)
    if itemsize == 2:
        return lax.bitcast_convert_type(ids, jnp.uint16)
    if itemsize == 4:
        return lax.bitcast_convert_type(ids, jnp.uint32)[..., None]
    return lax.bitcast_convert_type(jnp.stack([ids, ids], -1), jnp.uint64)[..., None]


def _ids_from_uint(u):
    itemsize = jnp.dtype(u.dtype).itemsize
    if itemsize == 2:
        return lax.bitcast_convert_type(u, jnp.int32)
    if itemsize == 4:
        return lax.bitcast_convert_type(u[..., 0], jnp.int32)
    return lax.bitcast_convert_type(u[..., 0], jnp.int32)[..., 0]


def _pack(arrays, ids, heads):
    """Concatenate (B, L, heads, ·) float arrays of one dtype and (B, L) int32 id arrays."""
    itemsize = jnp.dtype(arrays[0].dtype).itemsize
    parts = [_as_uint(a) for a in arrays]
    if ids:
        channels = jnp.concatenate([_ids_to_uint(i, itemsize) for i in ids], axis=-1)
        b, length, width = channels.shape
        parts.append(jnp.broadcast_to(channels[:, :, None, :], (b, length, heads, width)))
    return jnp.concatenate(parts, axis=-1)


def _unpack(packed, widths, dtype, num_ids):
    """Inverse of ``_pack``: the float arrays (of the given last-axis widths) and the ids."""
    out, start = [], 0
    for w in widths:
        out.append(_from_uint(packed[..., start : start + w], dtype))
        start += w
    per_id = _id_channels(jnp.dtype(dtype).itemsize)
    for i in range(num_ids):
        out.append(_ids_from_uint(packed[:, :, 0, start + i * per_id : start + (i + 1) * per_id]))
    return out


def _key_ids(segment_ids, key_mask, b, tq, tk):
    """Query ids and key ids; a key that may not be attended to gets id -1 (matches nothing).

    Without documents every query has id 1 and every unmasked key id 1; with documents the
    ids are the documents', and padding (id 0) queries match no key.
    """
    if segment_ids is None:
        q_ids = jnp.ones((b, tq), jnp.int32)
        k_ids = jnp.ones((b, tk), jnp.int32)
    else:
        q_ids = jnp.asarray(segment_ids).astype(jnp.int32)
        k_ids = jnp.where(q_ids > 0, q_ids, -1)
    if key_mask is not None:
        k_ids = jnp.where(jnp.asarray(key_mask).astype(bool), k_ids, -1)
    return q_ids, k_ids


def _shift(num_shards, shift):
    """``ppermute`` pairs sending every device's block ``shift`` devices on."""
    return [(j, (j + shift) % num_shards) for j in range(num_shards)]


# ---------------------------------------------------------------------------------------------
# The ring.


@functools.cache
def _step_plan(step, num_shards, causal, load_balance, window, chunk):
    """Static plan of one ring step: the distinct pair sets devices compute, which set each rank
    runs, and for each pair of a set whether it needs a causal/window distance mask."""
    per_rank = [
        step_pairs(step, r, num_shards, causal, load_balance, window, chunk)
        for r in range(num_shards)
    ]
    branches = sorted(set(per_rank))
    table = np.array([branches.index(p) for p in per_rank], np.int32)
    plans = []
    for branch in branches:
        ranks = [r for r in range(num_shards) if per_rank[r] == branch]
        entries = []
        for qs, ks in branch:
            offsets = [
                chunk_ids(r, num_shards, load_balance)[qs]
                - chunk_ids((r - step) % num_shards, num_shards, load_balance)[ks]
                for r in ranks
            ]
            needs = causal and any(o == 0 or not window_covers(o, chunk, window) for o in offsets)
            entries.append((qs, ks, needs))
        plans.append(tuple(entries))
    return tuple(plans), table


def _run_plan(plans, table, rank, fn, operand):
    if len(plans) == 1:
        return fn(plans[0], operand)
    branches = [functools.partial(fn, p) for p in plans]
    return lax.switch(jnp.asarray(table)[rank], branches, operand)


def _blocks(local, steps, relay, axis, num_shards):
    """Yield (block, step) for each computed ring step, issuing the next block's send before
    the current block is handed out for compute."""
    if relay:
        block = local
        for i, step in enumerate(steps):
            upcoming = None
            if i + 1 < len(steps):
                upcoming = lax.ppermute(block, axis, _shift(num_shards, 1))
            yield block, step
            block = upcoming
        return
    received = {}
    for i, step in enumerate(steps):
        if i + 1 < len(steps):
            nxt = steps[i + 1]
            received[nxt] = lax.ppermute(local, axis, _shift(num_shards, nxt))
        yield (local if step == 0 else received.pop(step)), step


@functools.cache
def _make_ring(num_shards, axis, causal, load_balance, scale, window, segmented, chunk):
    steps = ring_steps(num_shards, causal, load_balance, window, chunk)
    relay = steps == list(range(num_shards))
    plans = {s: _step_plan(s, num_shards, causal, load_balance, window, chunk) for s in steps}
    rel = np.arange(chunk)[:, None] - np.arange(chunk)[None, :]

    def halves(x):
        c = x.shape[1] // 2
        return x[:, :c], x[:, c:]

    def distance(own, theirs, qs, ks, needed):
        return (own[qs] - theirs[ks]) * chunk + rel if needed else None

    def forward(q, k, v, q_ids, k_ids):
        rank = lax.axis_index(axis)
        d, dv = k.shape[-1], v.shape[-1]
        own = chunk_ids(rank, num_shards, load_balance)
        q_sl, qid_sl = halves(q), halves(q_ids)
        q_rng = [_id_range(x) for x in qid_sl] if segmented else None
        shape = q_sl[0].shape[:-1]
        out = (jnp.zeros(shape + (dv,), F32),) * 2
        lse = (jnp.full(shape, -jnp.inf, F32),) * 2
        local = _pack([k, v.astype(k.dtype)], [k_ids], k.shape[2])
        for block, step in _blocks(local, steps, relay, axis, num_shards):
            kb, vb, kid = (k, v, k_ids) if step == 0 else _unpack(block, (d, dv), k.dtype, 1)
            theirs = chunk_ids((rank - step) % num_shards, num_shards, load_balance)
            k_sl, v_sl, kid_sl = halves(kb), halves(vb), halves(kid)
            k_rng = [_id_range(x) for x in kid_sl] if segmented else None

            def run(entries, carry, k_sl=k_sl, v_sl=v_sl, kid_sl=kid_sl, k_rng=k_rng, th=theirs):
                out, lse = list(carry[0]), list(carry[1])
                for qs, ks, needed in entries:
                    meet = _meet(q_rng[qs], k_rng[ks]) if segmented else None
                    out[qs], lse[qs] = _attend_block(
                        (out[qs], lse[qs]), q_sl[qs], k_sl[ks], v_sl[ks], qid_sl[qs],
                        kid_sl[ks], distance(own, th, qs, ks, needed), meet, window, scale,
                    )  # fmt: skip
                return tuple(out), tuple(lse)

            out, lse = _run_plan(*plans[step], rank, run, (out, lse))
        return jnp.concatenate(out, 1).astype(q.dtype), jnp.concatenate(lse, 1)

    @jax.custom_vjp
    def attend(q, k, v, q_ids, k_ids):
        return forward(q, k, v, q_ids, k_ids)[0]

    def attend_fwd(q, k, v, q_ids, k_ids):
        out, lse = forward(q, k, v, q_ids, k_ids)
        return out, (q, k, v, q_ids, k_ids, out, lse)

    def attend_bwd(res, dout):
        q, k, v, q_ids, k_ids, out, lse = res
        rank = lax.axis_index(axis)
        d, dv = k.shape[-1], v.shape[-1]
        own = chunk_ids(rank, num_shards, load_balance)
        do = dout.astype(q.dtype)
        delta = jnp.sum(dout.astype(F32) * out.astype(F32), axis=-1)
        q_sl, qid_sl, do_sl = halves(q), halves(q_ids), halves(do)
        lse_sl, delta_sl = halves(lse), halves(delta)
        q_rng = [_id_range(x) for x in qid_sl] if segmented else None
        dq = tuple(jnp.zeros(x.shape, F32) for x in q_sl)
        local = _pack([k, v.astype(k.dtype)], [k_ids], k.shape[2])
        carried = home = None
        for block, step in _blocks(local, steps, relay, axis, num_shards):
            kb, vb, kid = (k, v, k_ids) if step == 0 else _unpack(block, (d, dv), k.dtype, 1)
            theirs = chunk_ids((rank - step) % num_shards, num_shards, load_balance)
            k_sl, v_sl, kid_sl = halves(kb), halves(vb), halves(kid)
            k_rng = [_id_range(x) for x in kid_sl] if segmented else None

            def run(entries, acc, k_sl=k_sl, v_sl=v_sl, kid_sl=kid_sl, k_rng=k_rng, th=theirs):
                dq, dk, dvv = list(acc[0]), list(acc[1]), list(acc[2])
                for qs, ks, needed in entries:
                    meet = _meet(q_rng[qs], k_rng[ks]) if segmented else None
                    dq[qs], dk[ks], dvv[ks] = _grad_block(
                        (dq[qs], dk[ks], dvv[ks]), q_sl[qs], k_sl[ks], v_sl[ks], qid_sl[qs],
                        kid_sl[ks], distance(own, th, qs, ks, needed), meet, do_sl[qs],
                        lse_sl[qs], delta_sl[qs], window, scale,
                    )  # fmt: skip
                return tuple(dq), tuple(dk), tuple(dvv)

            zk = tuple(jnp.zeros(x.shape, F32) for x in k_sl)
            zv = tuple(jnp.zeros(x.shape, F32) for x in v_sl)
            dq, dk_c, dv_c = _run_plan(*plans[step], rank, run, (dq, zk, zv))
            dkv = jnp.concatenate([jnp.concatenate(dk_c, 1), jnp.concatenate(dv_c, 1)], -1)
            if relay:
                if carried is not None:
                    dkv = dkv + carried
                # The accumulator follows its key/value block; after the last step this send
                # brings every device's dK/dV home.
                carried = lax.ppermute(dkv, axis, _shift(num_shards, 1))
            else:
                # The block came `step` devices on; its gradient goes straight back.
                back = dkv if step == 0 else lax.ppermute(dkv, axis, _shift(num_shards, -step))
                home = back if home is None else home + back
        total = carried if relay else home
        dq = jnp.concatenate(dq, 1).astype(q.dtype)
        return dq, total[..., :d].astype(k.dtype), total[..., d:].astype(v.dtype), None, None

    attend.defvjp(attend_fwd, attend_bwd)
    return attend


def _prepare(query, key, value, key_mask, segment_ids, mesh, sequence_axis, batch_axis, causal):
    num_shards = mesh.shape[sequence_axis]
    batch_shards = mesh.shape[batch_axis] if batch_axis is not None else 1
    validate_ring_shapes(query, key, value, key_mask, causal, num_shards, batch_shards)
    b, tq, h, d = query.shape
    tk, hk = key.shape[1], key.shape[2]
    q_ids, k_ids = _key_ids(segment_ids, key_mask, b, tq, tk)
    q = jnp.reshape(query, (b, tq, hk, h // hk, d))
    return num_shards, q, q_ids, k_ids


def _sharded(fn, mesh, sequence_axis, batch_axis):
    spec5 = P(batch_axis, sequence_axis, None, None, None)
    spec4 = P(batch_axis, sequence_axis, None, None)
    spec2 = P(batch_axis, sequence_axis)
    return jax.shard_map(
        fn,
        mesh=mesh,
        in_specs=(spec5, spec4, spec4, spec2, spec2),
        out_specs=spec5,
        check_vma=False,
    )


def ring_attention(
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
):
    """Ring attention over ``mesh``'s ``sequence_axis`` (arguments as ``exact_attention``).

    ``query`` is ``(batch, q_len, num_heads, head_dim)`` and ``key``/``value`` are
    ``(batch, kv_len, num_kv_heads, dim)``, global arrays whose sequence axis is in layout order
    (zigzag or contiguous, as ``load_balance`` says) and sharded over ``sequence_axis`` (and the
    batch over ``batch_axis``); inputs laid out otherwise are resharded by XLA first.
    ``segment_ids`` (``(batch, seq)`` int, 0 = padding) mark packed documents.
    """
    num_shards, q, q_ids, k_ids = _prepare(
        query, key, value, key_mask, segment_ids, mesh, sequence_axis, batch_axis, causal
    )
    b, tq, h, d = query.shape
    scale = float(scale if scale is not None else 1.0 / np.sqrt(d))
    chunk = tq // (2 * num_shards)
    attend = _make_ring(
        num_shards,
        sequence_axis,
        bool(causal),
        load_balance,
        scale,
        None if window_size is None else int(window_size),
        segment_ids is not None,
        chunk,
    )
    value = value.astype(key.dtype) if value.dtype != key.dtype else value
    out = _sharded(attend, mesh, sequence_axis, batch_axis)(q, key, value, q_ids, k_ids)
    return jnp.reshape(out, (b, tq, h, value.shape[-1]))


# ---------------------------------------------------------------------------------------------
# All-to-all.


# Blocks of the all-to-all's local attention hold at most this many tokens (fewer blocks
# compile faster; smaller ones skip more of a causal or packed sequence and hold smaller scores).
ALL_TO_ALL_BLOCK = 2048


def _local_blocks(seq):
    blocks = 2
    while seq // blocks > ALL_TO_ALL_BLOCK and seq % (2 * blocks) == 0:
        blocks *= 2
    return blocks


@functools.cache
def _local_plan(causal, window, seq):
    """For each query block of the whole sequence (natural order), the key blocks it needs and
    their static distance masks (``None`` where every pair is visible)."""
    blocks = _local_blocks(seq)
    size = seq // blocks
    rel = np.arange(size)[:, None] - np.arange(size)[None, :]
    plan = []
    for i in range(blocks):
        row = []
        for j in range(blocks):
            offset = i - j
            if causal and (offset < 0 or not window_reaches(offset, size, window)):
                continue
            needs = causal and (offset == 0 or not window_covers(offset, size, window))
            row.append((j, (offset * size + rel).astype(np.int32) if needs else None))
        plan.append(tuple(row))
    return size, tuple(plan)


@functools.cache
def _make_all_to_all(num_shards, axis, causal, load_balance, scale, window, segmented, repl, seq):
    size, plan = _local_plan(causal, window, seq)
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
        k_rng = [_id_range(part(k_ids, j)) for j in range(len(plan))] if segmented else None
        outs, lses = [], []
        for i, row in enumerate(plan):
            qi, qid = part(q, i), part(q_ids, i)
            q_rng = _id_range(qid) if segmented else None
            carry = (jnp.zeros(qi.shape[:-1] + (v.shape[-1],), F32),)
            carry += (jnp.full(qi.shape[:-1], -jnp.inf, F32),)
            for j, dist in row:
                meet = _meet(q_rng, k_rng[j]) if segmented else None
                carry = _attend_block(
                    carry, qi, part(k, j), part(v, j), qid, part(k_ids, j), dist, meet, window,
                    scale,
                )  # fmt: skip
            outs.append(carry[0])
            lses.append(carry[1])
        return jnp.concatenate(outs, 1), jnp.concatenate(lses, 1)

    def local_backward(q, k, v, q_ids, k_ids, do, lse, delta):
        n2 = len(plan)
        k_rng = [_id_range(part(k_ids, j)) for j in range(n2)] if segmented else None
        dk = [jnp.zeros(part(k, j).shape, F32) for j in range(n2)]
        dv = [jnp.zeros(part(v, j).shape, F32) for j in range(n2)]
        dqs = []
        for i, row in enumerate(plan):
            qi, qid = part(q, i), part(q_ids, i)
            q_rng = _id_range(qid) if segmented else None
            dq = jnp.zeros(qi.shape, F32)
            for j, dist in row:
                meet = _meet(q_rng, k_rng[j]) if segmented else None
                dq, dk[j], dv[j] = _grad_block(
                    (dq, dk[j], dv[j]), qi, part(k, j), part(v, j), qid, part(k_ids, j), dist,
                    meet, part(do, i), part(lse, i), part(delta, i), window, scale,
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
    num_shards, q, q_ids, k_ids = _prepare(
        query, key, value, key_mask, segment_ids, mesh, sequence_axis, batch_axis, causal
    )
    b, tq, h, d = query.shape
    hk = key.shape[2]
    if (hk * kv_replication) % num_shards or (h // hk) % kv_replication:
        raise ValueError(
            f"all-to-all needs the key/value heads ({hk}) times kv_replication "
            f"({kv_replication}) to divide by CP = {num_shards}."
        )
    scale = float(scale if scale is not None else 1.0 / np.sqrt(d))
    attend = _make_all_to_all(
        num_shards,
        sequence_axis,
        bool(causal),
        load_balance,
        scale,
        None if window_size is None else int(window_size),
        segment_ids is not None,
        int(kv_replication),
        tq,
    )
    # One all-to-all carries query, key and value, so they share the query's dtype.
    key, value = key.astype(query.dtype), value.astype(query.dtype)
    out = _sharded(attend, mesh, sequence_axis, batch_axis)(q, key, value, q_ids, k_ids)
    return jnp.reshape(out, (b, tq, h, value.shape[-1]))
