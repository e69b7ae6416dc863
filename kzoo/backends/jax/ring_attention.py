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
* The schedule is ``kzoo.backends.common.ring_schedule.step_pairs``: with the zigzag layout every
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

The block math both strategies share is ``attention_blocks.py``; the shard_map wrapper and
the eager-call cache are ``sharded.py``.
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
    ring_steps,
    step_pairs,
    window_covers,
)
from kzoo.backends.jax import sharded
from kzoo.backends.jax.attention_blocks import (
    F32,
    _attend_block,
    _grad_block,
    _pack,
    _shift,
    _unpack,
)

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
    a traced function, the compiled program is cached (``kzoo.backends.jax.sharded.eager_cache_info``).
    """
    sharded.check_shapes(query, key, value, key_mask, mesh, sequence_axis, batch_axis, causal)
    options = dict(
        mesh=mesh,
        sequence_axis=sequence_axis,
        batch_axis=batch_axis,
        causal=bool(causal),
        load_balance=load_balance,
        scale=None if scale is None else float(scale),
        window_size=None if window_size is None else int(window_size),
    )
    return sharded.run(_ring_program, (query, key, value, key_mask, segment_ids), options)


def _ring_program(query, key, value, key_mask, segment_ids, *, mesh, sequence_axis, batch_axis,
                  causal, load_balance, scale, window_size):  # fmt: skip
    num_shards, q, q_ids, k_ids = sharded.prepare(
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
    out = sharded.over_mesh(attend, mesh, sequence_axis, batch_axis)(q, key, value, q_ids, k_ids)
    return jnp.reshape(out, (b, tq, h, value.shape[-1]))
