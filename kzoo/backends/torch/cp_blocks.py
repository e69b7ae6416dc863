"""What torch's two context-parallel strategies share: one attention block (scores, masks,
forward and backward, the float32 log-sum-exp merge), the ids of queries and keys, the test
that skips blocks no document spans, and byte packing for the collectives.

The numerics are those of JAX's ``kzoo/backends/jax/attention_blocks.py``: scores and the
softmax in float32, probabilities cast to the value dtype before they multiply the values,
partial results merged with ``out += exp(lse_b - lse') * (out_b - out)``,
``lse' = logaddexp(lse, lse_b)``, and a block's scores recomputed in the backward pass from the
final log-sum-exp rather than stored. A query that sees no key has ``lse = -inf`` and outputs
zeros (with zero gradients).

Shapes: queries ``(B, Lq, Hk, G, D)`` (``G`` query heads per key/value head), keys
``(B, Lk, Hk, D)``, values ``(B, Lk, Hk, Dv)``, ids ``(B, L)`` int32; a masked key has id -1,
which matches no query id.
"""

import torch

F32 = torch.float32


def key_ids(segment_ids, key_mask, b, tq, tk, device):
    """Query ids and key ids; a key that may not be attended to gets id -1 (matches nothing).

    Without documents every query has id 1 and every unmasked key id 1; with documents the
    ids are the documents', and padding (id 0) queries match no key.
    """
    if segment_ids is None:
        q_ids = torch.ones((b, tq), dtype=torch.int32, device=device)
        k_ids = torch.ones((b, tk), dtype=torch.int32, device=device)
    else:
        q_ids = torch.as_tensor(segment_ids, device=device).to(torch.int32)
        k_ids = torch.where(q_ids > 0, q_ids, torch.full_like(q_ids, -1))
    if key_mask is not None:
        keep = torch.as_tensor(key_mask, device=device).to(torch.bool)
        k_ids = torch.where(keep, k_ids, torch.full_like(k_ids, -1))
    return q_ids.contiguous(), k_ids.contiguous()


def mask_offset(offset, q_len, k_len, causal, window):
    """``offset`` when a causal/window mask is needed inside the block, else ``None``.

    ``offset`` is the position of the block's first query minus that of its first key; the
    block needs no mask when every (query, key) distance is in ``0 .. window - 1``.
    """
    if not causal:
        return None
    lowest, highest = offset - (k_len - 1), offset + (q_len - 1)
    if lowest >= 0 and (window is None or highest <= window - 1):
        return None
    return offset


def _valid(q_ids, k_ids, offset, window):
    """(B, 1, 1, Lq, Lk) booleans: same document, causal and in the window."""
    valid = q_ids[:, :, None] == k_ids[:, None, :]
    if offset is not None:
        rows = torch.arange(q_ids.shape[1], device=q_ids.device)[:, None]
        cols = torch.arange(k_ids.shape[1], device=q_ids.device)[None, :]
        distance = offset + rows - cols
        ok = distance >= 0
        if window is not None:
            ok = ok & (distance < window)
        valid = valid & ok[None]
    return valid[:, None, None]


def _scores(q, k, scale):
    # (B, Lq, Hk, G, D) x (B, Lk, Hk, D) -> (B, Hk, G, Lq, Lk) in float32.
    return torch.einsum("bqhgd,bkhd->bhgqk", q.to(F32), k.to(F32)) * scale


def _as_value_dtype(p, dtype):
    """Probabilities rounded to the value dtype, as a flash kernel multiplies them, in float32."""
    return p if dtype == F32 else p.to(dtype).to(F32)


