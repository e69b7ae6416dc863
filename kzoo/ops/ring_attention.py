"""Attention over a sequence that may be sharded across devices (context parallelism).

``ring_attention`` is the entry point the layers call. When the active keras distribution is a
:class:`kzoo.distribution.ContextParallel` whose sequence axis has more than one device, and the
backend implements it (JAX, in ``kzoo.backends.jax``), attention runs with one of two
strategies, chosen by the distribution's ``strategy`` (:func:`choose_strategy`):

* ``"ring"`` (dispatch op ``context_parallel_ring``): each device keeps its query chunk and the
  key/value chunks travel round a ring of devices.
* ``"all_to_all"`` (op ``context_parallel_all_to_all``, "Ulysses"): one all-to-all re-shards
  query, key and value from the sequence to the heads, each device attends over the whole
  sequence for its heads, and a second all-to-all brings the output back.

Otherwise the exact attention below runs on one device. All give the same numbers (partial
results are merged exactly with a log-sum-exp online softmax).

Masks: a key padding mask, ``causal``, packed documents (``segment_ids``: a token attends only
within its own document; id 0 is padding) and a sliding window (``window_size=w``: each query
sees itself and the ``w - 1`` keys before it). The schedule - which part of which block a
device computes at which ring step, which steps a window lets the ring skip - is plain Python
here (``step_pairs``, ``ring_steps``), shared by the JAX code, the tests and
``scripts/bench_cp.py``, so the per-device work the benchmark reports is the work the ring does.

Layout order. Under context parallelism with ``load_balance="zigzag"`` the sequence axis of
every tensor is in *layout order*: the sequence is cut into ``2 * CP`` chunks and device ``r``
holds chunks ``r`` and ``2 * CP - 1 - r`` (see ``kzoo.distribution.zigzag_permutation``).
Causal and window masks therefore compare the global positions of the slots, never slot
indices.
"""

import functools
import logging

import numpy as np
from keras import backend as keras_backend
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
STRATEGIES = ("ring", "all_to_all", "auto")

RING_OP = "context_parallel_ring"
ALL_TO_ALL_OP = "context_parallel_all_to_all"
STRATEGY_OPS = {"ring": RING_OP, "all_to_all": ALL_TO_ALL_OP}

# strategy="auto" takes all-to-all only up to this many tokens per device. Below it a ring step's
# compute is too short to hide the step's key/value transfer on an H200 with NVLink:
# scripts/bench_cp.py measures the crossover from the compiled FLOPs and collective bytes of a
# ring step at 2160-2541 tokens (2 query heads per key/value head; docs/context_parallel.md),
# and this is the power of two below it. There the ring's sends are exposed and the two
# all-to-alls, which send fewer bytes, are the cheaper strategy.
AUTO_ALL_TO_ALL_MAX_TOKENS = 2048

# Scores are computed in blocks of at most this many query and key tokens: a block's scores
# (its square, per head, in float32) are what attention holds in memory at a time. The ring
# splits each chunk pair into such blocks; all-to-all splits the whole sequence.
ATTENTION_BLOCK = 2048

logger = logging.getLogger("kzoo.context_parallel")
_LOGGED_CHOICES = set()


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
    query_segment_ids=None,
    key_segment_ids=None,
    window_size=None,
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
        query_segment_ids, key_segment_ids: Optional ``(batch, q_len)`` / ``(batch, kv_len)``
            integer document ids: a query sees only keys of its own document; id 0 is padding
            (it sees nothing and nothing sees it).
        window_size: Optional sliding window (needs ``causal``): a query at position ``p``
            sees keys at positions ``p - window_size + 1 .. p``.

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

    def both(a, b_):
        return b_ if a is None else ops.logical_and(a, b_)

    if key_mask is not None:
        key_mask = ops.cast(key_mask, "bool")
        if len(ops.shape(key_mask)) == 2:
            valid = key_mask[:, None, None, None, :]
        else:
            valid = key_mask[:, None, None, :, :]
    if query_segment_ids is not None:
        q_ids = ops.cast(query_segment_ids, "int32")
        k_ids = ops.cast(key_segment_ids, "int32")
        same = ops.logical_and(
            ops.equal(q_ids[:, :, None], k_ids[:, None, :]), ops.greater(k_ids, 0)[:, None, :]
        )
        valid = both(valid, same[:, None, None, :, :])
    if causal or window_size is not None:
        # Positions as tensors: an exported graph's sequence length is symbolic.
        qp = _positions(query_positions, query)
        kp = _positions(key_positions, key)
        distance = ops.expand_dims(qp, 1) - ops.expand_dims(kp, 0)
        allowed = ops.greater_equal(distance, 0)
        if window_size is not None:
            allowed = ops.logical_and(allowed, ops.less(distance, window_size))
        valid = both(valid, allowed)
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


