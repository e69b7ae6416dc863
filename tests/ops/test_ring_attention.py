"""Context-parallel attention: the schedule, exact masked attention (every backend), and the JAX
ring and all-to-all strategies on 8 virtual devices.

The strategies' reference is exact attention on one device; exact attention's reference is
float64 numpy, and for packed documents each document computed alone. Each CP configuration
compiles one function returning the output and all input gradients, since compiling dominates
the run time.
"""

import importlib
import logging
import math
import re

import keras
import numpy as np
import pytest

from kzoo.backends.common import ring_schedule
from kzoo.distribution import pack_documents

# kzoo.ops exports the function ring_attention, which hides the module of the same name.
ra = importlib.import_module("kzoo.ops.ring_attention")

# Document lengths of the 4 rows of a packed batch of 32 tokens: short and long documents,
# a row that is one document, and padding (rows 0, 2 and 3 end with padding).
DOCUMENTS = [[5, 11, 9], [32], [3, 3, 20], [14, 10]]


def _numpy_attention(q, k, v, key_mask, causal, segment_ids=None, window=None):
    """Float64 reference; grouped heads read key head h // group. No visible key -> zeros."""
    q, k, v = (np.asarray(a, np.float64) for a in (q, k, v))
    g = q.shape[2] // k.shape[2]
    k, v = np.repeat(k, g, axis=2), np.repeat(v, g, axis=2)
    s = np.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(q.shape[-1])
    valid = np.ones(s.shape, bool)
    if key_mask is not None:
        valid &= key_mask[:, None, None, :]
    if segment_ids is not None:
        same = segment_ids[:, :, None] == segment_ids[:, None, :]
        valid &= (same & (segment_ids[:, None, :] > 0))[:, None]
    distance = np.arange(s.shape[-2])[:, None] - np.arange(s.shape[-1])[None, :]
    if causal:
        valid &= distance >= 0
    if window is not None:
        valid &= distance < window
    s = np.where(valid, s, -np.inf)
    m = np.max(s, -1, keepdims=True)
    p = np.where(valid, np.exp(s - np.where(np.isfinite(m), m, 0)), 0)
    den = p.sum(-1, keepdims=True)
    p = p / np.where(den > 0, den, 1)
    return np.einsum("bhqk,bkhd->bqhd", p, v)


def _inputs(b=2, s=32, h=4, hk=2, d=8, seed=0):
    rng = np.random.default_rng(seed)
    q = rng.normal(size=(b, s, h, d)).astype("float32")
    k = rng.normal(size=(b, s, hk, d)).astype("float32")
    v = rng.normal(size=(b, s, hk, d)).astype("float32")
    mask = rng.random((b, s)) > 0.3
    mask[:, 0] = True
    # Under a causal mask the first queries of row 1 see no key at all: they must give zeros
    # (and zero gradients) on one device and on the ring alike, never NaN.
    mask[min(1, b - 1), :3] = False
    return q, k, v, mask


def _segments(b=4, s=32):
    return pack_documents(DOCUMENTS[:b], s)[0]


@pytest.mark.parametrize("causal", [False, True])
def test_exact_attention_matches_float64(causal):
    q, k, v, mask = _inputs()
    mask[1, :] = False  # a row that sees nothing must give zeros, not NaN
    mask[1, 5] = True
    out = ra.exact_attention(q, k, v, key_mask=mask, causal=causal)
    ref = _numpy_attention(q, k, v, mask, causal)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(out), ref, atol=2e-5)
    if causal:
        assert np.all(keras.ops.convert_to_numpy(out)[1, :5] == 0)


def test_exact_attention_layout_positions_permute_the_output():
    # In layout order the causal mask follows global positions, so the output is permuted too.
    q, k, v, mask = _inputs(seed=1)
    perm = np.random.default_rng(0).permutation(q.shape[1])
    out = ra.exact_attention(
        q[:, perm],
        k[:, perm],
        v[:, perm],
        key_mask=mask[:, perm],
        causal=True,
        query_positions=perm,
        key_positions=perm,
    )
    ref = _numpy_attention(q, k, v, mask, True)[:, perm]
    np.testing.assert_allclose(keras.ops.convert_to_numpy(out), ref, atol=2e-5)


