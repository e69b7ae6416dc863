"""The context-parallel schedule: which device computes which block of the attention, when.

Plain Python and numpy, shared by every backend's implementation (``kzoo/backends/jax/``),
by ``kzoo.distribution.packing`` (which balances packed documents with the same skip rule),
the tests and ``scripts/bench/cp.py``, so the per-device work the benchmark reports is the
work the ring does. ``kzoo.ops.ring_attention`` re-exports these names.

Each device's local sequence is two chunk slots (front, back). With
``load_balance="zigzag"`` the sequence is cut into ``2 * CP`` chunks and device ``r`` holds
chunks ``r`` and ``2 * CP - 1 - r``; with ``"contiguous"`` chunks ``2r`` and ``2r + 1``. At
ring step ``i`` device ``r`` holds the keys of device ``(r - i) mod CP``.
"""

import functools

import numpy as np

# What one device computes at one ring step: which (query slot, key slot) pairs.
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

# Scores are computed in blocks of at most this many query and key tokens: a block's scores
# (its square, per head, in float32) are what attention holds in memory at a time. The ring
# splits each chunk pair into such blocks; all-to-all splits the whole sequence.
ATTENTION_BLOCK = 2048


def step_case(step, rank, causal, load_balance="zigzag"):
    """Which case (``FULL``, ``DIAGONAL``, ...) device ``rank`` computes at ring ``step``.

    At step ``i`` device ``r`` holds the keys of device ``(r - i) mod CP``. ``rank`` may be a
    traced integer; ``step`` is a Python int.
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


def window_reaches(chunk_offset, chunk, window_size):
    """Whether a query chunk ``chunk_offset`` chunks after a key chunk sees any of its keys.

    Chunks hold ``chunk`` tokens; a query sees keys at distances ``0 .. window_size - 1``. The
    closest (query, key) pair of the two chunks is ``(chunk_offset - 1) * chunk + 1`` apart.
    """
    if window_size is None:
        return True
    return chunk_offset <= 0 or (chunk_offset - 1) * chunk + 1 <= window_size - 1


def window_covers(chunk_offset, chunk, window_size):
    """Whether every query of the later chunk sees every key of the earlier one."""
    if window_size is None:
        return True
    return (chunk_offset + 1) * chunk - 1 <= window_size - 1


def step_pairs(step, rank, num_shards, causal, load_balance="zigzag", window_size=None, chunk=1):
    """The (query slot, key slot) pairs device ``rank`` computes at ring ``step``.

    The causal case (``step_case``) decides which pairs can see each other at all; a sliding
    window then drops the pairs whose closest tokens are ``window_size`` or more apart (the
    window always implies ``causal``). ``chunk`` is the number of tokens per slot.
    """
    pairs = CASE_PAIRS[int(step_case(step, rank, causal, load_balance))]
    if window_size is None:
        return pairs
    own = chunk_ids(rank, num_shards, load_balance)
    theirs = chunk_ids((rank - step) % num_shards, num_shards, load_balance)
    return tuple(p for p in pairs if window_reaches(own[p[0]] - theirs[p[1]], chunk, window_size))


def ring_steps(num_shards, causal, load_balance="zigzag", window_size=None, chunk=1):
    """The ring steps at which some device computes something (step 0 always).

    Without a window every step is needed (``CP - 1`` blocks are sent). With a window, a step
    that no device's queries can reach is skipped and its block is never sent: with the zigzag
    layout a window of ``w`` tokens over chunks of ``c`` tokens needs the blocks of the
    ``D = ceil((w - 1) / c)`` devices on either side, ``min(CP - 1, 2 * D)`` blocks in all.
    """
    return [
        s
        for s in range(num_shards)
        if s == 0
        or any(
            step_pairs(s, r, num_shards, causal, load_balance, window_size, chunk)
            for r in range(num_shards)
        )
    ]


def computed_chunk_pairs(
    rank, num_shards, causal, load_balance="zigzag", window_size=None, chunk=1
):
    """Every (query chunk, key chunk) pair device ``rank`` computes, over all ring steps."""
    pairs = []
    own = chunk_ids(rank, num_shards, load_balance)
    for step in range(num_shards):
        source = (rank - step) % num_shards
        theirs = chunk_ids(source, num_shards, load_balance)
        for qs, ks in step_pairs(step, rank, num_shards, causal, load_balance, window_size, chunk):
            pairs.append((own[qs], theirs[ks]))
    return pairs


def per_device_work(num_shards, causal, load_balance="zigzag", window_size=None, chunk=1):
    """Chunk-pair blocks (each ``S/(2CP)`` by ``S/(2CP)`` scores) computed by every device."""
    return [
        len(computed_chunk_pairs(r, num_shards, causal, load_balance, window_size, chunk))
        for r in range(num_shards)
    ]


def block_split(length, block=None):
    """Into how many equal blocks (a power of two) ``length`` tokens are cut, so that each
    holds at most ``block`` tokens (``ATTENTION_BLOCK``; as far as halving divides ``length``)."""
    block = ATTENTION_BLOCK if block is None else block
    parts = 1
    while length // parts > block and length % (2 * parts) == 0:
        parts *= 2
    return parts


def block_reaches(offset, q_len, k_len, causal, window_size):
    """Whether a block of ``q_len`` queries whose first query is ``offset`` positions after its
    first key (of ``k_len`` keys) holds any pair a causal / windowed mask lets through."""
    if not causal:
        return True
    if offset + q_len - 1 < 0:
        return False
    return window_size is None or offset - (k_len - 1) <= window_size - 1


def segment_ranges(segment_ids, num_chunks):
    """Per chunk, the ``(lowest, highest)`` document id (> 0) of each batch row.

    ``segment_ids`` is ``(batch, seq)`` numpy; returns two ``(batch, num_chunks)`` arrays. A
    chunk of padding only has the empty range ``(big, -1)``.
    """
    ids = np.asarray(segment_ids, np.int64).reshape(len(segment_ids), num_chunks, -1)
    real = ids > 0
    low = np.where(real, ids, np.iinfo(np.int64).max).min(-1)
    high = np.where(real, ids, -1).max(-1)
    return low, high


def blocks_meet(q_range, k_range):
    """Whether a query block and a key block share a document in any batch row.

    This is the test the JAX code runs (``lax.cond``) before computing a block: ids are
    compared by range, so it never skips a block two tokens of one document meet in, and with
    ids increasing along the sequence (as ``pack_documents`` numbers them) it skips every block
    they do not. Padding (id 0) and masked keys are in no range.
    """
    (q_low, q_high), (k_low, k_high) = q_range, k_range
    return np.any((q_low <= k_high) & (k_low <= q_high), axis=0)


def ring_blocks(num_shards, seq_len, causal=True, load_balance="zigzag", window_size=None):
    """Every block the ring may compute: ``(device, query block, key block, blocks per chunk)``.

    The sequence (layout order) is cut into ``2 * CP * m`` blocks of ``S / (2 CP m)`` tokens,
    ``m = block_split(S / (2 CP))``; the arrays list, for each device, the (query, key) block
    indices of the chunk pairs its schedule computes (``step_pairs``) whose positions the
    causal / window mask lets through. The JAX ring computes exactly these, each under a
    ``lax.cond`` on the documents (``blocks_meet``).
    """
    chunk = seq_len // (2 * num_shards)
    m = block_split(chunk)
    return _ring_blocks(num_shards, chunk, m, causal, load_balance, window_size)


@functools.cache
def _ring_blocks(num_shards, chunk, m, causal, load_balance, window_size):
    size = chunk // m
    device, query, key = [], [], []
    for rank in range(num_shards):
        own = chunk_ids(rank, num_shards, load_balance)
        for step in range(num_shards):
            source = (rank - step) % num_shards
            theirs = chunk_ids(source, num_shards, load_balance)
            pairs = step_pairs(step, rank, num_shards, causal, load_balance, window_size, chunk)
            for qs, ks in pairs:
                for a in range(m):
                    for b in range(m):
                        offset = (own[qs] - theirs[ks]) * chunk + (a - b) * size
                        if block_reaches(offset, size, size, causal, window_size):
                            device.append(rank)
                            query.append((2 * rank + qs) * m + a)
                            key.append((2 * source + ks) * m + b)
    return tuple(np.array(x, np.int64) for x in (device, query, key)) + (m,)


def packed_device_work(
    segment_ids, num_shards, causal=True, load_balance="zigzag", window_size=None
):
    """Work each device of the ring does for packed documents, in chunk-pair blocks.

    ``segment_ids`` is a ``(batch, seq)`` numpy array in layout order, the batch one device
    holds. A block is computed when the schedule needs it (``ring_blocks``) and a document
    meets in it (``blocks_meet``), exactly as the JAX ring decides; blocks smaller than a chunk
    pair (long chunks are split into ``ATTENTION_BLOCK``-token blocks) count as their share.
    """
    segment_ids = np.asarray(segment_ids)
    device, query, key, m = ring_blocks(
        num_shards, segment_ids.shape[1], causal, load_balance, window_size
    )
    low, high = segment_ranges(segment_ids, 2 * num_shards * m)
    meet = blocks_meet((low[:, query], high[:, query]), (low[:, key], high[:, key]))
    work = np.bincount(device[meet], minlength=num_shards) / m**2
    return [float(w) if m > 1 else int(w) for w in work]


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