def validate_window_size(window_size, causal):
    """Raise a ``ValueError`` unless ``window_size`` is ``None`` or a positive int with causal."""
    if window_size is None:
        return
    if not isinstance(window_size, (int, np.integer)) or isinstance(window_size, bool):
        raise ValueError(
            "window_size must be a positive integer (the number of keys each query sees, "
            f"itself included) or None; got {window_size!r}."
        )
    if window_size < 1:
        raise ValueError(
            f"window_size must be at least 1 (each query sees itself); got {window_size}."
        )
    if not causal:
        raise ValueError(
            "window_size needs causal=True: the sliding window looks back from each query "
            f"(got window_size={window_size} with causal=False)."
        )


def validate_segment_ids(segment_ids, batch, q_len, kv_len):
    """Raise a ``ValueError`` unless ``segment_ids`` is an integer ``(batch, seq)`` array."""
    if segment_ids is None:
        return
    shape = tuple(segment_ids.shape)
    dtype = keras_backend.standardize_dtype(segment_ids.dtype)
    if "int" not in dtype:
        raise ValueError(
            "segment_ids must hold integer document ids (0 = padding); got dtype "
            f"{dtype} with shape {shape}."
        )
    if q_len is not None and kv_len is not None and q_len != kv_len:
        raise ValueError(
            "segment_ids packs documents into one sequence, so queries and keys must have the "
            f"same length; got query length {q_len} and key/value length {kv_len}."
        )

    def differ(a, b):
        return a is not None and b is not None and a != b

    if len(shape) != 2 or differ(shape[0], batch) or differ(shape[1], q_len):
        raise ValueError(
            f"segment_ids must have shape (batch, seq_len) = {(batch, q_len)}; got shape {shape}."
        )


def check_segment_layout(segment_ids):
    """Under context parallelism, refuse host segment ids that are not in layout order.

    Only concrete values can be checked: inside a traced function the ids are data.
    ``kzoo.models.CausalLM`` checks its packed inputs in ``fit``/``evaluate``/``predict``.
    """
    dist, cp = active_context_parallel()
    if dist is None or cp == 1 or segment_ids is None:
        return
    host = _concrete(segment_ids)
    if host is not None:
        from kzoo.distribution.packing import check_packed_layout

        check_packed_layout(host, distribution=dist)


def _concrete(x):
    if isinstance(x, np.ndarray):
        return x
    try:
        return np.asarray(ops.convert_to_numpy(x))
    except Exception:  # a traced value (jit, tf.function): its content is not known yet
        return None


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


def kv_replication(num_shards, num_heads, num_kv_heads):
    """How many times all-to-all copies each key/value head, or ``None`` if it cannot run.

    All-to-all splits the heads over the CP devices. With ``num_kv_heads`` divisible by CP it
    splits the key/value heads (no copy); otherwise, when ``num_heads`` divides, it repeats
    each key/value head the fewest ``r`` times (a divisor of the group size) that make
    ``num_kv_heads * r`` divide, and sums their gradients back.
    """
    group = num_heads // num_kv_heads
    for r in range(1, group + 1):
        if group % r == 0 and (num_kv_heads * r) % num_shards == 0:
            return r
    return None