@pytest.mark.parametrize("causal,window", [(False, None), (True, None), (True, 3)])
def test_packed_documents_and_window_match_float64_and_each_document_alone(causal, window):
    q, k, v, mask = _inputs(b=4, seed=2)
    segments = _segments()
    out = keras.ops.convert_to_numpy(
        ra.ring_attention(
            q, k, v, key_mask=mask, causal=causal, segment_ids=segments, window_size=window
        )
    )
    np.testing.assert_allclose(
        out, _numpy_attention(q, k, v, mask, causal, segments, window), atol=2e-5
    )
    # Independently: each document computed alone on its own slice gives the same numbers,
    # and padding (segment 0) outputs zeros.
    for row, lengths in enumerate(DOCUMENTS):
        start = 0
        for n in lengths:
            part = slice(start, start + n)
            alone = _numpy_attention(
                q[row : row + 1, part],
                k[row : row + 1, part],
                v[row : row + 1, part],
                mask[row : row + 1, part],
                causal,
                window=window,
            )[0]
            np.testing.assert_allclose(out[row, part], alone, atol=2e-5)
            start += n
        assert np.all(out[row, start:] == 0)


@pytest.mark.backends("jax")
def test_packed_gradients_equal_each_document_alone():
    # The gradients of packed attention (one device) are each document's own gradients: the
    # reference the context-parallel gradients are compared with below.
    import jax

    q, k, v, mask = _inputs(b=4, seed=4)
    cot = np.random.default_rng(7).normal(size=q.shape).astype("float32")
    segments = _segments()

    def loss(q, k, v, mask, cot, segments):
        out = ra.exact_attention(
            q, k, v, key_mask=mask, causal=True, query_segment_ids=segments,
            key_segment_ids=segments,
        )  # fmt: skip
        return (out * cot).sum()

    grads = jax.grad(loss, argnums=(0, 1, 2))(q, k, v, mask, cot, segments)
    alone = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))
    for row, lengths in enumerate(DOCUMENTS):
        start = 0
        for n in lengths:
            part = (slice(row, row + 1), slice(start, start + n))
            ones = np.ones((1, n), "int32")
            ref = alone(q[part], k[part], v[part], mask[part], cot[part], ones)
            for got, want in zip(grads, ref):
                np.testing.assert_allclose(np.asarray(got)[part], np.asarray(want), atol=2e-5)
            start += n
        for got in grads:  # padding gets no gradient
            assert np.all(np.asarray(got)[row, start:] == 0)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"segment_ids": np.zeros((4, 32), "float32")}, "integer document ids"),
        ({"segment_ids": np.zeros((4, 31), "int32")}, "shape \\(batch, seq_len\\)"),
        ({"segment_ids": np.zeros((32,), "int32")}, "shape \\(batch, seq_len\\)"),
        ({"window_size": 0, "causal": True}, "at least 1"),
        ({"window_size": -2, "causal": True}, "at least 1"),
        ({"window_size": 2.5, "causal": True}, "positive integer"),
        ({"window_size": 4}, "needs causal=True"),
    ],
)
def test_bad_segment_ids_and_windows_are_value_errors(kwargs, match):
    q, k, v, _ = _inputs(b=4)
    with pytest.raises(ValueError, match=match):
        ra.ring_attention(q, k, v, **kwargs)


# ---------------------------------------------------------------------------------------------
# The schedule (plain Python, every backend).


