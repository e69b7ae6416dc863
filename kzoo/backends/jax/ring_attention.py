"""Ring attention for JAX: ``shard_map`` over the sequence axis, ``ppermute`` round the ring.

Every device keeps its query chunk and its output; key/value chunks (with their key padding
mask, packed into one array so each step is one collective-permute) travel to the next device
on the ring. Partial results are merged in float32 with their log-sum-exp:
``out += sigmoid(lse_b - lse) * (out_b - out)``, ``lse = logaddexp(lse, lse_b)``.

* The send of the next block is issued before the current block is computed, so the transfer
  can overlap the compute (the steps are unrolled: ``CP - 1`` sends in the forward pass).
* Causal masking uses the schedule of ``kzoo.ops.ring_attention.step_case``: with the zigzag
  layout every off-diagonal step computes exactly half a block on every device; fully masked
  blocks are never computed (``lax.switch`` runs one branch).
* The backward pass is a ``custom_vjp``: it stores only the local query, key, value, output
  and log-sum-exp (O(S/CP) per device), then runs the ring again, sending the key/value blocks
  ahead of the compute and the dK/dV accumulators after it; one last send brings each
  device's dK/dV home (``2 * CP - 1`` sends). Plain autodiff through the loop would keep every
  remote key/value block alive.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.sharding import PartitionSpec as P

from kzoo.ops.ring_attention import (
    FULL,
    KV_FRONT,
    Q_BACK,
    SKIP,
    step_case,
    validate_ring_shapes,
)

F32 = jnp.float32


def _scores(q, k, scale):
    # q (B, Lq, Hk, G, D), k (B, Lk, Hk, D) -> (B, Hk, G, Lq, Lk) in float32.
    return jnp.einsum("bqhgd,bkhd->bhgqk", q, k, preferred_element_type=F32) * scale


def _valid(kmask, tril):
    valid = kmask[:, None, None, None, :]
    if tril is not None:
        valid = valid & tril
    return valid


def _block_forward(q, k, v, kmask, scale, tril=None):
    """Attention of q against one key block: (out float32, lse float32 (B, Lq, Hk, G))."""
    valid = _valid(kmask, tril)
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


def _block_backward(q, k, v, kmask, do, lse, delta, scale, tril=None):
    """Gradient contributions (dq, dk, dv, float32) of one block given the final lse."""
    valid = _valid(kmask, tril)
    lse_t = jnp.moveaxis(jnp.where(jnp.isfinite(lse), lse, 0.0), 1, -1)[..., None]
    p = jnp.where(valid, jnp.exp(_scores(q, k, scale) - lse_t), 0.0)
    dv = jnp.einsum("bhgqk,bqhgd->bkhd", p.astype(do.dtype), do, preferred_element_type=F32)
    dp = jnp.einsum("bqhgd,bkhd->bhgqk", do, v, preferred_element_type=F32)
    ds = p * (dp - jnp.moveaxis(delta, 1, -1)[..., None])
    dq = jnp.einsum("bhgqk,bkhd->bqhgd", ds.astype(k.dtype), k, preferred_element_type=F32)
    dk = jnp.einsum("bhgqk,bqhgd->bkhd", ds.astype(q.dtype), q, preferred_element_type=F32)
    return dq * scale, dk * scale, dv


def _tril(n):
    return jnp.asarray(np.tril(np.ones((n, n), bool)))


def _back_row_mask(c):
    # The back query chunk sees all of the front key chunk and causally the back one.
    return jnp.asarray(np.concatenate([np.ones((c, c), bool), np.tril(np.ones((c, c), bool))], 1))


def _forward_case(case, q, k, v, m, out, lse, scale):
    """Merge what ``case`` computes of block (k, v, m) into the running (out, lse)."""
    c = q.shape[1] // 2
    if case == SKIP:
        return out, lse
    if case == FULL:
        return _merge(out, lse, *_block_forward(q, k, v, m, scale))
    if case == KV_FRONT:
        return _merge(out, lse, *_block_forward(q, k[:, :c], v[:, :c], m[:, :c], scale))
    if case == Q_BACK:
        ob, lb = _merge(out[:, c:], lse[:, c:], *_block_forward(q[:, c:], k, v, m, scale))
        return out.at[:, c:].set(ob), lse.at[:, c:].set(lb)
    # DIAGONAL: front queries see the front keys causally; back queries see all, causally.
    front = _block_forward(q[:, :c], k[:, :c], v[:, :c], m[:, :c], scale, _tril(c))
    back = _block_forward(q[:, c:], k, v, m, scale, _back_row_mask(c))
    of, lf = _merge(out[:, :c], lse[:, :c], *front)
    ob, lb = _merge(out[:, c:], lse[:, c:], *back)
    return jnp.concatenate([of, ob], 1), jnp.concatenate([lf, lb], 1)


def _backward_case(case, q, k, v, m, do, lse, delta, scale):
    """(dq, dk, dv) float32 contributions of what ``case`` computes of block (k, v, m)."""
    c = q.shape[1] // 2
    ck = k.shape[1] // 2
    zq = jnp.zeros(q.shape, F32)
    zk = jnp.zeros(k.shape, F32)
    zv = jnp.zeros(v.shape, F32)
    if case == SKIP:
        return zq, zk, zv
    if case == FULL:
        return _block_backward(q, k, v, m, do, lse, delta, scale)
    if case == KV_FRONT:
        dq, dk, dv = _block_backward(q, k[:, :ck], v[:, :ck], m[:, :ck], do, lse, delta, scale)
        return dq, zk.at[:, :ck].set(dk), zv.at[:, :ck].set(dv)
    if case == Q_BACK:
        dq, dk, dv = _block_backward(q[:, c:], k, v, m, do[:, c:], lse[:, c:], delta[:, c:], scale)
        return zq.at[:, c:].set(dq), dk, dv
    dqf, dkf, dvf = _block_backward(
        q[:, :c], k[:, :c], v[:, :c], m[:, :c], do[:, :c], lse[:, :c], delta[:, :c], scale,
        _tril(c),
    )  # fmt: skip
    dqb, dkb, dvb = _block_backward(
        q[:, c:], k, v, m, do[:, c:], lse[:, c:], delta[:, c:], scale, _back_row_mask(c)
    )
    dq = jnp.concatenate([dqf, dqb], 1)
    return dq, dkb.at[:, :c].add(dkf), dvb.at[:, :c].add(dvf)


def _cases_at(step, num_shards, causal, load_balance):
    """The cases any device can meet at ``step`` (one, or two chosen by the device's rank)."""
    return sorted({int(step_case(step, r, causal, load_balance)) for r in range(num_shards)})


def _run_case(step, rank, cases, causal, load_balance, fn, *operands):
    if len(cases) == 1:
        return fn(cases[0], *operands)
    case = step_case(step, rank, causal, load_balance)
    index = sum((case == c_) * i for i, c_ in enumerate(cases))
    branches = [functools.partial(fn, c_) for c_ in cases]
    return lax.switch(index, branches, *operands)


def _pack(k, v, m):
    flag = jnp.broadcast_to(m[:, :, None, None], k.shape[:3] + (1,)).astype(k.dtype)
    return jnp.concatenate([k, v.astype(k.dtype), flag], axis=-1)


def _unpack(kv, d, dv, v_dtype):
    return kv[..., :d], kv[..., d : d + dv].astype(v_dtype), kv[:, :, 0, -1] > 0.5


@functools.cache
def _make_ring(num_shards, axis, causal, load_balance, scale):
    ring = [(j, (j + 1) % num_shards) for j in range(num_shards)]

    def forward(q, k, v, m):
        rank = lax.axis_index(axis)
        d, dv = k.shape[-1], v.shape[-1]
        out = jnp.zeros(q.shape[:-1] + (dv,), F32)
        lse = jnp.full(q.shape[:-1], -jnp.inf, F32)
        kv = _pack(k, v, m)
        for step in range(num_shards):
            if step < num_shards - 1:
                # Issued before this step's compute so the transfer overlaps it.
                next_kv = lax.ppermute(kv, axis, ring)
            kb, vb, mb = (k, v, m) if step == 0 else _unpack(kv, d, dv, v.dtype)
            cases = _cases_at(step, num_shards, causal, load_balance)

            def compute(case, out, lse, kb=kb, vb=vb, mb=mb):
                return _forward_case(case, q, kb, vb, mb, out, lse, scale)

            out, lse = _run_case(step, rank, cases, causal, load_balance, compute, out, lse)
            if step < num_shards - 1:
                kv = next_kv
        return out.astype(q.dtype), lse

    @jax.custom_vjp
    def attend(q, k, v, m):
        return forward(q, k, v, m)[0]

    def attend_fwd(q, k, v, m):
        out, lse = forward(q, k, v, m)
        return out, (q, k, v, m, out, lse)

    def attend_bwd(res, dout):
        q, k, v, m, out, lse = res
        rank = lax.axis_index(axis)
        d, dv = k.shape[-1], v.shape[-1]
        do = dout.astype(q.dtype)
        delta = jnp.sum(dout.astype(F32) * out.astype(F32), axis=-1)
        dq = jnp.zeros(q.shape, F32)
        kv = _pack(k, v, m)
        carried = None
        for step in range(num_shards):
            if step < num_shards - 1:
                next_kv = lax.ppermute(kv, axis, ring)
            kb, vb, mb = (k, v, m) if step == 0 else _unpack(kv, d, dv, v.dtype)
            cases = _cases_at(step, num_shards, causal, load_balance)

            def compute(case, kb=kb, vb=vb, mb=mb):
                return _backward_case(case, q, kb, vb, mb, do, lse, delta, scale)

            dq_c, dk_c, dv_c = _run_case(step, rank, cases, causal, load_balance, compute)
            dq = dq + dq_c
            dkv = jnp.concatenate([dk_c, dv_c], axis=-1)
            if carried is not None:
                dkv = dkv + carried
            # The accumulator follows its key/value block; after the last step this send
            # brings every device's dK/dV home.
            carried = lax.ppermute(dkv, axis, ring)
            if step < num_shards - 1:
                kv = next_kv
        dk = carried[..., :d].astype(k.dtype)
        dvv = carried[..., d:].astype(v.dtype)
        return dq.astype(q.dtype), dk, dvv, None

    attend.defvjp(attend_fwd, attend_bwd)
    return attend


def ring_attention(
    query,
    key,
    value,
    key_mask=None,
    *,
    mesh,
    sequence_axis,
    batch_axis=None,
    causal=False,
    load_balance="zigzag",
    scale=None,
):
    """Ring attention over ``mesh``'s ``sequence_axis`` (arguments as ``exact_attention``).

    ``query`` is ``(batch, q_len, num_heads, head_dim)`` and ``key``/``value`` are
    ``(batch, kv_len, num_kv_heads, dim)``, global arrays whose sequence axis is in layout order
    (zigzag or contiguous, as ``load_balance`` says) and sharded over ``sequence_axis`` (and the
    batch over ``batch_axis``); inputs laid out otherwise are resharded by XLA first.
    """
    num_shards = mesh.shape[sequence_axis]
    batch_shards = mesh.shape[batch_axis] if batch_axis is not None else 1
    validate_ring_shapes(query, key, value, key_mask, causal, num_shards, batch_shards)
    b, tq, h, d = query.shape
    tk, hk = key.shape[1], key.shape[2]
    scale = float(scale if scale is not None else 1.0 / np.sqrt(d))
    if key_mask is None:
        key_mask = jnp.ones((b, tk), bool)
    key_mask = jnp.asarray(key_mask).astype(bool)
    q = jnp.reshape(query, (b, tq, hk, h // hk, d))
    attend = _make_ring(num_shards, sequence_axis, bool(causal), load_balance, scale)
    spec5 = P(batch_axis, sequence_axis, None, None, None)
    spec4 = P(batch_axis, sequence_axis, None, None)
    out = jax.shard_map(
        attend,
        mesh=mesh,
        in_specs=(spec5, spec4, spec4, P(batch_axis, sequence_axis)),
        out_specs=spec5,
        check_vma=False,
    )(q, key, value.astype(key.dtype) if value.dtype != key.dtype else value, key_mask)
    return jnp.reshape(out, (b, tq, h, value.shape[-1]))