def choose_strategy(strategy, num_shards, num_heads, num_kv_heads, q_len, kv_len):
    """``(strategy, kv_replication)`` for one attention call under CP = ``num_shards``.

    ``"auto"`` takes all-to-all when the key/value heads divide by CP (no copies), it sends
    fewer bytes than the ring (``num_heads + num_kv_heads <= CP * num_kv_heads``: all-to-all
    moves query, key, value and output once, the ring moves key and value ``CP - 1`` times) and
    each device holds at most ``AUTO_ALL_TO_ALL_MAX_TOKENS`` tokens; otherwise the ring. The
    choice is logged once per configuration (logger ``kzoo.context_parallel``).

    Raises:
        ValueError: for ``strategy="all_to_all"`` when neither the query nor the key/value
            heads divide by CP, or the query and key lengths differ.
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES}; got {strategy!r}.")
    per_device = q_len // num_shards
    if strategy == "ring":
        chosen, replication, reason = "ring", 1, "strategy='ring'"
    elif strategy == "all_to_all":
        if q_len != kv_len:
            raise ValueError(
                "strategy='all_to_all' re-shards queries and keys together and needs equal "
                f"query and key/value lengths; got {q_len} and {kv_len}. Use strategy='ring' "
                "(or 'auto'), which handles different lengths."
            )
        replication = kv_replication(num_shards, num_heads, num_kv_heads)
        if replication is None:
            raise ValueError(
                f"strategy='all_to_all' splits the heads over the {num_shards} context-parallel "
                f"devices and needs num_key_value_heads ({num_kv_heads}) or num_heads "
                f"({num_heads}) to divide by {num_shards}. Use strategy='ring' (or 'auto'), "
                "which works for any number of heads."
            )
        chosen = "all_to_all"
        reason = "strategy='all_to_all'" + (
            f", each key/value head copied {replication} times" if replication > 1 else ""
        )
    else:
        if q_len != kv_len:
            chosen, reason = "ring", "query and key/value lengths differ"
        elif num_kv_heads % num_shards:
            chosen, reason = "ring", f"num_key_value_heads={num_kv_heads} does not divide by CP"
        elif num_heads + num_kv_heads > num_shards * num_kv_heads:
            chosen, reason = "ring", "the ring sends fewer bytes at this CP and head count"
        elif per_device > AUTO_ALL_TO_ALL_MAX_TOKENS:
            chosen = "ring"
            reason = (
                f"{per_device} tokens per device > {AUTO_ALL_TO_ALL_MAX_TOKENS}: the ring hides "
                "its sends behind compute"
            )
        else:
            chosen = "all_to_all"
            reason = (
                f"{per_device} tokens per device <= {AUTO_ALL_TO_ALL_MAX_TOKENS} and the heads "
                "divide by CP"
            )
        replication = 1
    key = (strategy, chosen, num_shards, num_heads, num_kv_heads, q_len, kv_len)
    if key not in _LOGGED_CHOICES:
        _LOGGED_CHOICES.add(key)
        logger.info(
            "context parallelism over %d devices, sequence %d (%d per device), %d query / %d "
            "key-value heads: %s attention (%s).",
            num_shards,
            q_len,
            per_device,
            num_heads,
            num_kv_heads,
            chosen,
            reason,
        )
    return chosen, replication


def ring_attention(
    query,
    key,
    value,
    key_mask=None,
    causal=False,
    scale=None,
    segment_ids=None,
    window_size=None,
):
    """Attention that runs across the active ContextParallel sequence axis (ring or all-to-all).

    Arguments as for :func:`exact_attention`, with every sequence axis in layout order;
    ``segment_ids`` (``(batch, seq)`` integer document ids, 0 = padding) serve both queries and
    keys. On one device (no ContextParallel distribution, a sequence axis of size 1, or a
    backend whose keras distribution API does not exist) this is :func:`exact_attention`.
    """
    from kzoo.backends import dispatch

    validate_window_size(window_size, causal)
    validate_segment_ids(segment_ids, query.shape[0], query.shape[1], key.shape[1])
    check_segment_layout(segment_ids)
    dist, cp = active_context_parallel()
    impl = None
    if dist is not None and cp > 1:
        strategy, replication = choose_strategy(
            dist.strategy, cp, query.shape[2], key.shape[2], query.shape[1], key.shape[1]
        )
        impl = dispatch.find(STRATEGY_OPS[strategy], platform="any")
    if impl is None:
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
            query_segment_ids=segment_ids,
            key_segment_ids=segment_ids,
            window_size=window_size,
        )
    kwargs = {"kv_replication": replication} if strategy == "all_to_all" else {}
    return impl.load()(
        query,
        key,
        value,
        key_mask,
        segment_ids,
        mesh=dist.device_mesh.backend_mesh,
        sequence_axis=dist.sequence_axis,
        batch_axis=dist.batch_axis,
        causal=causal,
        load_balance=dist.load_balance,
        scale=scale,
        window_size=window_size,
        **kwargs,
    )