def _visible_chunk_pairs(n, chunk, causal, window, segments=None):
    """(query chunk, key chunk) pairs with at least one visible (query, key) token pair."""
    length = 2 * n * chunk
    pos = np.arange(length)
    d = pos[:, None] - pos[None, :]
    visible = np.ones((length, length), bool)
    if causal:
        visible &= d >= 0
    if window is not None:
        visible &= d < window
    if segments is not None:
        visible &= (segments[:, None] == segments[None, :]) & (segments[None, :] > 0)
    blocks = visible.reshape(2 * n, chunk, 2 * n, chunk).any(axis=(1, 3))
    return {(int(a), int(b)) for a, b in zip(*np.nonzero(blocks))}


@pytest.mark.parametrize("load_balance", ["zigzag", "contiguous"])
@pytest.mark.parametrize("causal,window", [(False, None), (True, None), (True, 1), (True, 6)])
def test_schedule_computes_every_visible_block_once_and_no_masked_block(
    causal, window, load_balance
):
    chunk = 4
    for n in (1, 2, 3, 4, 8):
        wanted = _visible_chunk_pairs(n, chunk, causal, window)
        computed = []
        for r in range(n):
            pairs = ra.computed_chunk_pairs(r, n, causal, load_balance, window, chunk)
            assert all(qc in ra.chunk_ids(r, n, load_balance) for qc, _ in pairs)
            computed += pairs
        assert len(computed) == len(set(computed)), "a block was computed twice"
        assert set(computed) == wanted


@pytest.mark.parametrize("window", [1, 2, 4, 5, 9, 13, 40])
def test_window_sends_the_blocks_of_2d_neighbours_only(window):
    # The zigzag ring needs the blocks of the D = ceil((w - 1) / c) devices on either side
    # (docs/context_parallel.md), and no step nobody's queries reach.
    chunk = 4
    d = math.ceil((window - 1) / chunk)
    for n in (2, 3, 4, 8):
        steps = ra.ring_steps(n, True, "zigzag", window, chunk)
        assert len(steps) - 1 == min(n - 1, 2 * d)
        for s in range(n):
            used = any(ra.step_pairs(s, r, n, True, "zigzag", window, chunk) for r in range(n))
            assert (s in steps) == (s == 0 or used)


def test_zigzag_balances_causal_work_and_contiguous_does_not():
    for n in (2, 4, 8):
        zigzag = ra.per_device_work(n, True, "zigzag")
        contiguous = ra.per_device_work(n, True, "contiguous")
        assert max(zigzag) == min(zigzag) == 2 * n + 1
        assert sum(zigzag) == sum(contiguous) == n * (2 * n + 1)
        assert max(contiguous) / np.mean(contiguous) > 1.3


@pytest.mark.parametrize("block", [None, 2])
def test_packed_work_counts_exactly_the_blocks_documents_meet_in(block, monkeypatch):
    # The ring computes a block of packed documents iff some token of a document attends to
    # a key of the same document in it: checked against token-level visibility. With blocks
    # of 2 tokens each 4-token chunk pair is 2 x 2 blocks, each a quarter of the work.
    from kzoo.distribution import zigzag_permutation

    if block is not None:
        monkeypatch.setattr(ring_schedule, "ATTENTION_BLOCK", block)
    rng = np.random.default_rng(0)
    n, chunk = 4, 4
    m = 1 if block is None else chunk // block
    size = chunk // m
    length = 2 * n * chunk
    for _ in range(20):
        lengths = []
        while sum(lengths) < length - 3:
            lengths.append(int(rng.integers(1, 14)))
        lengths[-1] -= max(0, sum(lengths) - length)
        natural = pack_documents([lengths], length)[0]
        perm = zigzag_permutation(length, n)
        work = ra.packed_device_work(natural[:, perm], n, True, "zigzag")
        ids = natural[0]
        expected = []
        for r in range(n):
            count = 0
            for qc, kc in ra.computed_chunk_pairs(r, n, True):
                for a in range(m):
                    for b in range(m):
                        q = np.arange(qc * chunk + a * size, qc * chunk + (a + 1) * size)
                        k = np.arange(kc * chunk + b * size, kc * chunk + (b + 1) * size)
                        visible = (
                            (q[:, None] >= k[None, :])
                            & (ids[q][:, None] == ids[k][None, :])
                            & (ids[k][None, :] > 0)
                        )
                        count += bool(visible.any())
            expected.append(count / m**2)
        assert work == expected


