"""Ring attention: the schedule, the exact single-device attention, and the JAX ring on 8 devices.

The ring's reference is exact attention on one device; exact attention's reference is float64
numpy. Each ring configuration compiles one function returning the output and all input
gradients, since compiling dominates the run time.
"""

import importlib
import re

import keras
import numpy as np
import pytest

# kzoo.ops exports the function ring_attention, which hides the module of the same name.
ra = importlib.import_module("kzoo.ops.ring_attention")


def _numpy_attention(q, k, v, key_mask, causal):
    """Float64 reference; grouped heads read key head h // group. No visible key -> zeros."""
    q, k, v = (np.asarray(a, np.float64) for a in (q, k, v))
    g = q.shape[2] // k.shape[2]
    k, v = np.repeat(k, g, axis=2), np.repeat(v, g, axis=2)
    s = np.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(q.shape[-1])
    valid = np.ones(s.shape, bool)
    if key_mask is not None:
        valid &= key_mask[:, None, None, :]
    if causal:
        valid &= np.tril(np.ones(s.shape[-2:], bool))
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


@pytest.mark.parametrize("load_balance", ["zigzag", "contiguous"])
@pytest.mark.parametrize("causal", [False, True])
def test_schedule_computes_every_visible_block_once_and_no_masked_block(causal, load_balance):
    for n in (1, 2, 3, 4, 8):
        for r in range(n):
            own = ra.chunk_ids(r, n, load_balance)
            pairs = ra.computed_chunk_pairs(r, n, causal, load_balance)
            assert len(pairs) == len(set(pairs)), "a block was computed twice"
            wanted = {(qc, kc) for qc in own for kc in range(2 * n) if not causal or kc <= qc}
            assert set(pairs) == wanted
            assert all(kc <= qc for qc, kc in pairs) or not causal


def test_zigzag_balances_causal_work_and_contiguous_does_not():
    for n in (2, 4, 8):
        zigzag = ra.per_device_work(n, True, "zigzag")
        contiguous = ra.per_device_work(n, True, "contiguous")
        assert max(zigzag) == min(zigzag) == 2 * n + 1
        assert sum(zigzag) == sum(contiguous) == n * (2 * n + 1)
        assert max(contiguous) / np.mean(contiguous) > 1.3


# ---------------------------------------------------------------------------------------------
# The JAX ring on 8 virtual CPU devices.


def _cp(shape, load_balance="zigzag"):
    from kzoo.distribution import ContextParallel

    mesh = keras.distribution.DeviceMesh(shape, ["batch", "context"])
    return ContextParallel(mesh, load_balance=load_balance)


def _collectives(hlo_text):
    return re.findall(r"= \S+ (collective-permute|all-gather|all-to-all|all-reduce)\S*\(", hlo_text)


def _out_and_grads(cp, causal, dtype, q, k, v, mask, cotangent):
    """Output and (dq, dk, dv) in natural order, computed by the ring under ``cp`` (or exactly
    on one device when ``cp`` is None) in one compiled function, and that function's
    collectives."""
    import jax
    import jax.numpy as jnp

    # Layout order is applied on the host, as a user's data pipeline does.
    perm = np.arange(q.shape[1]) if cp is None else cp.layout_permutation(q.shape[1])
    q, k, v, mask, cotangent = (a[:, perm] for a in (q, k, v, mask, cotangent))

    def run(q, k, v, mask, cotangent):
        def f(q, k, v):
            return ra.ring_attention(q, k, v, key_mask=mask, causal=causal)

        out, pull = jax.vjp(f, *(a.astype(dtype) for a in (q, k, v)))
        grads = pull(cotangent.astype(dtype))
        return [a.astype(jnp.float32) for a in (out, *grads)]

    args = (q, k, v, mask, cotangent)
    if cp is None:
        compiled = jax.jit(run).lower(*args).compile()
    else:
        with cp.scope():
            compiled = jax.jit(run).lower(*args).compile()
    inverse = np.argsort(perm)
    results = [np.asarray(a)[:, inverse] for a in compiled(*args)]
    return results, _collectives(compiled.as_text())


