"""Ring attention on torch.distributed: one process per device of the sequence axis.

Each process holds its shard of the sequence (two chunk slots, front and back, in the layout
order of ``kzoo.backends.common.ring_schedule``) and keeps its queries; key/value blocks travel
round the processes of the sequence axis. The schedule is the shared one: at ring step ``i``
process ``r`` holds the keys of process ``(r - i) mod CP`` and computes the (query slot, key
slot) pairs ``step_pairs`` gives (with the zigzag layout, half a block per off-diagonal step);
chunk pairs longer than ``ATTENTION_BLOCK`` tokens are cut into blocks of at most that size;
blocks no causal or window mask lets through are never computed, and blocks no document spans
(``segment_ids``) are skipped at run time by the same range test as ``blocks_meet``. Since
each process knows its rank, the plan is plain Python per process.

* **Forward.** Key, value and key ids are packed into one byte tensor. Before a block is
  computed, the next one is already posted (``batch_isend_irecv``: send to the next process,
  receive from the previous), so the transfer overlaps the compute: ``CP - 1`` exchanges.
  With a sliding window, steps no query can reach are dropped (``ring_steps``) and each
  remaining block is sent straight to the process that needs it.
* **Backward** (the reverse ring). The autograd function stores only the local query, key,
  value, ids, output and log-sum-exp - ``O(S / CP)`` per process - and runs the ring again:
  key/value blocks travel as in the forward pass while each block's dK/dV accumulator (float32)
  follows it one process behind; after the last step one more send brings every accumulator
  home (``2 * CP - 1`` exchanges in all). Each accumulator's transfer overlaps the next step's
  compute. With a window, each block's dK/dV goes straight back to its owner.
"""

import dataclasses
import functools
import types

import numpy as np
import torch

from kzoo.backends.common.ring_schedule import (
    block_reaches,
    block_split,
    chunk_ids,
    ring_steps,
    step_pairs,
    validate_ring_shapes,
)
from kzoo.backends.torch import cp_blocks as blk
from kzoo.backends.torch.distributed import exchange, wait

TAG_KV, TAG_GRAD = 1, 2


@dataclasses.dataclass(frozen=True)
class RingConfig:
    mesh: object  # kzoo.backends.torch.distributed.ProcessMesh
    causal: bool
    load_balance: str
    window: int | None
    scale: float
    q_chunk: int
    k_chunk: int


@functools.cache
def _plan(rank, num_shards, causal, load_balance, window, q_chunk, k_chunk):
    """``(steps, relay, q_size, k_size, {step: ((query block, key block, mask offset), ...)})``.

    Block ``i`` of a local sequence is tokens ``i * size .. (i + 1) * size``; the mask offset
    (first query position minus first key position) is ``None`` where every pair is visible.
    """
    # With a causal mask both lengths are equal (validated), and so are the blocks.
    steps = ring_steps(num_shards, causal, load_balance, window, q_chunk)
    relay = steps == list(range(num_shards))
    mq, mk = block_split(q_chunk), block_split(k_chunk)
    q_size, k_size = q_chunk // mq, k_chunk // mk
    own = chunk_ids(rank, num_shards, load_balance)
    per_step = {}
    for step in steps:
        theirs = chunk_ids((rank - step) % num_shards, num_shards, load_balance)
        blocks = []
        pairs = step_pairs(step, rank, num_shards, causal, load_balance, window, q_chunk)
        for qs, ks in pairs:
            for a in range(mq):
                for b in range(mk):
                    offset = (own[qs] - theirs[ks]) * q_chunk + (a - b) * q_size
                    if not block_reaches(offset, q_size, k_size, causal, window):
                        continue
                    mask = blk.mask_offset(offset, q_size, k_size, causal, window)
                    blocks.append((qs * mq + a, ks * mk + b, mask))
        per_step[step] = tuple(blocks)
    return steps, relay, q_size, k_size, per_step


def _kv_blocks(local, steps, relay, mesh):
    """Yield ``(packed block, step)`` for each computed step; the next block's transfer is
    posted before the current block is handed out for compute."""
    group = mesh.context_group
    if relay:
        block = local
        for i, step in enumerate(steps):
            pending = incoming = None
            if i + 1 < len(steps):
                incoming = torch.empty_like(local)
                pending = exchange(
                    [(block, mesh.context_peer(1))], [(incoming, mesh.context_peer(-1))],
                    group, TAG_KV,
                )  # fmt: skip
            yield block, step
            if pending is not None:
                wait(pending)
                block = incoming
        return
    received = None
    for i, step in enumerate(steps):
        pending = incoming = None
        if i + 1 < len(steps):
            shift = steps[i + 1]
            incoming = torch.empty_like(local)
            pending = exchange(
                [(local, mesh.context_peer(shift))], [(incoming, mesh.context_peer(-shift))],
                group, TAG_KV,
            )  # fmt: skip
        yield (local if step == 0 else received), step
        if pending is not None:
            wait(pending)
            received = incoming