def test_auto_strategy_rule_and_the_choice_is_logged_once(caplog):
    limit = ra.AUTO_ALL_TO_ALL_MAX_TOKENS
    # (CP, heads, kv heads, q_len, kv_len) -> strategy
    cases = [
        ((4, 8, 4, 4 * limit, 4 * limit), "all_to_all"),
        ((4, 8, 4, 4 * limit + 8, 4 * limit + 8), "ring"),  # too many tokens per device
        ((4, 8, 2, 64, 64), "ring"),  # kv heads do not divide by CP
        ((4, 16, 4, 64, 64), "ring"),  # the ring sends fewer bytes (16 + 4 > 4 * 4)
        ((4, 8, 4, 64, 32), "ring"),  # cross-attention lengths differ
    ]
    with caplog.at_level(logging.INFO, logger="kzoo.context_parallel"):
        for args, expected in cases:
            assert ra.choose_strategy("auto", *args) == (expected, 1)
            ra.choose_strategy("auto", *args)
    messages = [r.getMessage() for r in caplog.records if r.name == "kzoo.context_parallel"]
    assert len(messages) == len(cases)  # once each, not once per call
    assert "all_to_all attention" in messages[0] and "ring attention" in messages[1]
    # Explicit all-to-all copies key/value heads when only the query heads divide.
    assert ra.choose_strategy("all_to_all", 4, 8, 2, 64, 64) == ("all_to_all", 2)
    assert ra.choose_strategy("ring", 4, 6, 3, 64, 64) == ("ring", 1)
    with pytest.raises(ValueError, match="strategy='ring'.*any number of heads"):
        ra.choose_strategy("all_to_all", 4, 6, 3, 64, 64)
    with pytest.raises(ValueError, match="equal query and key/value lengths"):
        ra.choose_strategy("all_to_all", 4, 8, 4, 64, 32)


# ---------------------------------------------------------------------------------------------
# The JAX strategies on 8 virtual CPU devices.


def _cp(shape, load_balance="zigzag", strategy="ring"):
    from kzoo.distribution import ContextParallel

    devices = keras.distribution.list_devices()[: int(np.prod(shape))]
    mesh = keras.distribution.DeviceMesh(shape, ["batch", "context"], devices=devices)
    return ContextParallel(mesh, load_balance=load_balance, strategy=strategy)


def _collectives(hlo_text):
    return re.findall(
        r"(collective-permute|all-gather|all-to-all|all-reduce)(?:-start)?\(", hlo_text
    )


def _compile(cp, causal, dtype, window, segmented, shapes):
    """One compiled function: output and (dq, dk, dv) of attention under ``cp`` (or exactly on
    one device when ``cp`` is None), and its collectives."""
    import jax
    import jax.numpy as jnp

    def run(q, k, v, mask, segments, cotangent):
        def f(q, k, v):
            return ra.ring_attention(
                q,
                k,
                v,
                key_mask=mask,
                causal=causal,
                segment_ids=segments if segmented else None,
                window_size=window,
            )

        out, pull = jax.vjp(f, *(a.astype(dtype) for a in (q, k, v)))
        grads = pull(cotangent.astype(dtype))
        return [a.astype(jnp.float32) for a in (out, *grads)]

    if cp is None:
        compiled = jax.jit(run).lower(*shapes).compile()
    else:
        with cp.scope():
            compiled = jax.jit(run).lower(*shapes).compile()
    return compiled, _collectives(compiled.as_text())


