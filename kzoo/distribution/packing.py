"""Packed documents: segment ids and per-document positions, in a distribution's layout order.

Long-context training packs several documents into one sequence. Attention must then stay
inside each document (``segment_ids``: one id per token, 1, 2, ... for the documents of a row,
0 for padding) and positions restart at every document. These helpers build both on the host,
in the layout order of a :class:`kzoo.distribution.ContextParallel` distribution (natural order
without one), check that packed inputs really are in that order, and reorder documents so that
the ring's devices get equal work.

Recipe for a language model: for each document ``t`` (token ids), its inputs are ``t[:-1]``
and its targets ``t[1:]``, so its packed length is ``len(t) - 1``; concatenate the inputs (and
the targets) of the row's documents, pad to ``seq_len``, apply ``cp.to_layout_order`` to
tokens and targets, and weight the loss with ``segment_ids > 0`` to ignore the padding.
"""

import numpy as np

from kzoo.backends.common.ring_schedule import packed_device_work


def _rows(document_lengths, seq_len):
    seq_len = int(seq_len)
    if isinstance(document_lengths, np.ndarray) and document_lengths.ndim == 1:
        document_lengths = [document_lengths]
    try:
        rows = [[int(n) for n in row] for row in document_lengths]
        if any(int(n) != n for row in document_lengths for n in row):
            raise TypeError
    except TypeError:
        raise ValueError(
            "document_lengths must be a list of rows, each a list of positive integers "
            f"(the document lengths of one packed sequence); got {document_lengths!r}."
        ) from None
    for i, row in enumerate(rows):
        if any(n < 1 for n in row):
            raise ValueError(f"Row {i} of document_lengths has a length < 1: {row}.")
        if sum(row) > seq_len:
            raise ValueError(
                f"Row {i} of document_lengths holds {sum(row)} tokens, more than "
                f"seq_len={seq_len}: {row}."
            )
    return rows


def _layout(distribution, seq_len):
    """The layout permutation of ``distribution`` (identity without a ContextParallel one)."""
    from kzoo.distribution.context_parallel import ContextParallel

    if isinstance(distribution, ContextParallel):
        return distribution.layout_permutation(seq_len)
    if distribution is not None:
        raise ValueError(
            "distribution must be a kzoo.distribution.ContextParallel or None; got "
            f"{type(distribution).__name__}."
        )
    return np.arange(int(seq_len))


def _natural_row(lengths, seq_len):
    segment_ids = np.zeros(seq_len, np.int32)
    positions = np.zeros(seq_len, np.int32)
    start = 0
    for doc, n in enumerate(lengths, 1):
        segment_ids[start : start + n] = doc
        positions[start : start + n] = np.arange(n)
        start += n
    return segment_ids, positions


def pack_documents(document_lengths, seq_len, distribution=None):
    """Segment ids and per-document positions of packed rows, in layout order.

    Args:
        document_lengths: One list per row of the batch: the lengths of the documents packed
            into that row, in order. A row may hold fewer than ``seq_len`` tokens; the rest is
            padding (segment id 0, position 0).
        seq_len: Length of every packed row.
        distribution: A :class:`kzoo.distribution.ContextParallel` (the result is in its
            layout order, like ``cp.to_layout_order`` of the natural arrays), or ``None``.

    Returns:
        ``(segment_ids, positions)``: two int32 arrays of shape ``(batch, seq_len)``. Document
        ``j`` of a row (counting from 1) has segment id ``j``; positions restart at 0 at every
        document.

    Raises:
        ValueError: for lengths that are not positive integers or a row longer than
            ``seq_len``, or (under context parallelism) a ``seq_len`` that does not divide by
            ``2 * CP``.

    Example:

    ```python
    cp = kzoo.distribution.ContextParallel(keras.distribution.DeviceMesh((2, 4), ["batch", "context"]))
    segment_ids, positions = kzoo.distribution.pack_documents([[5, 11], [16]], 16, cp)
    ```
    """
    rows = _rows(document_lengths, seq_len)
    perm = _layout(distribution, seq_len)
    natural = [_natural_row(row, int(seq_len)) for row in rows]
    segment_ids = np.stack([s for s, _ in natural])[:, perm]
    positions = np.stack([p for _, p in natural])[:, perm]
    return segment_ids, positions


