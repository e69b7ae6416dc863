"""Attention over a sequence that may be sharded across devices (context parallelism).

``ring_attention`` is the entry point the layers call. When the active keras distribution is a
:class:`kzoo.distribution.ContextParallel` whose sequence axis has more than one device, and the
backend has a ring implementation (the dispatch op ``context_parallel_ring``: JAX, in
``kzoo.backends.jax.ring_attention``), each device keeps
its query chunk and the key/value chunks travel round a ring of devices. Otherwise the exact
attention below runs on one device. Both give the same numbers (the ring merges partial
results exactly with a log-sum-exp online softmax).

The ring's schedule - which part of which block a device computes at which step - is plain
Python here (``step_case``), shared by the JAX ring, the tests and ``scripts/bench_cp.py``, so
the per-device work the benchmark reports is the work the ring does.

Layout order. Under context parallelism with ``load_balance="zigzag"`` the sequence axis of
every tensor is in *layout order*: the sequence is cut into ``2 * CP`` chunks and device ``r``
holds chunks ``r`` and ``2 * CP - 1 - r`` (see ``kzoo.distribution.zigzag_permutation``).
Causal masks therefore compare the global positions of the slots, never slot indices.
"""

import numpy as np
from keras import ops

from kzoo.ops.shapes import positions_along

# What one device computes at one ring step. Each device's local sequence is two chunk slots
# (front, back); these name which (query slot, key slot) pairs are computed.
FULL = 0  # both query slots against both key slots, no causal mask
DIAGONAL = 1  # own keys: front-front (causal), back-front (full), back-back (causal)
KV_FRONT = 2  # both query slots against the front key slot, no mask
Q_BACK = 3  # the back query slot against both key slots, no mask
SKIP = 4  # every pair is masked: nothing is computed

CASE_PAIRS = {
    FULL: ((0, 0), (0, 1), (1, 0), (1, 1)),
    DIAGONAL: ((0, 0), (1, 0), (1, 1)),
    KV_FRONT: ((0, 0), (1, 0)),
    Q_BACK: ((1, 0), (1, 1)),
    SKIP: (),
}
LOAD_BALANCES = ("zigzag", "contiguous")

RING_OP = "context_parallel_ring"


def step_case(step, rank, causal, load_balance="zigzag"):
    """Which case (``FULL``, ``DIAGONAL``, ...) device ``rank`` computes at ring ``step``.

    At step ``i`` device ``r`` holds the keys of device ``(r - i) mod CP``. ``rank`` may be a
    traced integer (the JAX ring switches on the result); ``step`` is a Python int.
    """
    if not causal:
        return FULL
    if step == 0:
        return DIAGONAL
    # The keys come from an earlier device exactly when step <= rank.
    earlier = rank >= step
    if load_balance == "zigzag":
        # Zigzag: keys from an earlier device are all visible to both query chunks through
        # their front chunk; keys from a later device are visible to the back query chunk only.
        return Q_BACK + (KV_FRONT - Q_BACK) * earlier
    return SKIP + (FULL - SKIP) * earlier


def chunk_ids(rank, num_shards, load_balance="zigzag"):
    """The two global chunk indices (of ``2 * num_shards``) device ``rank`` holds."""
    if load_balance == "zigzag":
        return (rank, 2 * num_shards - 1 - rank)
    return (2 * rank, 2 * rank + 1)


def computed_chunk_pairs(rank, num_shards, causal, load_balance="zigzag"):
    """Every (query chunk, key chunk) pair device ``rank`` computes, over all ring steps."""
    pairs = []
    own = chunk_ids(rank, num_shards, load_balance)
    for step in range(num_shards):
        source = (rank - step) % num_shards
        theirs = chunk_ids(source, num_shards, load_balance)
        for qs, ks in CASE_PAIRS[int(step_case(step, rank, causal, load_balance))]:
            pairs.append((own[qs], theirs[ks]))
    return pairs


def per_device_work(num_shards, causal, load_balance="zigzag"):
    """Chunk-pair blocks (each ``S/(2CP)`` by ``S/(2CP)`` scores) computed by every device."""
    return [
        len(computed_chunk_pairs(r, num_shards, causal, load_balance)) for r in range(num_shards)
    ]


def active_context_parallel():
    """``(distribution, CP)`` for the active ContextParallel distribution, else ``(None, 1)``."""
    from keras import distribution as kd

    from kzoo.distribution.context_parallel import ContextParallel

    try:
        dist = kd.distribution()
    except (AttributeError, TypeError):
        return None, 1
    if not isinstance(dist, ContextParallel):
        return None, 1
    return dist, dist.context_size


def _positions(positions, like):
    if positions is None:
        return positions_along(like, 1)
    return ops.convert_to_tensor(np.asarray(positions).astype("int32"))