def _run(compiled, cp, q, k, v, mask, segments, cotangent):
    """Apply ``compiled`` with the inputs in layout order (as a data pipeline does) and return
    the results in natural order."""
    perm = np.arange(q.shape[1]) if cp is None else cp.layout_permutation(q.shape[1])
    args = [a[:, perm] for a in (q, k, v, mask, segments, cotangent)]
    inverse = np.argsort(perm)
    return [np.asarray(a)[:, inverse] for a in compiled(*args)]


def _out_and_grads(cp, causal, dtype, q, k, v, mask, cotangent, segments=None, window=None):
    segmented = segments is not None
    segments = np.zeros(mask.shape, "int32") if segments is None else segments
    shapes = (q, k, v, mask, segments, cotangent)
    compiled, collectives = _compile(cp, causal, dtype, window, segmented, shapes)
    return _run(compiled, cp, q, k, v, mask, segments, cotangent), collectives


CONFIGS = [
    # strategy, mesh, causal, load balance, packed documents, window, query heads, block:
    # with blocks of 4 tokens the ring cuts its 8-token chunks (CP 2) into 2 x 2 blocks and
    # all-to-all the sequence into 8 blocks.
    ("ring", (1, 8), True, "zigzag", False, None, 4, None),
    ("ring", (2, 4), False, "zigzag", True, None, 4, None),
    ("ring", (4, 2), True, "contiguous", True, 5, 4, 4),
    ("ring", (2, 4), True, "zigzag", True, 3, 4, None),
    ("all_to_all", (2, 4), True, "zigzag", True, None, 4, None),  # 2 kv heads copied twice
    ("all_to_all", (1, 8), True, "zigzag", False, 6, 8, None),  # 2 kv heads copied 4 times
    ("auto", (4, 2), True, "zigzag", True, None, 2, 4),  # picks all-to-all: 2 kv heads, CP 2
]


