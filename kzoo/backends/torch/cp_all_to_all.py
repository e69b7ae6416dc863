"""All-to-all ("Ulysses") attention on torch.distributed: one process per device.

One ``all_to_all_single`` over the processes of the sequence axis re-shards query, key, value
and the ids (packed as bytes, one message per peer) from the sequence to the heads: each
process then holds the whole sequence for ``1 / CP`` of the heads (copying key/value heads
first when only the query heads divide by CP). It attends over the whole sequence in natural
order, in blocks of at most ``ATTENTION_BLOCK`` tokens (causal and window blocks skipped from
the positions, document blocks by the range test), and a second all-to-all brings the output
back to the sequence shards. The backward pass is an autograd function with two more
all-to-alls (the output gradient in, the query/key/value gradients out); it stores only the
head shard of query, key, value, ids and log-sum-exp, and this process's shard of the output:
``O(S / CP)`` per process.
"""

import dataclasses
import functools

import torch
import torch.distributed as dist

from kzoo.backends.common.ring_schedule import block_reaches, block_split, chunk_ids
from kzoo.backends.torch import cp_blocks as blk
from kzoo.backends.torch.cp_ring import prepare


@dataclasses.dataclass(frozen=True)
class AllToAllConfig:
    mesh: object  # kzoo.backends.torch.distributed.ProcessMesh
    causal: bool
    load_balance: str
    window: int | None
    scale: float
    replication: int


@functools.cache
def _local_plan(causal, window, seq, blocks):
    """Per query block of the whole sequence (natural order, ``blocks`` blocks), the key blocks
    it needs and their mask offsets (``None`` where every pair is visible)."""
    size = seq // blocks
    plan = []
    for i in range(blocks):
        row = []
        for j in range(blocks):
            offset = (i - j) * size
            if block_reaches(offset, size, size, causal, window):
                row.append((j, blk.mask_offset(offset, size, size, causal, window)))
        plan.append(tuple(row))
    return size, tuple(plan)


