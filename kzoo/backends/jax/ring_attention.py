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
  never computed (each block runs under a ``lax.cond`` on the device's rank). A chunk pair
  longer than ``ATTENTION_BLOCK`` tokens is computed in blocks of at most that size, so the scores
  held at a time do not grow with ``(S / CP)**2``.
* Sliding window: steps that no query can reach are dropped statically (``ring_steps``); the
  remaining blocks are then sent directly by a shift of ``s`` devices rather than relayed, so
  a window shorter than a chunk sends 2 blocks instead of ``CP - 1``.
* Packed documents: whether two documents meet in a block depends on the data, so each block
  is guarded by a ``lax.cond`` on the id ranges of its query and key chunks (the ids travel
  with the keys; masked keys have id -1); a block no document spans, or whose keys are all
  masked, is not computed. The block is still sent.
* Backward: the key/value blocks are sent again (XLA shares these sends with the forward's),
  and the dK/dV accumulators travel after them; one last send brings each device's dK/dV
  home (``2 * CP - 1`` sends). Plain autodiff through the loop would keep every remote
  key/value block alive. With skipped steps, each block's dK/dV goes straight back.

**All-to-all** (``all_to_all_attention``). One all-to-all re-shards the packed query, key,
value and ids from the sequence to the heads (copying key/value heads first when only the
query heads divide by CP); each device then attends over the whole sequence for ``1/CP`` of
the heads, in natural order, in blocks of at most ``ATTENTION_BLOCK`` tokens, with the causal
and window skips decided statically and the document skip by ``lax.cond``; a second
all-to-all brings the output back. The backward pass has two more all-to-alls (the output
gradient in, the query/key/value gradients out).

**Eager calls** (outside any traced function, e.g. a layer called in a notebook) run a jitted
program cached per configuration (``eager_cache_info``; see "Eager calls" below); traced
calls put the attention into the caller's program.
"""

import collections
import functools
import threading

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.sharding import PartitionSpec as P

from kzoo.ops.ring_attention import (
    block_reaches,
    block_split,
    chunk_ids,
    ring_steps,
    step_pairs,
    validate_ring_shapes,
    window_covers,
)

F32 = jnp.float32
_INT_MAX = np.iinfo(np.int32).max
_UINT = {2: jnp.uint16, 4: jnp.uint32, 8: jnp.uint64}


# ---------------------------------------------------------------------------------------------
# One block: scores, masks, forward and backward.


def _scores(q, k, scale):
    # q (B, Lq, Hk, G, D), k (B, Lk, Hk, D) -> (B, Hk, G, Lq, Lk) in float32.
    return jnp.einsum("bqhgd,bkhd->bhgqk", q, k, preferred_element_type=F32) * scale


def _valid(q_ids, k_ids, offset, window):
    """(B, 1, 1, Lq, Lk): same document (key padding has id -1), causal and in the window.

    ``offset`` is the position of the block's first query minus that of its first key
    (``None`` when every pair of the block is causally visible and in the window).
    """
    valid = q_ids[:, :, None] == k_ids[:, None, :]
    if offset is not None:
        shape = (q_ids.shape[1], k_ids.shape[1])
        # Built from iotas, not stored: a constant per block would be S/CP squared integers.
        distance = offset + lax.broadcasted_iota(jnp.int32, shape, 0)
        distance = distance - lax.broadcasted_iota(jnp.int32, shape, 1)
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


def _visible(q_ids, k_ids, offset, window):
    """Whether any pair of the block is visible: a document meets in it and, when ``offset``
    is given (a causal block), its positions reach the causal mask and the window."""
    meet = _meet(_id_range(q_ids), _id_range(k_ids))
    if offset is None:
        return meet
    reach = offset + (q_ids.shape[1] - 1) >= 0
    if window is not None:
        reach = reach & (offset - (k_ids.shape[1] - 1) <= window - 1)
    return meet & reach


def _attend_block(carry, q, k, v, q_ids, k_ids, offset, window, scale, active=True):
    """Merge one block into the running (out, lse), if any of its pairs is visible.

    The ``lax.cond`` also bounds memory: each block's scores live inside its own branch, where
    XLA frees them, instead of in one flat program where the CPU scheduler keeps every
    block's scores alive at once (measured: 2.6 GiB against 0.3 GiB for 10 blocks).
    """

    def compute(out, lse):
        valid = _valid(q_ids, k_ids, offset, window)
        return _merge(out, lse, *_block_forward(q, k, v, valid, scale))

    visible = _visible(q_ids, k_ids, offset, window) & active
    return lax.cond(visible, compute, lambda out, lse: (out, lse), *carry)


def _grad_block(acc, q, k, v, q_ids, k_ids, offset, do, lse, delta, window, scale, active=True):
    """Add one block's (dq, dk, dv) to the accumulators ``acc`` (skipped as ``_attend_block``)."""

    def compute(dq, dk, dv):
        valid = _valid(q_ids, k_ids, offset, window)
        a, b, c = _block_backward(q, k, v, valid, do, lse, delta, scale)
        return dq + a, dk + b, dv + c

    visible = _visible(q_ids, k_ids, offset, window) & active
    return lax.cond(visible, compute, lambda *a: a, *acc)


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
    # Opaque to XLA: ids it could fold to constants would fold the blocks' lax.cond away and
    # leave one flat program that holds every block's scores at once.
    return lax.optimization_barrier((q_ids, k_ids))


def _shift(num_shards, shift):
    """``ppermute`` pairs sending every device's block ``shift`` devices on."""
    return [(j, (j + shift) % num_shards) for j in range(num_shards)]


# ---------------------------------------------------------------------------------------------
# The ring.


@functools.cache
def _step_plan(step, num_shards, causal, load_balance, window, chunk):
    """Static plan of one ring step, as a list of positions.

    Each device computes a few (query slot, key slot) pairs per step (``step_pairs``); the
    pairs are laid out on positions so that no device has two at one position, pairs every
    device computes first. A position is ``(query slots, key slots, active, needs mask,
    offsets)``: per rank the slots it computes there and whether it computes anything, whether
    any rank's pair needs a causal/window mask, and per rank the chunk offset (first query
    minus first key, in chunks). Running positions instead of a ``lax.switch`` over the
    ranks' pair sets keeps every block's ``lax.cond`` at the top of the program (XLA reuses
    their memory there, not inside switch branches), and XLA's cost analysis still counts
    one pair per position: the busiest device's work.
    """
    per_rank = [
        step_pairs(step, r, num_shards, causal, load_balance, window, chunk)
        for r in range(num_shards)
    ]
    ranks_of = {}
    for r, pairs in enumerate(per_rank):
        for pair in pairs:
            ranks_of.setdefault(pair, set()).add(r)
    positions = []  # [(used ranks, {rank: pair})]
    for pair in sorted(ranks_of, key=lambda p: (-len(ranks_of[p]), p)):
        free = [p for p in positions if not p[0] & ranks_of[pair]]
        if free:
            used, by_rank = free[0]
        else:
            used, by_rank = set(), {}
            positions.append((used, by_rank))
        used |= ranks_of[pair]
        by_rank.update({r: pair for r in ranks_of[pair]})
    plan = []
    for _, by_rank in positions:
        qs = tuple(by_rank.get(r, (0, 0))[0] for r in range(num_shards))
        ks = tuple(by_rank.get(r, (0, 0))[1] for r in range(num_shards))
        active = tuple(r in by_rank for r in range(num_shards))
        offsets = tuple(
            chunk_ids(r, num_shards, load_balance)[qs[r]]
            - chunk_ids((r - step) % num_shards, num_shards, load_balance)[ks[r]]
            for r in range(num_shards)
        )
        live = [o for o, a in zip(offsets, active) if a]
        needs = causal and any(o == 0 or not window_covers(o, chunk, window) for o in live)
        plan.append((qs, ks, active, needs, offsets))
    return tuple(plan)


def _pick(table, rank):
    """``table[rank]`` for a static per-rank table: a Python value when all ranks agree."""
    if len(set(table)) == 1:
        return table[0]
    return jnp.asarray(np.array(table))[rank]


def _choose(slot, options):
    """``options[slot]`` for a static or traced slot index (0 or 1)."""
    if isinstance(slot, (int, np.integer)):
        return options[slot]
    return jnp.where(slot == 1, options[1], options[0])


def _put(slot, options, value):
    """``options`` with ``options[slot]`` replaced by ``value`` (static or traced slot)."""
    options = list(options)
    if isinstance(slot, (int, np.integer)):
        options[slot] = value
        return options
    return [jnp.where(slot == i, value, o) for i, o in enumerate(options)]


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
def _make_ring(num_shards, axis, causal, load_balance, scale, window, chunk, m):
    steps = ring_steps(num_shards, causal, load_balance, window, chunk)
    relay = steps == list(range(num_shards))
    plans = {s: _step_plan(s, num_shards, causal, load_balance, window, chunk) for s in steps}
    # Each chunk of a device's two is cut into m blocks of `size` tokens (ATTENTION_BLOCK at
    # most): x[slot][a] is block a of slot 0 (front) or 1 (back).
    size = chunk // m

    def blocks(x):
        return [
            [x[:, (j * m + a) * size : (j * m + a + 1) * size] for a in range(m)] for j in (0, 1)
        ]

    def join(x):
        return jnp.concatenate([b for slot in x for b in slot], axis=1)

    def column(x, index):
        return [slot[index] for slot in x]

    def store(x, slot, index, value):
        for j, new in enumerate(_put(slot, column(x, index), value)):
            x[j][index] = new

    def block_pairs(plan, rank, own, theirs):
        """Per position and block pair: (query slot, key slot, a, b, active, offset or None)."""
        for qs_t, ks_t, active_t, needs, offsets in plan:
            qs, ks, active = _pick(qs_t, rank), _pick(ks_t, rank), _pick(active_t, rank)
            live = [o for o, on in zip(offsets, active_t) if on]
            base = _choose(qs, own) - _choose(ks, theirs)
            for a in range(m):
                for b in range(m):
                    shift = (a - b) * size
                    if not any(
                        block_reaches(o * chunk + shift, size, size, causal, window) for o in live
                    ):
                        continue
                    offset = base * chunk + shift if needs else None
                    yield qs, ks, a, b, active, offset

    def forward(q, k, v, q_ids, k_ids):
        rank = lax.axis_index(axis)
        d, dv = k.shape[-1], v.shape[-1]
        own = chunk_ids(rank, num_shards, load_balance)
        q_bl, qid_bl = blocks(q), blocks(q_ids)
        shape = q_bl[0][0].shape[:-1]
        out = [[jnp.zeros(shape + (dv,), F32)] * m for _ in (0, 1)]
        lse = [[jnp.full(shape, -jnp.inf, F32)] * m for _ in (0, 1)]
        local = _pack([k, v.astype(k.dtype)], [k_ids], k.shape[2])
        for block, step in _blocks(local, steps, relay, axis, num_shards):
            kb, vb, kid = (k, v, k_ids) if step == 0 else _unpack(block, (d, dv), k.dtype, 1)
            theirs = chunk_ids((rank - step) % num_shards, num_shards, load_balance)
            k_bl, v_bl, kid_bl = blocks(kb), blocks(vb), blocks(kid)
            for qs, ks, a, b, active, offset in block_pairs(plans[step], rank, own, theirs):
                carry = _choose(qs, column(out, a)), _choose(qs, column(lse, a))
                new = _attend_block(
                    carry, _choose(qs, column(q_bl, a)), _choose(ks, column(k_bl, b)),
                    _choose(ks, column(v_bl, b)), _choose(qs, column(qid_bl, a)),
                    _choose(ks, column(kid_bl, b)), offset, window, scale, active,
                )  # fmt: skip
                store(out, qs, a, new[0])
                store(lse, qs, a, new[1])
        return join(out).astype(q.dtype), join(lse)

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
        q_bl, qid_bl, do_bl = blocks(q), blocks(q_ids), blocks(do)
        lse_bl, delta_bl = blocks(lse), blocks(delta)
        dq = [[jnp.zeros(x.shape, F32) for x in slot] for slot in q_bl]
        local = _pack([k, v.astype(k.dtype)], [k_ids], k.shape[2])
        carried = home = None
        for block, step in _blocks(local, steps, relay, axis, num_shards):
            kb, vb, kid = (k, v, k_ids) if step == 0 else _unpack(block, (d, dv), k.dtype, 1)
            theirs = chunk_ids((rank - step) % num_shards, num_shards, load_balance)
            k_bl, v_bl, kid_bl = blocks(kb), blocks(vb), blocks(kid)
            dk = [[jnp.zeros(x.shape, F32) for x in slot] for slot in k_bl]
            dvv = [[jnp.zeros(x.shape, F32) for x in slot] for slot in v_bl]
            for qs, ks, a, b, active, offset in block_pairs(plans[step], rank, own, theirs):
                acc = (
                    _choose(qs, column(dq, a)),
                    _choose(ks, column(dk, b)),
                    _choose(ks, column(dvv, b)),
                )
                qi, qid, doi, lsei, deltai = (
                    _choose(qs, column(t, a)) for t in (q_bl, qid_bl, do_bl, lse_bl, delta_bl)
                )
                kj, vj, kidj = (_choose(ks, column(t, b)) for t in (k_bl, v_bl, kid_bl))
                new = _grad_block(
                    acc, qi, kj, vj, qid, kidj, offset, doi, lsei, deltai, window, scale, active
                )
                store(dq, qs, a, new[0])
                store(dk, ks, b, new[1])
                store(dvv, ks, b, new[2])
            dkv = jnp.concatenate([join(dk), join(dvv)], -1)
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
        dq = join(dq).astype(q.dtype)
        return dq, total[..., :d].astype(k.dtype), total[..., d:].astype(v.dtype), None, None

    attend.defvjp(attend_fwd, attend_bwd)
    return attend


def _check(query, key, value, key_mask, mesh, sequence_axis, batch_axis, causal):
    """The ``ValueError`` checks, from shapes only: run before any tracing or device work."""
    num_shards = mesh.shape[sequence_axis]
    batch_shards = mesh.shape[batch_axis] if batch_axis is not None else 1
    validate_ring_shapes(query, key, value, key_mask, causal, num_shards, batch_shards)
    return num_shards


def _prepare(query, key, value, key_mask, segment_ids, mesh, sequence_axis, batch_axis, causal):
    num_shards = _check(query, key, value, key_mask, mesh, sequence_axis, batch_axis, causal)
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
    ``segment_ids`` (``(batch, seq)`` int, 0 = padding) mark packed documents. Called outside
    a traced function, the compiled program is cached (``eager_cache_info``).
    """
    _check(query, key, value, key_mask, mesh, sequence_axis, batch_axis, causal)
    options = dict(
        mesh=mesh,
        sequence_axis=sequence_axis,
        batch_axis=batch_axis,
        causal=bool(causal),
        load_balance=load_balance,
        scale=None if scale is None else float(scale),
        window_size=None if window_size is None else int(window_size),
    )
    return _run(_ring_program, (query, key, value, key_mask, segment_ids), options)


def _ring_program(query, key, value, key_mask, segment_ids, *, mesh, sequence_axis, batch_axis,
                  causal, load_balance, scale, window_size):  # fmt: skip
    num_shards, q, q_ids, k_ids = _prepare(
        query, key, value, key_mask, segment_ids, mesh, sequence_axis, batch_axis, causal
    )
    b, tq, h, d = query.shape
    scale = float(scale if scale is not None else 1.0 / np.sqrt(d))
    chunk = tq // (2 * num_shards)
    attend = _make_ring(
        num_shards,
        sequence_axis,
        causal,
        load_balance,
        scale,
        window_size,
        chunk,
        block_split(chunk),
    )
    value = value.astype(key.dtype) if value.dtype != key.dtype else value
    out = _sharded(attend, mesh, sequence_axis, batch_axis)(q, key, value, q_ids, k_ids)
    return jnp.reshape(out, (b, tq, h, value.shape[-1]))


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
    num_shards = _check(query, key, value, key_mask, mesh, sequence_axis, batch_axis, causal)
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
    return _run(_all_to_all_program, (query, key, value, key_mask, segment_ids), options)


def _all_to_all_program(query, key, value, key_mask, segment_ids, *, mesh, sequence_axis,
                        batch_axis, causal, load_balance, scale, window_size,
                        kv_replication):  # fmt: skip
    num_shards, q, q_ids, k_ids = _prepare(
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
    out = _sharded(attend, mesh, sequence_axis, batch_axis)(q, key, value, q_ids, k_ids)
    return jnp.reshape(out, (b, tq, h, value.shape[-1]))


# ---------------------------------------------------------------------------------------------
# Eager calls. Outside a traced function, jax runs a shard_map by tracing it afresh and
# dispatching its operations one by one on every call (measured: 35 s a call for 32 tokens on
# 8 CPU devices). An eager call therefore goes through a jitted program, kept here per
# configuration: everything that changes the traced program is in the key (the program, the
# mesh - its devices and axis names -, axes, masks and schedule options, and every input's
# shape and dtype), so a changed mesh or option never reuses an entry. The cache is bounded
# (least recently used first out): it holds meshes and compiled executables. Calls inside a
# traced function (keras's jitted ``fit``/``predict`` steps, ``jax.jit``, ``jax.grad``) trace the
# program into that function as before.

EAGER_CACHE_SIZE = 32
_EAGER = collections.OrderedDict()
_EAGER_STATS = {"hits": 0, "misses": 0}
_EAGER_LOCK = threading.Lock()


def _signature(x):
    if x is None:
        return None
    return tuple(x.shape), str(jnp.dtype(x.dtype))


def _run(program, arrays, options):
    """``program(*arrays, **options)``: traced in place under a trace, else jitted and cached."""
    if any(isinstance(x, jax.core.Tracer) for x in arrays):
        return program(*arrays, **options)
    key = (program.__name__, tuple(sorted(options.items())), tuple(map(_signature, arrays)))
    with _EAGER_LOCK:
        fn = _EAGER.get(key)
        if fn is not None:
            _EAGER.move_to_end(key)
            _EAGER_STATS["hits"] += 1
        else:
            _EAGER_STATS["misses"] += 1
            fn = _EAGER[key] = jax.jit(functools.partial(program, **options))
            while len(_EAGER) > max(EAGER_CACHE_SIZE, 1):
                _EAGER.popitem(last=False)
    return fn(*arrays)


def eager_cache_info():
    """``{"hits", "misses", "size", "maxsize"}`` of the cache of eagerly called programs."""
    with _EAGER_LOCK:
        return {**_EAGER_STATS, "size": len(_EAGER), "maxsize": EAGER_CACHE_SIZE}


def clear_eager_cache():
    """Drop every cached eager program (and the meshes and executables it holds)."""
    with _EAGER_LOCK:
        _EAGER.clear()