@pytest.mark.backends("jax")
@pytest.mark.parametrize("strategy,mesh,causal,load_balance,packed,window,heads,block", CONFIGS)
def test_strategies_match_single_device_output_and_gradients(
    strategy, mesh, causal, load_balance, packed, window, heads, block, monkeypatch
):
    if block is not None:
        monkeypatch.setattr(ring_schedule, "ATTENTION_BLOCK", block)
    # Grouped-query attention and key padding; 4 rows so that a 4-way batch axis divides them.
    q, k, v, mask = _inputs(b=4, s=32, h=heads, hk=2)
    cot = np.random.default_rng(5).normal(size=q.shape).astype("float32")
    segments = _segments() if packed else None
    ref, _ = _out_and_grads(None, causal, "float32", q, k, v, mask, cot, segments, window)
    cp = _cp(mesh, load_balance, strategy)
    got, collectives = _out_and_grads(cp, causal, "float32", q, k, v, mask, cot, segments, window)
    for name, a, b in zip(("out", "dq", "dk", "dv"), got, ref):
        assert np.max(np.abs(a - b)) <= 1e-4, name
    # The single-device reference itself is right (float64).
    np.testing.assert_allclose(
        ref[0], _numpy_attention(q, k, v, mask, causal, segments, window), atol=2e-5
    )
    n = cp.context_size
    assert "all-gather" not in collectives
    if strategy == "ring":
        # Forward and backward share the key/value sends (CP - 1); the dK/dV accumulators add
        # CP more, the last of which brings them home. A window drops the unreachable steps
        # and sends each block straight there and its dK/dV straight back.
        steps = len(ra.ring_steps(n, causal, load_balance, window, 32 // (2 * n)))
        expected = 2 * n - 1 if steps == n else 2 * (steps - 1)
        assert collectives.count("collective-permute") == expected
        assert "all-to-all" not in collectives
    else:
        # Query/key/value in and the output back; the output gradient in and the
        # query/key/value gradients back.
        assert collectives.count("all-to-all") == 4
        assert "collective-permute" not in collectives


@pytest.mark.backends("jax")
def test_ring_bfloat16_error_within_3x_of_single_device():
    q, k, v, mask = _inputs(s=32, h=4, hk=2, d=16, seed=3)
    cot = np.random.default_rng(6).normal(size=q.shape).astype("float32")
    truth, _ = _out_and_grads(None, True, "float32", q, k, v, mask, cot)
    single, _ = _out_and_grads(None, True, "bfloat16", q, k, v, mask, cot)
    ring, _ = _out_and_grads(_cp((2, 4)), True, "bfloat16", q, k, v, mask, cot)
    for name, t, s, r in zip(("out", "dq", "dk", "dv"), truth, single, ring):
        single_err = np.max(np.abs(s - t))
        ring_err = np.max(np.abs(r - t))
        assert single_err > 0
        assert ring_err <= 3 * single_err, (name, ring_err, single_err)


def _forward_hlo(cp, q, k, v, mask, window=None, segments=None):
    import jax
    import jax.numpy as jnp

    def forward(q, k, v, m, s):
        return ra.ring_attention(
            q, k, v, key_mask=m, causal=True, window_size=window, segment_ids=s
        )

    with cp.scope():
        lowered = jax.jit(forward).lower(q, k, v, jnp.asarray(mask), segments)
        compiled = lowered.compile()
    return lowered, compiled


@pytest.mark.backends("jax")
def test_ring_forward_hlo_has_cp_minus_1_permutes_and_sends_before_compute():
    cp = _cp((1, 8))
    q, k, v, mask = _inputs(b=1, s=64)
    lowered, compiled = _forward_hlo(cp, q, k, v, mask)
    fwd = _collectives(compiled.as_text())
    assert fwd.count("collective-permute") == 8 - 1
    assert "all-gather" not in fwd and "all-to-all" not in fwd
    # In program order each send is issued before the compute of the step it overlaps: the
    # first send precedes any compute and compute separates consecutive sends.
    events = re.findall(r"collective_permute|dot_general", lowered.as_text())
    assert events[0] == "collective_permute"
    sends = [i for i, e in enumerate(events) if e == "collective_permute"]
    assert len(sends) == 7
    assert all(b - a > 1 for a, b in zip(sends, sends[1:]))


@pytest.mark.backends("jax")
def test_window_shorter_than_a_chunk_sends_two_blocks_and_computes_less():
    # CP = 8, 64 tokens: chunks of c = 4. A window of w tokens needs the devices within
    # D = ceil((w - 1) / c) on either side: 2 blocks for w = 4, 4 for w = 9, none for w = 1.
    cp = _cp((1, 8))
    q, k, v, mask = _inputs(b=1, s=64)
    flops = {}
    for window, blocks in ((None, 7), (1, 0), (4, 2), (9, 4)):
        _, compiled = _forward_hlo(cp, q, k, v, mask, window)
        assert _collectives(compiled.as_text()).count("collective-permute") == blocks, window
        flops[window] = compiled.cost_analysis()["flops"]

    # The steps are synchronised by their sends, so a step costs what its busiest device
    # computes: the compiled FLOPs (XLA counts the costliest branch of each lax.switch) follow
    # the schedule's per-step maxima.
    def critical_blocks(w):
        return sum(
            max(len(ra.step_pairs(s, r, 8, True, "zigzag", w, 4)) for r in range(8))
            for s in ra.ring_steps(8, True, "zigzag", w, 4)
        )

    blocks = {w: critical_blocks(w) for w in flops}
    assert blocks[None] == 17 and blocks[1] < blocks[4] < blocks[9] < 17
    for w in (1, 4, 9):
        assert flops[w] / flops[None] == pytest.approx(blocks[w] / blocks[None], rel=0.1)


@pytest.mark.backends("jax")
@pytest.mark.parametrize("strategy", ["ring", "all_to_all"])
def test_blocks_no_document_spans_are_not_computed(strategy):
    # The first document's keys and values are NaN. A computed block multiplies them by zero
    # probabilities, which gives NaN; a skipped block never reads them. One row of 32 tokens
    # on 4 devices, documents of 16, 10 and 6 tokens: the blocks where the later documents'
    # queries meet the first one's keys (causally visible, so only the documents can skip
    # them) must be skipped, so their outputs stay exactly what they are with finite values
    # there, while the first document's own outputs are NaN.
    import jax.numpy as jnp

    cp = _cp((1, 4), strategy=strategy)
    q, k, v, _ = _inputs(b=1, s=32, h=4, hk=4)
    segments = pack_documents([[16, 10, 6]], 32, cp)[0]
    q, k, v = (a[:, cp.layout_permutation(32)] for a in (q, k, v))
    mask = np.ones((1, 32), bool)
    _, compiled = _forward_hlo(cp, q, k, v, mask, segments=jnp.asarray(segments))
    finite = np.asarray(compiled(q, k, v, mask, segments))
    first = segments == 1
    k[first], v[first] = np.nan, np.nan
    out = np.asarray(compiled(q, k, v, mask, segments))
    assert np.all(np.isnan(out[first]))
    np.testing.assert_array_equal(out[~first], finite[~first])


@pytest.mark.backends("jax")
def test_context_parallel_refusals_come_before_any_device_work():
    q, k, v, mask = _inputs(b=4, s=32, h=6, hk=3)
    segments = _segments()
    with _cp((2, 4), strategy="all_to_all").scope():
        with pytest.raises(ValueError, match="num_key_value_heads \\(3\\) or num_heads \\(6\\)"):
            ra.ring_attention(q, k, v, causal=True)
    cp = _cp((2, 4))
    with cp.scope():
        # Packed documents still in natural order: their documents come back in pieces.
        with pytest.raises(ValueError, match="not in the layout order.*to_layout_order"):
            ra.ring_attention(q, k, v, causal=True, segment_ids=segments)
        with pytest.raises(ValueError, match="divide by 2 \\* CP = 8"):
            ra.ring_attention(q[:, :28], k[:, :28], v[:, :28], causal=True)


def _count_traces(monkeypatch):
    """A list that grows by one each time a sharded attention program is traced."""
    from kzoo.backends.jax import sharded as jr

    traces, sharded = [], jr.over_mesh

    def counting(fn, *args):
        def body(*a):
            traces.append(fn)
            return fn(*a)

        return sharded(body, *args)

    monkeypatch.setattr(jr, "over_mesh", counting)
    return traces


@pytest.mark.backends("jax")
def test_eager_calls_compile_once_per_configuration_and_never_reuse_a_stale_program(
    monkeypatch,
):
    # Issue #24, item 4: outside jit, every call used to trace and run the shard_map afresh.
    # Now the program is traced once per configuration; a new shape, mesh or option traces a
    # new one (and gives the right numbers), and the cache keeps at most EAGER_CACHE_SIZE.
    from kzoo.backends.jax import sharded as jr

    traces = _count_traces(monkeypatch)
    monkeypatch.setattr(jr, "EAGER_CACHE_SIZE", 3, raising=False)

    def call(cp, s, causal=True):
        q, k, v, mask = _inputs(b=2, s=s, seed=s)
        perm = cp.layout_permutation(s)
        with cp.scope():
            out = ra.ring_attention(*(a[:, perm] for a in (q, k, v, mask)), causal=causal)
        got = np.asarray(out)[:, np.argsort(perm)]
        np.testing.assert_allclose(got, _numpy_attention(q, k, v, mask, causal), atol=2e-5)
        return len(traces)

    one_by_four, two_by_four = _cp((1, 4)), _cp((2, 4))
    assert call(one_by_four, 16) == 1
    assert call(one_by_four, 16) == 1  # the same shape: the compiled program runs again
    assert call(one_by_four, 32) == 2  # a new shape
    assert call(two_by_four, 16) == 3  # a new mesh
    assert call(one_by_four, 16, causal=False) == 4  # a new option; the oldest entry goes
    assert jr.eager_cache_info()["size"] == 3
    assert call(one_by_four, 16) == 5
    assert call(two_by_four, 16) == 5