def block_forward(q, k, v, q_ids, k_ids, offset, window, scale):
    """Attention of one query block against one key block: ``(out, lse)`` in float32,
    ``out`` ``(B, Lq, Hk, G, Dv)`` and ``lse`` ``(B, Lq, Hk, G)``."""
    valid = _valid(q_ids, k_ids, offset, window)
    s = _scores(q, k, scale).masked_fill(~valid, float("-inf"))
    m = torch.amax(s, dim=-1, keepdim=True)
    m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
    p = torch.exp(s - m)
    del s
    den = p.sum(-1)  # (B, Hk, G, Lq)
    out = torch.einsum("bhgqk,bkhd->bqhgd", _as_value_dtype(p, v.dtype), v.to(F32))
    del p
    den_t = den.permute(0, 3, 1, 2)  # (B, Lq, Hk, G)
    safe = torch.where(den_t > 0, den_t, torch.ones_like(den_t))
    out = out / safe[..., None]
    m_t = m[..., 0].permute(0, 3, 1, 2)
    lse = torch.where(den_t > 0, m_t + torch.log(safe), torch.full_like(den_t, float("-inf")))
    return out, lse


def merge(out, lse, out_b, lse_b):
    """Merge a block's ``(out_b, lse_b)`` into the running ``(out, lse)``; returns both."""
    new_lse = torch.logaddexp(lse, lse_b)
    finite = torch.isfinite(new_lse)
    weight = torch.where(
        finite, torch.exp(lse_b - torch.where(finite, new_lse, 0.0)), torch.zeros_like(new_lse)
    )
    return out + weight[..., None] * (out_b - out), new_lse


def block_backward(q, k, v, q_ids, k_ids, offset, window, scale, do, lse, delta):
    """Gradient contributions ``(dq, dk, dv)`` (float32) of one block given the final lse.

    ``do`` is the output gradient of the block's queries ``(B, Lq, Hk, G, Dv)``, ``lse`` and
    ``delta = sum(do * out, -1)`` are ``(B, Lq, Hk, G)``.
    """
    valid = _valid(q_ids, k_ids, offset, window)
    lse_t = torch.where(torch.isfinite(lse), lse, torch.zeros_like(lse))
    lse_t = lse_t.permute(0, 2, 3, 1)[..., None]  # (B, Hk, G, Lq, 1)
    p = torch.exp(_scores(q, k, scale) - lse_t)
    p = torch.where(valid, p, torch.zeros_like(p))
    do32 = do.to(F32)
    dv = torch.einsum("bhgqk,bqhgd->bkhd", _as_value_dtype(p, do.dtype), do32)
    dp = torch.einsum("bqhgd,bkhd->bhgqk", do32, v.to(F32))
    ds = p * (dp - delta.permute(0, 2, 3, 1)[..., None])
    del p, dp
    dq = torch.einsum("bhgqk,bkhd->bqhgd", _as_value_dtype(ds, k.dtype), k.to(F32))
    dk = torch.einsum("bhgqk,bqhgd->bkhd", _as_value_dtype(ds, q.dtype), q.to(F32))
    return dq * scale, dk * scale, dv


def id_range(ids):
    """Lowest and highest document id (> 0) of each batch row: two ``(B,)`` tensors."""
    real = ids > 0
    big = torch.iinfo(torch.int32).max
    low = torch.where(real, ids, torch.full_like(ids, big)).amin(1)
    high = torch.where(real, ids, torch.full_like(ids, -1)).amax(1)
    return low, high


def meet(q_range, k_range):
    """Whether some document has queries in one block and keys in the other (any batch row):
    ``kzoo.backends.common.ring_schedule.blocks_meet``'s test, on this process's blocks."""
    (q_low, q_high), (k_low, k_high) = q_range, k_range
    return bool(torch.any((q_low <= k_high) & (k_low <= q_high)))


# ---------------------------------------------------------------------------------------------
# Byte packing: a key/value block and its ids travel as one uint8 tensor, so every exchange is
# one message per peer and no id is rounded on the way.


def pack(tensors):
    """One flat uint8 tensor holding ``tensors`` (any dtypes) back to back."""
    return torch.cat([t.contiguous().reshape(-1).view(torch.uint8) for t in tensors])


def unpack(packed, like):
    """Inverse of ``pack``: tensors shaped and typed like ``like`` (tensors or (shape, dtype))."""
    out, start = [], 0
    for item in like:
        shape, dtype = (item.shape, item.dtype) if isinstance(item, torch.Tensor) else item
        count = 1
        for n in shape:
            count *= int(n)
        size = count * torch.empty((), dtype=dtype).element_size()
        out.append(packed[start : start + size].view(dtype).reshape(shape))
        start += size
    return out