@pytest.mark.backends("jax")
@pytest.mark.parametrize(
    "mesh,causal,load_balance",
    [((1, 8), True, "zigzag"), ((2, 4), False, "zigzag"), ((4, 2), True, "contiguous")],
)
def test_ring_matches_single_device_output_and_gradients(mesh, causal, load_balance):
    # Grouped-query attention and key padding; 4 rows so that a 4-way batch axis divides them.
    q, k, v, mask = _inputs(b=4, s=32, h=4, hk=2)
    cot = np.random.default_rng(5).normal(size=q.shape).astype("float32")
    ref, _ = _out_and_grads(None, causal, "float32", q, k, v, mask, cot)
    cp = _cp(mesh, load_balance)
    got, collectives = _out_and_grads(cp, causal, "float32", q, k, v, mask, cot)
    for name, a, b in zip(("out", "dq", "dk", "dv"), got, ref):
        assert np.max(np.abs(a - b)) <= 1e-4, name
    # The single-device reference itself is right (float64).
    np.testing.assert_allclose(ref[0], _numpy_attention(q, k, v, mask, causal), atol=2e-5)
    # Forward and backward share the key/value sends (CP - 1); the dK/dV accumulators add CP
    # more, the last of which brings them home. Nothing gathers the sequence.
    n = cp.context_size
    assert collectives.count("collective-permute") == 2 * n - 1
    assert "all-gather" not in collectives and "all-to-all" not in collectives


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


@pytest.mark.backends("jax")
def test_ring_forward_hlo_has_cp_minus_1_permutes_and_sends_before_compute():
    import jax
    import jax.numpy as jnp

    cp = _cp((1, 8))
    q, k, v, mask = _inputs(b=1, s=64)
    with cp.scope():

        def forward(q, k, v, m):
            return ra.ring_attention(q, k, v, key_mask=m, causal=True)

        lowered = jax.jit(forward).lower(q, k, v, jnp.asarray(mask))
        fwd = _collectives(lowered.compile().as_text())
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
def test_each_ring_case_costs_what_the_schedule_counts():
    # scripts/bench_cp.py counts work from the schedule (CASE_PAIRS); the compiled cost of each
    # case the JAX ring runs, forward and backward, must be proportional to those counts, and a
    # skipped (fully masked) block must cost nothing.
    import jax
    import jax.numpy as jnp

    rj = importlib.import_module("kzoo.backends.jax.ring_attention")
    q = jnp.zeros((1, 64, 2, 2, 32))
    k = jnp.zeros((1, 64, 2, 32))
    m = jnp.ones((1, 64), bool)
    lse = jnp.zeros((1, 64, 2, 2))
    per_pair = {}
    for case, pairs in ra.CASE_PAIRS.items():

        def fwd(q, k, m, lse, case=case):
            return rj._forward_case(case, q, k, k, m, q, lse, 0.1)

        def bwd(q, k, m, lse, case=case):
            return rj._backward_case(case, q, k, k, m, q, lse, lse, 0.1)

        # The lowered program's cost analysis: no XLA compile needed.
        flops = [
            (jax.jit(f).lower(q, k, m, lse).cost_analysis() or {}).get("flops", 0.0)
            for f in (fwd, bwd)
        ]
        if not pairs:
            assert flops == [0.0, 0.0] or max(flops) < 1e3
            continue
        per_pair[case] = [f / len(pairs) for f in flops]
    for direction in (0, 1):
        costs = [v[direction] for v in per_pair.values()]
        assert max(costs) / min(costs) < 1.1, per_pair


@pytest.mark.backends("jax")
def test_ring_rejects_sequence_not_divisible_by_2cp():
    q, k, v, mask = _inputs(s=24)  # 24 % 16 != 0
    with _cp((1, 8)).scope():
        with pytest.raises(ValueError, match="divide by 2 \\* CP = 16"):
            ra.ring_attention(q, k, v, key_mask=mask, causal=True)