def _slices(size, count):
    return [slice(i * size, (i + 1) * size) for i in range(count)]


def _layout(k, v, k_ids):
    return [(k.shape, k.dtype), (v.shape, v.dtype), (k_ids.shape, k_ids.dtype)]


def _forward(config, q, k, v, q_ids, k_ids):
    mesh = config.mesh
    steps, relay, q_size, k_size, plan = _plan(
        mesh.context_index, mesh.context_size, config.causal, config.load_balance,
        config.window, config.q_chunk, config.k_chunk,
    )  # fmt: skip
    qsl = _slices(q_size, q.shape[1] // q_size)
    ksl = _slices(k_size, k.shape[1] // k_size)
    q_ranges = [blk.id_range(q_ids[:, s]) for s in qsl]
    out = torch.zeros(q.shape[:-1] + (v.shape[-1],), dtype=blk.F32, device=q.device)
    lse = torch.full(q.shape[:-1], float("-inf"), dtype=blk.F32, device=q.device)
    local = blk.pack([k, v, k_ids])
    for block, step in _kv_blocks(local, steps, relay, mesh):
        kb, vb, kid = (k, v, k_ids) if step == 0 else blk.unpack(block, _layout(k, v, k_ids))
        k_ranges = [blk.id_range(kid[:, s]) for s in ksl]
        for qi, ki, offset in plan[step]:
            if not blk.meet(q_ranges[qi], k_ranges[ki]):
                continue
            sq, sk = qsl[qi], ksl[ki]
            o, lse_b = blk.block_forward(
                q[:, sq], kb[:, sk], vb[:, sk], q_ids[:, sq], kid[:, sk], offset,
                config.window, config.scale,
            )  # fmt: skip
            out[:, sq], lse[:, sq] = blk.merge(out[:, sq], lse[:, sq], o, lse_b)
    return out, lse


def _backward(config, q, k, v, q_ids, k_ids, out, lse, dout):
    mesh = config.mesh
    steps, relay, q_size, k_size, plan = _plan(
        mesh.context_index, mesh.context_size, config.causal, config.load_balance,
        config.window, config.q_chunk, config.k_chunk,
    )  # fmt: skip
    qsl = _slices(q_size, q.shape[1] // q_size)
    ksl = _slices(k_size, k.shape[1] // k_size)
    q_ranges = [blk.id_range(q_ids[:, s]) for s in qsl]
    d = k.shape[-1]
    delta = torch.sum(dout.to(blk.F32) * out.to(blk.F32), dim=-1)
    dout = dout.to(q.dtype)
    dq = torch.zeros(q.shape, dtype=blk.F32, device=q.device)
    grad_shape = k.shape[:-1] + (d + v.shape[-1],)
    local = blk.pack([k, v, k_ids])
    group = mesh.context_group
    # Relayed: the accumulator arriving from the previous process, its request, and the one
    # sent on (kept alive until its send completes).
    carried = pending = in_flight = None
    home = None  # the process's own block's dK/dV (relayed: it arrives with the last send)
    returning = []  # windowed: (buffer, request) of dK/dV coming back from other processes
    for block, step in _kv_blocks(local, steps, relay, mesh):
        kb, vb, kid = (k, v, k_ids) if step == 0 else blk.unpack(block, _layout(k, v, k_ids))
        k_ranges = [blk.id_range(kid[:, s]) for s in ksl]
        dkv = torch.zeros(grad_shape, dtype=blk.F32, device=q.device)
        for qi, ki, offset in plan[step]:
            if not blk.meet(q_ranges[qi], k_ranges[ki]):
                continue
            sq, sk = qsl[qi], ksl[ki]
            gq, gk, gv = blk.block_backward(
                q[:, sq], kb[:, sk], vb[:, sk], q_ids[:, sq], kid[:, sk], offset,
                config.window, config.scale, dout[:, sq], lse[:, sq], delta[:, sq],
            )  # fmt: skip
            dq[:, sq] += gq
            dkv[:, sk, :, :d] += gk
            dkv[:, sk, :, d:] += gv
        if mesh.context_size == 1:
            home = dkv  # one process: the ring is its own block only
        elif relay:
            # The accumulator follows its key/value block one process behind; the send after
            # the last step brings every process's dK/dV home.
            if pending is not None:
                wait(pending)
                dkv += carried
            carried = torch.empty_like(dkv)
            in_flight = dkv
            pending = exchange(
                [(dkv, mesh.context_peer(1))], [(carried, mesh.context_peer(-1))], group, TAG_GRAD
            )
        elif step == 0:
            home = dkv
        else:
            # The block came `step` processes on; its gradient goes straight back.
            buffer = torch.empty_like(dkv)
            request = exchange(
                [(dkv, mesh.context_peer(-step))], [(buffer, mesh.context_peer(step))],
                group, TAG_GRAD,
            )  # fmt: skip
            returning.append((buffer, request, dkv))
    if relay and mesh.context_size > 1:
        wait(pending)
        del in_flight
        total = carried
    else:
        total = home
        for buffer, request, _ in returning:
            wait(request)
            total += buffer
    return dq.to(q.dtype), total[..., :d].to(k.dtype), total[..., d:].to(v.dtype)


class _RingAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, q_ids, k_ids, config):
        out, lse = _forward(config, q, k, v, q_ids, k_ids)
        out = out.to(q.dtype)
        ctx.save_for_backward(q, k, v, q_ids, k_ids, out, lse)
        ctx.config = config
        return out

    @staticmethod
    def backward(ctx, dout):
        q, k, v, q_ids, k_ids, out, lse = ctx.saved_tensors
        dq, dk, dv = _backward(ctx.config, q, k, v, q_ids, k_ids, out, lse, dout.contiguous())
        return dq, dk, dv, None, None, None


def check_local_shapes(query, key, value, key_mask, causal, num_shards):
    """The shape ``ValueError``s of ``validate_ring_shapes``, phrased for the whole sequence
    (this process holds ``1 / CP`` of it)."""

    def whole(x):
        if x is None:
            return None
        shape = list(x.shape)
        if len(shape) >= 2:
            shape[1] = shape[1] * num_shards
        return types.SimpleNamespace(shape=tuple(shape))

    validate_ring_shapes(
        whole(query), whole(key), whole(value), whole(key_mask), causal, num_shards, 1
    )


def prepare(query, key, value, key_mask, segment_ids, mesh, causal):
    """Checks, then ``(q as (B, L, Hk, G, D), query ids, key ids, scale default)``."""
    check_local_shapes(query, key, value, key_mask, causal, mesh.context_size)
    b, tq, h, d = query.shape
    hk = key.shape[2]
    q_ids, k_ids = blk.key_ids(segment_ids, key_mask, b, tq, key.shape[1], query.device)
    return query.reshape(b, tq, hk, h // hk, d), q_ids, k_ids, 1.0 / float(np.sqrt(d))


def ring_attention(
    query,
    key,
    value,
    key_mask=None,
    segment_ids=None,
    *,
    mesh,
    sequence_axis=None,
    batch_axis=None,
    causal=False,
    load_balance="zigzag",
    scale=None,
    window_size=None,
):
    """Ring attention over the processes of ``mesh``'s sequence axis.

    ``query`` ``(batch, q_len, num_heads, head_dim)`` and ``key``/``value``
    ``(batch, kv_len, num_kv_heads, dim)`` are this process's shards (its batch rows and its
    ``1 / CP`` of the sequence, in layout order); ``key_mask`` ``(batch, kv_len)`` and
    ``segment_ids`` ``(batch, seq)`` likewise. ``mesh`` is a
    :class:`kzoo.backends.torch.distributed.ProcessMesh`. Returns this process's shard of the
    output, ``(batch, q_len, num_heads, value_dim)``.
    """
    del sequence_axis, batch_axis  # the ProcessMesh knows its axes
    q, q_ids, k_ids, default_scale = prepare(query, key, value, key_mask, segment_ids, mesh, causal)
    b, tq, h, _ = query.shape
    if query.device.type == "meta":
        # keras builds models by calling them on meta tensors: shapes only, no communication.
        return torch.empty((b, tq, h, value.shape[-1]), dtype=query.dtype, device="meta")
    value = value.to(key.dtype)
    config = RingConfig(
        mesh=mesh,
        causal=bool(causal),
        load_balance=load_balance,
        window=None if window_size is None else int(window_size),
        scale=default_scale if scale is None else float(scale),
        q_chunk=tq // 2,
        k_chunk=key.shape[1] // 2,
    )
    out = _RingAttention.apply(q.contiguous(), key.contiguous(), value.contiguous(), q_ids,
                               k_ids, config)  # fmt: skip
    return out.reshape(b, tq, h, value.shape[-1])
