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
``scripts/bench/cp.py``, so the per-device work the benchmark reports is the work the ring does.

Layout order. Under context parallelism with ``load_balance="zigzag"`` the sequence axis of
every tensor is in *layout order*: the sequence is cut into ``2 * CP`` chunks and device ``r``
holds chunks ``r`` and ``2 * CP - 1 - r`` (see ``kzoo.distribution.zigzag_permutation``).
Causal and window masks therefore compare the global positions of the slots, never slot
indices.
"""

import logging

import numpy as np
from keras import backend as keras_backend
from keras import ops

from kzoo.backends.common.ring_schedule import (  # noqa: F401  (re-exported: the schedule)
    ATTENTION_BLOCK,
    CASE_PAIRS,
    DIAGONAL,
    FULL,
    KV_FRONT,
    LOAD_BALANCES,
    Q_BACK,
    SKIP,
    block_reaches,
    block_split,
    blocks_meet,
    chunk_ids,
    computed_chunk_pairs,
    packed_device_work,
    per_device_work,
    ring_blocks,
    ring_steps,
    segment_ranges,
    step_case,
    step_pairs,
    validate_ring_shapes,
    window_covers,
    window_reaches,
)
from kzoo.distribution.context_parallel import ContextParallel
from kzoo.distribution.packing import check_packed_layout
from kzoo.ops.shapes import positions_along

STRATEGIES = ("ring", "all_to_all", "auto")

RING_OP = "context_parallel_ring"
ALL_TO_ALL_OP = "context_parallel_all_to_all"
STRATEGY_OPS = {"ring": RING_OP, "all_to_all": ALL_TO_ALL_OP}

# strategy="auto" takes all-to-all only up to this many tokens per device. Below it a ring step's
# compute is too short to hide the step's key/value transfer on an H200 with NVLink:
# scripts/bench/cp.py measures the crossover from the compiled FLOPs and collective bytes of a
# ring step at 2160-2541 tokens (2 query heads per key/value head; docs/context_parallel.md),
# and this is the power of two below it. There the ring's sends are exposed and the two
# all-to-alls, which send fewer bytes, are the cheaper strategy.
AUTO_ALL_TO_ALL_MAX_TOKENS = 2048


logger = logging.getLogger("kzoo.context_parallel")
_LOGGED_CHOICES = set()


def active_context_parallel():
    """``(distribution, CP)`` for the active ContextParallel distribution, else ``(None, 1)``."""
    from keras import distribution as kd

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
    if dist is None or cp == 1 or segment_ids is None or dist.local_shards:
        # A process's shard of the sequence cannot be checked alone; fit/evaluate/predict
        # check the global arrays before they are sharded.
        return
    host = _concrete(segment_ids)
    if host is not None:
        check_packed_layout(host, distribution=dist)


def _concrete(x):
    if isinstance(x, np.ndarray):
        return x
    try:
        return np.asarray(ops.convert_to_numpy(x))
    except Exception:  # a traced value (jit, tf.function): its content is not known yet
        return None


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
        # On a backend that runs one process per device the layer sees this process's shard.
        q_len, kv_len = dist.sequence_length(query.shape[1]), dist.sequence_length(key.shape[1])
        strategy, replication = choose_strategy(
            dist.strategy, cp, query.shape[2], key.shape[2], q_len, kv_len
        )
        impl = dispatch.find(STRATEGY_OPS[strategy], platform="any")
    if impl is None:
        positions = None
        if dist is not None:
            positions = dist.shard_positions(ops.shape(query)[1])
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
        mesh=dist.backend_mesh,
        sequence_axis=dist.sequence_axis,
        batch_axis=dist.batch_axis,
        causal=causal,
        load_balance=dist.load_balance,
        scale=scale,
        window_size=window_size,
        **kwargs,
    )