def check_packed_layout(segment_ids, positions=None, distribution=None, max_position=None):
    """Raise a ``ValueError`` unless packed inputs are laid out as ``pack_documents`` does.

    In natural order (``distribution``'s layout undone) every document (id > 0) must occupy
    one contiguous run of a row and, when ``positions`` are given, its positions must count up
    by one along it. Inputs still in natural order under a zigzag distribution break both
    (their documents come back cut into pieces), so this catches a missing
    ``cp.to_layout_order``.
    """
    segment_ids = np.asarray(segment_ids)
    if segment_ids.ndim != 2 or segment_ids.dtype.kind not in "iu":
        raise ValueError(
            "segment_ids must be an integer array of shape (batch, seq_len); got "
            f"dtype {segment_ids.dtype} and shape {segment_ids.shape}."
        )
    if segment_ids.size and segment_ids.min() < 0:
        raise ValueError("segment_ids must be >= 0 (0 marks padding); got negative ids.")
    seq_len = segment_ids.shape[1]
    perm = _layout(distribution, seq_len)
    inverse = np.argsort(perm)
    natural = segment_ids[:, inverse]
    converted = distribution is not None and not np.array_equal(perm, np.arange(seq_len))
    if converted:
        problem = {
            "segment_ids": "segment_ids are not in the layout order of the ContextParallel "
            "distribution",
            "positions": "positions are not in the layout order of the ContextParallel "
            "distribution",
        }
        fix = (
            "Apply cp.to_layout_order to packed inputs (segment ids, positions, tokens and "
            "targets alike), or build them with kzoo.distribution.pack_documents(lengths, "
            "seq_len, cp)."
        )
    else:
        problem = {
            "segment_ids": "segment_ids must give each document one contiguous run of tokens",
            "positions": "positions must count up by one along each document",
        }
        fix = "Build them with kzoo.distribution.pack_documents(lengths, seq_len)."
    for row, ids in enumerate(natural):
        starts = np.ones(seq_len, bool)
        starts[1:] = ids[1:] != ids[:-1]
        runs = ids[starts]
        runs = runs[runs > 0]
        unique, counts = np.unique(runs, return_counts=True)
        if np.any(counts > 1):
            doc = int(unique[np.argmax(counts > 1)])
            raise ValueError(
                f"{problem['segment_ids']}: in row {row} document {doc} is split into "
                f"{int(counts[np.argmax(counts > 1)])} pieces. {fix}"
            )
    if positions is None:
        return
    positions = np.asarray(positions)
    if positions.shape != segment_ids.shape or positions.dtype.kind not in "iu":
        raise ValueError(
            "positions must be an integer array of the shape of segment_ids "
            f"{segment_ids.shape}; got dtype {positions.dtype} and shape {positions.shape}."
        )
    if max_position is not None and positions.size and positions.max() >= max_position:
        raise ValueError(
            f"positions must be < max_sequence_length={max_position}; got {positions.max()}."
        )
    natural_pos = positions[:, inverse]
    same = (natural[:, 1:] == natural[:, :-1]) & (natural[:, 1:] > 0)
    steps = natural_pos[:, 1:] - natural_pos[:, :-1]
    bad = same & (steps != 1)
    if np.any(bad):
        row, col = (int(i[0]) for i in np.nonzero(bad))
        raise ValueError(
            f"{problem['positions']}: in row {row} document {int(natural[row, col])} "
            f"goes from position {int(natural_pos[row, col])} to "
            f"{int(natural_pos[row, col + 1])}. {fix}"
        )


class _WorkModel:
    """The ring's per-device work for one packed row, from its document lengths."""

    def __init__(self, distribution, seq_len):
        self.n = distribution.context_size
        self.seq_len = int(seq_len)
        self.perm = distribution.layout_permutation(seq_len)
        self.load_balance = distribution.load_balance

    def work(self, lengths):
        ids = _natural_row(lengths, self.seq_len)[0][self.perm]
        return np.array(packed_device_work(ids[None], self.n, True, self.load_balance))


def _exact_subset(lengths, candidates, target):
    """Indices (from ``candidates``) of documents whose lengths sum to exactly ``target``."""
    if target == 0:
        return []
    usable = [i for i in candidates if lengths[i] <= target]
    reached = np.zeros(target + 1, bool)
    reached[0] = True
    via = np.full(target + 1, -1)
    for pos, i in enumerate(usable):
        n = lengths[i]
        new = np.zeros_like(reached)
        new[n:] = reached[:-n] & ~reached[n:]
        via[new] = pos
        reached |= new
        if reached[target]:
            break
    if not reached[target]:
        return None
    chosen, t = [], target
    while t > 0:
        # via[t] was set by a document added after every document that reached t - n.
        i = usable[via[t]]
        chosen.append(i)
        t -= lengths[i]
    return chosen[::-1]