@functools.cache
def _orders(num_shards, load_balance, seq, device):
    """Index tensors: layout order -> natural order and back, over the whole sequence."""
    chunk = seq // (2 * num_shards)
    slots = 2 * num_shards
    chunk_at = [chunk_ids(t // 2, num_shards, load_balance)[t % 2] for t in range(slots)]
    slot_of = {c: t for t, c in enumerate(chunk_at)}

    def gather(source_of):
        return torch.cat(
            [torch.arange(source_of[i] * chunk, (source_of[i] + 1) * chunk) for i in range(slots)]
        ).to(device)

    return gather(slot_of), gather(chunk_at)


def _all_to_all(send, mesh):
    """``send`` ``(CP, ...)``: row ``j`` goes to process ``j`` of the sequence axis; returns
    the rows received, row ``i`` from process ``i``."""
    if mesh.context_size == 1:
        return send
    send = send.contiguous()  # (empty_like keeps a permuted view's strides)
    order = mesh.context_group_order  # group rank -> position along the axis
    identity = order == sorted(order)
    if not identity:
        send = send[torch.as_tensor(order, device=send.device)]
    recv = torch.empty_like(send)
    dist.all_to_all_single(recv, send, group=mesh.context_group)
    if not identity:
        back = sorted(range(len(order)), key=order.__getitem__)
        recv = recv[torch.as_tensor(back, device=recv.device)]
    return recv


def _local_forward(q, k, v, q_ids, k_ids, config, size, plan):
    out = torch.zeros(q.shape[:-1] + (v.shape[-1],), dtype=blk.F32, device=q.device)
    lse = torch.full(q.shape[:-1], float("-inf"), dtype=blk.F32, device=q.device)
    parts = [slice(i * size, (i + 1) * size) for i in range(len(plan))]
    q_ranges = [blk.id_range(q_ids[:, s]) for s in parts]
    k_ranges = [blk.id_range(k_ids[:, s]) for s in parts]
    for i, row in enumerate(plan):
        si = parts[i]
        for j, offset in row:
            if not blk.meet(q_ranges[i], k_ranges[j]):
                continue
            sj = parts[j]
            o, lse_b = blk.block_forward(
                q[:, si], k[:, sj], v[:, sj], q_ids[:, si], k_ids[:, sj], offset,
                config.window, config.scale,
            )  # fmt: skip
            out[:, si], lse[:, si] = blk.merge(out[:, si], lse[:, si], o, lse_b)
    return out, lse


def _local_backward(q, k, v, q_ids, k_ids, do, lse, delta, config, size, plan):
    dq = torch.zeros(q.shape, dtype=blk.F32, device=q.device)
    dk = torch.zeros(k.shape, dtype=blk.F32, device=q.device)
    dv = torch.zeros(v.shape, dtype=blk.F32, device=q.device)
    parts = [slice(i * size, (i + 1) * size) for i in range(len(plan))]
    q_ranges = [blk.id_range(q_ids[:, s]) for s in parts]
    k_ranges = [blk.id_range(k_ids[:, s]) for s in parts]
    for i, row in enumerate(plan):
        si = parts[i]
        for j, offset in row:
            if not blk.meet(q_ranges[i], k_ranges[j]):
                continue
            sj = parts[j]
            gq, gk, gv = blk.block_backward(
                q[:, si], k[:, sj], v[:, sj], q_ids[:, si], k_ids[:, sj], offset,
                config.window, config.scale, do[:, si], lse[:, si], delta[:, si],
            )  # fmt: skip
            dq[:, si] += gq
            dk[:, sj] += gk
            dv[:, sj] += gv
    return dq, dk, dv


def _seq_to_heads(per_head, per_token, mesh):
    """Sequence shards -> head shards of the whole sequence, in one all-to-all.

    ``per_head``: ``(B, L, heads, W)`` tensors (any dtypes) split by heads over the processes;
    ``per_token``: ``(B, L)`` tensors (ids) every process gets whole. All travel as bytes, one
    message per peer. Returns ``(B, S, heads / CP, W)`` and ``(B, S)`` tensors in layout order.
    """
    cp = mesh.context_size
    b, length, heads = per_head[0].shape[:3]
    hp = heads // cp
    layout = [((b, length, hp, x.shape[-1]), x.dtype) for x in per_head]
    layout += [(tuple(x.shape), x.dtype) for x in per_token]
    send = torch.stack(
        [
            blk.pack([x[:, :, j * hp : (j + 1) * hp] for x in per_head] + list(per_token))
            for j in range(cp)
        ]
    )
    recv = _all_to_all(send, mesh)  # row i: sequence shard i
    pieces = [blk.unpack(recv[i], layout) for i in range(cp)]
    return [torch.cat([p[n] for p in pieces], dim=1) for n in range(len(layout))]


def _heads_to_seq(x, mesh):
    """Head shard of the whole sequence ``(B, S, heads / CP, W)`` (layout order) -> this
    process's sequence shard ``(B, L, heads, W)``."""
    cp = mesh.context_size
    b, seq, hp, width = x.shape
    send = x.reshape(b, cp, seq // cp, hp, width).permute(1, 0, 2, 3, 4)
    recv = _all_to_all(send, mesh)  # row j: this shard of the sequence for process j's heads
    # contiguous: with one head per process the reshape is a strided view of the receive
    # buffer, and the output saved for the backward pass would keep that buffer alive.
    return recv.permute(1, 2, 0, 3, 4).reshape(b, seq // cp, cp * hp, width).contiguous()


class _AllToAllAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, q_ids, k_ids, config):
        mesh, repl = config.mesh, config.replication
        cp = mesh.context_size
        b, length, hk, g, d = q.shape
        dv = v.shape[-1]
        if repl > 1:
            k, v = k.repeat_interleave(repl, dim=2), v.repeat_interleave(repl, dim=2)
        heads, group = hk * repl, g // repl
        hp, seq = heads // cp, cp * length
        to_natural, to_layout = _orders(cp, config.load_balance, seq, q.device)
        qh, kh, vh, qid, kid = (
            x.index_select(1, to_natural)
            for x in _seq_to_heads(
                [q.reshape(b, length, heads, group * d), k, v], [q_ids, k_ids], mesh
            )
        )
        size, plan = _local_plan(config.causal, config.window, seq, 2 * block_split(seq // 2))
        qh = qh.reshape(b, seq, hp, group, d)
        out_h, lse_h = _local_forward(qh, kh, vh, qid, kid, config, size, plan)
        flat = out_h.to(q.dtype).reshape(b, seq, hp, group * dv).index_select(1, to_layout)
        del out_h
        out = _heads_to_seq(flat, mesh).reshape(b, length, hk, g, dv)
        # The backward pass needs sum(dout * out) per query head: computed from this sequence
        # shard of the output and sent with the output gradient, so the head shard of the
        # output need not be kept.
        ctx.save_for_backward(qh, kh, vh, qid, kid, lse_h, out)
        ctx.config, ctx.shape, ctx.dtypes = config, (b, length, hk, g, d, dv), (k.dtype, v.dtype)
        return out

    @staticmethod
    def backward(ctx, dout):
        qh, kh, vh, qid, kid, lse_h, out = ctx.saved_tensors
        config = ctx.config
        mesh, repl = config.mesh, config.replication
        cp = mesh.context_size
        b, length, hk, g, d, dv = ctx.shape
        heads, group = hk * repl, g // repl
        hp, seq = heads // cp, cp * length
        to_natural, to_layout = _orders(cp, config.load_balance, seq, dout.device)
        delta = torch.sum(dout.to(blk.F32) * out.to(blk.F32), dim=-1)  # (B, L, Hk, G)
        dout_h, delta_h = (
            x.index_select(1, to_natural)
            for x in _seq_to_heads(
                [dout.to(qh.dtype).reshape(b, length, heads, group * dv),
                 delta.reshape(b, length, heads, group)],
                [], mesh,
            )
        )  # fmt: skip
        dout_h = dout_h.reshape(b, seq, hp, group, dv)
        size, plan = _local_plan(config.causal, config.window, seq, 2 * block_split(seq // 2))
        dq, dk, dvv = _local_backward(
            qh, kh, vh, qid, kid, dout_h, lse_h, delta_h, config, size, plan
        )
        # Copies of a key/value head live on different processes: their gradients are summed
        # after the all-to-all, in float32.
        dtype = qh.dtype if repl == 1 else blk.F32
        flat = torch.cat([dq.reshape(b, seq, hp, group * d), dk, dvv], dim=-1).to(dtype)
        grads = _heads_to_seq(flat.index_select(1, to_layout), mesh)
        dq = grads[..., : group * d].reshape(b, length, hk, g, d)
        dk = grads[..., group * d : group * d + d]
        dvv = grads[..., group * d + d :]
        if repl > 1:
            dk = dk.reshape(b, length, hk, repl, d).sum(3)
            dvv = dvv.reshape(b, length, hk, repl, dv).sum(3)
        k_dtype, v_dtype = ctx.dtypes
        return dq.to(qh.dtype), dk.to(k_dtype), dvv.to(v_dtype), None, None, None


def all_to_all_attention(
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
    kv_replication=1,
):
    """All-to-all attention over the processes of ``mesh``'s sequence axis.

    Arguments as :func:`kzoo.backends.torch.cp_ring.ring_attention`; ``kv_replication`` copies
    each key/value head that many times so that the heads divide by CP
    (``kzoo.ops.ring_attention.kv_replication``).
    """
    del sequence_axis, batch_axis
    q, q_ids, k_ids, default_scale = prepare(query, key, value, key_mask, segment_ids, mesh, causal)
    cp = mesh.context_size
    b, tq, h, _ = query.shape
    hk = key.shape[2]
    if (hk * kv_replication) % cp or (h // hk) % kv_replication:
        raise ValueError(
            f"all-to-all needs the key/value heads ({hk}) times kv_replication "
            f"({kv_replication}) to divide by CP = {cp}."
        )
    if query.device.type == "meta":
        return torch.empty((b, tq, h, value.shape[-1]), dtype=query.dtype, device="meta")
    # One all-to-all carries query, key and value, so they share the query's dtype.
    key, value = key.to(query.dtype), value.to(query.dtype)
    config = AllToAllConfig(
        mesh=mesh,
        causal=bool(causal),
        load_balance=load_balance,
        window=None if window_size is None else int(window_size),
        scale=default_scale if scale is None else float(scale),
        replication=int(kv_replication),
    )
    out = _AllToAllAttention.apply(q.contiguous(), key.contiguous(), value.contiguous(), q_ids,
                                   k_ids, config)  # fmt: skip
    return out.reshape(b, tq, h, value.shape[-1])