def exact_attention(
    query,
    key,
    value,
    key_mask=None,
    causal=False,
    scale=None,
    query_positions=None,
    key_positions=None,
):
    """Exact softmax attention on one device, with the numerics of the ring.

    Args:
        query: ``(batch, q_len, num_heads, head_dim)``.
        key: ``(batch, kv_len, num_kv_heads, head_dim)``; ``num_heads`` must be a multiple of
            ``num_kv_heads`` (grouped-query attention: query head ``h`` reads key head
            ``h // (num_heads // num_kv_heads)``).
        value: ``(batch, kv_len, num_kv_heads, value_dim)``.
        key_mask: Optional ``(batch, kv_len)`` booleans, ``True`` where a key may be attended
            to, or a ``(batch, q_len, kv_len)`` full mask.
        causal: Mask keys whose position is after the query's.
        scale: Score scale; ``1 / sqrt(head_dim)`` by default.
        query_positions, key_positions: Global positions of the sequence slots (for a sequence
            in layout order); ``arange`` by default.

    Scores and the softmax are computed in float32; probabilities are cast to the value dtype
    before they multiply the values, as a flash-attention kernel does. A query that sees no key
    outputs zeros. Returns ``(batch, q_len, num_heads, value_dim)`` in the query's dtype.
    """
    b, tq, h, d = ops.shape(query)
    hk = ops.shape(key)[2]
    g = h // hk
    scale = float(scale if scale is not None else 1.0 / np.sqrt(d))
    q = ops.reshape(ops.cast(query, "float32"), (b, tq, hk, g, d))
    k = ops.cast(key, "float32")
    scores = ops.einsum("bqhgd,bkhd->bhgqk", q, k) * scale
    valid = None
    if key_mask is not None:
        key_mask = ops.cast(key_mask, "bool")
        if len(ops.shape(key_mask)) == 2:
            valid = key_mask[:, None, None, None, :]
        else:
            valid = key_mask[:, None, None, :, :]
    if causal:
        # Positions as tensors: an exported graph's sequence length is symbolic.
        qp = _positions(query_positions, query)
        kp = _positions(key_positions, key)
        allowed = ops.greater_equal(ops.expand_dims(qp, 1), ops.expand_dims(kp, 0))
        valid = allowed if valid is None else ops.logical_and(valid, allowed)
    if valid is not None:
        valid = ops.broadcast_to(valid, ops.shape(scores))
        scores = ops.where(valid, scores, ops.full_like(scores, -3.0e38))
    probs = ops.softmax(scores, axis=-1)
    if valid is not None:
        # A query with no visible key gets zeros, not a uniform average of masked values.
        probs = ops.where(valid, probs, ops.zeros_like(probs))
    probs = ops.cast(ops.cast(probs, value.dtype), "float32")
    out = ops.einsum("bhgqk,bkhd->bqhgd", probs, ops.cast(value, "float32"))
    out = ops.reshape(out, (b, tq, h, ops.shape(value)[-1]))
    return ops.cast(out, query.dtype)


def validate_ring_shapes(query, key, value, key_mask, causal, num_shards, batch_shards):
    """Raise a ``ValueError`` naming the problem for inputs the ring cannot shard exactly."""
    if len(query.shape) != 4 or len(key.shape) != 4 or len(value.shape) != 4:
        raise ValueError(
            "ring attention expects query, key and value of rank 4 (batch, seq, heads, dim); "
            f"got shapes {tuple(query.shape)}, {tuple(key.shape)}, {tuple(value.shape)}."
        )
    b, tq, h, _ = query.shape
    _, tk, hk, _ = key.shape
    if h % hk:
        raise ValueError(f"num_heads={h} must be a multiple of num_kv_heads={hk}.")
    for name, length in (("query", tq), ("key/value", tk)):
        if length % (2 * num_shards):
            raise ValueError(
                f"Context parallelism over {num_shards} devices needs the sequence length to "
                f"divide by 2 * CP = {2 * num_shards}; the {name} sequence has length {length}. "
                "Pad the sequence (and mask the padding) to a multiple of "
                f"{2 * num_shards}."
            )
    if causal and tq != tk:
        raise ValueError(f"causal attention needs equal query and key lengths; got {tq} and {tk}.")
    if b % batch_shards:
        raise ValueError(
            f"The batch size {b} must divide by the size of the batch mesh axis ({batch_shards})."
        )
    if key_mask is not None and len(key_mask.shape) != 2:
        raise ValueError(
            "Under context parallelism the attention mask must be a (batch, kv_len) key "
            f"padding mask; got shape {tuple(key_mask.shape)}."
        )


def ring_attention(query, key, value, key_mask=None, causal=False, scale=None):
    """Attention that runs as a ring across the active ContextParallel sequence axis.

    Arguments as for :func:`exact_attention`, with every sequence axis in layout order. On one
    device (no ContextParallel distribution, a sequence axis of size 1, or a backend whose
    keras distribution API does not exist) this is :func:`exact_attention`.
    """
    from kzoo.backends import dispatch

    dist, cp = active_context_parallel()
    ring = dispatch.find(RING_OP, platform="any") if cp > 1 else None
    if dist is None or ring is None:
        positions = None
        if dist is not None:
            positions = dist.layout_positions(ops.shape(query)[1])
        return exact_attention(
            query,
            key,
            value,
            key_mask=key_mask,
            causal=causal,
            scale=scale,
            query_positions=positions,
            key_positions=positions,
        )
    return ring.load()(
        query,
        key,
        value,
        key_mask,
        mesh=dist.device_mesh.backend_mesh,
        sequence_axis=dist.sequence_axis,
        batch_axis=dist.batch_axis,
        causal=causal,
        load_balance=dist.load_balance,
        scale=scale,
    )