def _aligned_order(lengths, seq_len, num_chunks):
    """An order whose document boundaries fall on as many chunk boundaries as exact subset
    sums allow: then no document spans two chunks there and the ring skips their blocks."""
    chunk = seq_len // num_chunks
    remaining, order, filled = list(range(len(lengths))), [], 0
    for boundary in range(chunk, seq_len + 1, chunk):
        if filled > boundary or not remaining:
            continue
        subset = _exact_subset(lengths, remaining, boundary - filled)
        if subset is None:
            # Some document must cross this boundary: the longest, so that it crosses few.
            subset = [max(remaining, key=lambda i: lengths[i])]
        order += subset
        taken = set(subset)
        remaining = [i for i in remaining if i not in taken]
        filled += sum(lengths[i] for i in subset)
    return np.array(order + remaining)


def balance_documents(document_lengths, seq_len, distribution, seed=0, evaluations=400):
    """Reorder each row's documents so that the ring's busiest device computes the least.

    With packed documents the ring skips the blocks no document spans, so a device's work
    depends on where the documents fall; the zigzag layout balances one long causal sequence,
    not a few documents of middling length. Documents are independent under ``segment_ids``
    (and positions restart at each), so their order in a row changes no result. This helper
    scores orders with the ring's own skip rule (``kzoo.backends.common.ring_schedule.packed_device_work``)
    and keeps the one whose busiest device computes the fewest blocks (ties: the lowest
    max/mean imbalance). It tries the given order, an order that puts document boundaries on
    chunk boundaries (exact subset sums; then no block straddles two documents there), random
    orders, then swaps of two documents: ``evaluations`` tries per row, deterministic for a
    given ``seed``.

    Args:
        document_lengths: One list of document lengths per row (as for ``pack_documents``).
        seq_len: Length of every packed row.
        distribution: The :class:`kzoo.distribution.ContextParallel` the rows will train under.
        seed: Seed of the search.
        evaluations: Orders tried per row.

    Returns:
        One integer array per row: the order in which to pack that row's documents (pack
        ``[lengths[i] for i in order]``, and the documents' tokens in the same order).

    Example:

    ```python
    lengths = [900, 60, 3000, 136]
    order = kzoo.distribution.balance_documents([lengths], 4096, cp)[0]
    segment_ids, positions = kzoo.distribution.pack_documents(
        [[lengths[i] for i in order]], 4096, cp
    )
    ```
    """
    from kzoo.distribution.context_parallel import ContextParallel

    if not isinstance(distribution, ContextParallel):
        raise ValueError(
            "balance_documents needs the kzoo.distribution.ContextParallel distribution the "
            f"documents will be trained under; got {type(distribution).__name__}."
        )
    rows = _rows(document_lengths, seq_len)
    _layout(distribution, seq_len)  # validates seq_len against 2 * CP
    if distribution.context_size == 1:
        return [np.arange(len(row)) for row in rows]
    model = _WorkModel(distribution, seq_len)
    rng = np.random.default_rng(seed)
    orders = []
    for row in rows:
        lengths = np.array(row, np.int64)

        def score(order, lengths=lengths):
            w = model.work(lengths[order])
            return (float(w.max()), float(w.max() / max(w.mean(), 1e-9)))

        starts = [np.arange(len(row)), _aligned_order(lengths, int(seq_len), 2 * model.n)]
        scored = [(score(o), i) for i, o in enumerate(starts)]
        best_score, i = min(scored)
        best = starts[i]
        current, current_score = best, best_score
        for trial in range(max(int(evaluations) - 2, 0)):
            if best_score[1] <= 1.0 + 1e-9 or len(row) < 2:
                break
            if trial < evaluations // 8:
                candidate = rng.permutation(len(row))
            else:
                i, j = rng.choice(len(row), 2, replace=False)
                candidate = current.copy()
                candidate[[i, j]] = candidate[[j, i]]
            candidate_score = score(candidate)
            if candidate_score <= current_score:
                current, current_score = candidate, candidate_score
            if candidate_score < best_score:
                best, best_score = candidate, candidate_score
        orders.append(best)
    return orders
