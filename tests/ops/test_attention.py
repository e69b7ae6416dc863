"""kzoo.ops.dot_product_attention: float64 reference, keras's semantics, dispatch, bad input."""

import doctest
import importlib

import keras
import numpy as np
import pytest

from kzoo.backends import dispatch, environment
from kzoo.backends.common.attention import MIN_QUERIES
from kzoo.ops import attention, dot_product_attention

# Long enough for the blocked path; not a multiple of any block size the backends use (JAX:
# 3 blocks of 201, the last padded; TensorFlow: 5 blocks of 121, the last 117 queries long).
LONG = 601
SHORT = 7
KEYS = 37  # keys differ from queries in number: a swapped axis cannot go unnoticed
FILL = -0.7 * 3.4028234663852886e38  # keras's masked score
BLOCKED = {"jax": "jax-query-blocks", "tensorflow": "tensorflow-query-blocks"}


def expected_name(long=True):
    """The implementation a long (or short) float32 call gets on this machine."""
    backend = keras.backend.backend()
    if long and backend in BLOCKED and environment.platform() == "cpu":
        return BLOCKED[backend]
    return "keras"


def reference(q, k, v, mask, scale):
    """float64 attention with keras's masking: a query without keys averages the values."""
    q, k, v = (np.asarray(t, np.float64) for t in (q, k, v))
    s = np.einsum("bqhd,bkhd->bhqk", q, k) * scale
    if mask is not None:
        s = np.where(mask, s, FILL)
    p = np.exp(s - s.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    return np.einsum("bhqk,bkhd->bqhd", p, v)


def inputs(length, keys=KEYS, heads=2, dim=8, batch=2, seed=0):
    rng = np.random.default_rng(seed)
    q = rng.normal(size=(batch, length, heads, dim)).astype("float32")
    k = rng.normal(size=(batch, keys, heads, dim)).astype("float32")
    v = rng.normal(size=(batch, keys, heads, dim)).astype("float32")
    return q, k, v


def make_mask(kind, length, keys=KEYS, batch=2, seed=1):
    rng = np.random.default_rng(seed)
    if kind is None:
        return None
    if kind == "keys":  # key padding: the second item's last keys are padding
        mask = np.ones((batch, 1, 1, keys), bool)
        mask[1, ..., keys // 2 :] = False
        return mask
    mask = rng.random((batch, 1, length, keys)) > 0.4  # pairs
    mask[0, 0, 3] = False  # a query that sees no key
    return mask


def numpy(x):
    return keras.ops.convert_to_numpy(x)


@pytest.mark.parametrize("length", [SHORT, LONG])
@pytest.mark.parametrize("kind", [None, "keys", "pairs"])
def test_matches_float64_reference(length, kind):
    q, k, v = inputs(length)
    mask = make_mask(kind, length)
    assert attention.implementation(q, k, v, mask=mask).name == expected_name(length >= MIN_QUERIES)
    got = numpy(dot_product_attention(q, k, v, mask=mask, scale=0.3))
    assert got.dtype == np.float32 and got.shape == (2, length, 2, 8)
    np.testing.assert_allclose(got, reference(q, k, v, mask, 0.3), rtol=1e-5, atol=2e-6)
    # and the numbers of keras's own function, which the fallback is
    theirs = numpy(keras.ops.dot_product_attention(q, k, v, mask=mask, scale=0.3))
    np.testing.assert_allclose(got, theirs, rtol=1e-5, atol=2e-6)


def test_default_scale_is_one_over_sqrt_head_dim():
    q, k, v = inputs(LONG, dim=9)
    got = numpy(dot_product_attention(q, k, v))
    np.testing.assert_allclose(got, reference(q, k, v, None, 9**-0.5), rtol=1e-5, atol=2e-6)


@pytest.mark.parametrize("length", [SHORT, LONG])
def test_query_without_keys_gets_the_mean_of_the_values(length):
    # keras fills masked scores with a large finite number on every backend: such a query's
    # weights are uniform (not NaN, not zeros).
    q, k, v = inputs(length)
    mask = make_mask("pairs", length)
    mask[1] = False  # every query of the second item
    got = numpy(dot_product_attention(q, k, v, mask=mask))
    mean = v.mean(axis=1)  # (batch, heads, head_dim)
    np.testing.assert_allclose(got[1], np.broadcast_to(mean[1], got[1].shape), atol=1e-6)
    np.testing.assert_allclose(got[0, 3], mean[0], atol=1e-6)
    theirs = numpy(keras.ops.dot_product_attention(q, k, v, mask=mask))
    np.testing.assert_allclose(got, theirs, rtol=1e-5, atol=2e-6)


@pytest.mark.parametrize("length", [SHORT, LONG])
def test_bfloat16_in_bfloat16_out_softmax_in_float32(length):
    q, k, v = (keras.ops.cast(t, "bfloat16") for t in inputs(length))
    mask = make_mask("pairs", length)
    assert attention.implementation(q, k, v, mask=mask).name == expected_name(length >= MIN_QUERIES)
    out = dot_product_attention(q, k, v, mask=mask, scale=0.3)
    assert keras.backend.standardize_dtype(out.dtype) == "bfloat16"
    got = numpy(keras.ops.cast(out, "float32"))
    exact = reference(*(numpy(keras.ops.cast(t, "float32")) for t in (q, k, v)), mask, 0.3)
    # bfloat16 keeps 8 bits: the output's rounding (|values| < 4) and keras's bfloat16
    # probabilities bound the error; a softmax in bfloat16 would be off by far more.
    np.testing.assert_allclose(got, exact, rtol=0, atol=3e-2)
    theirs = numpy(
        keras.ops.cast(keras.ops.dot_product_attention(q, k, v, mask=mask, scale=0.3), "float32")
    )
    np.testing.assert_allclose(got, theirs, rtol=0, atol=3e-2)


def test_mixed_dtypes_promote_like_keras():
    q, k, v = inputs(LONG)
    out = dot_product_attention(keras.ops.cast(q, "bfloat16"), k, v, scale=0.3)
    assert keras.backend.standardize_dtype(out.dtype) == "float32"
    exact = reference(
        numpy(keras.ops.cast(keras.ops.cast(q, "bfloat16"), "float32")), k, v, None, 0.3
    )
    np.testing.assert_allclose(numpy(out), exact, rtol=1e-5, atol=2e-6)


@pytest.mark.backends("jax", "tensorflow")
def test_blocked_only_for_long_float_queries_of_known_length():
    if environment.platform() != "cpu":
        pytest.skip("the blocked implementations are registered for the CPU")
    name = BLOCKED[keras.backend.backend()]
    for length, want in ((MIN_QUERIES - 1, "keras"), (MIN_QUERIES, name)):
        q, k, v = inputs(length, keys=3, dim=2, batch=1)
        assert attention.implementation(q, k, v).name == want, length
    q, k, v = inputs(MIN_QUERIES, keys=3, heads=4, dim=2, batch=1)
    # grouped-query attention (2 key heads for 4 query heads) stays with keras
    assert attention.implementation(q, k[:, :, :2], v[:, :, :2]).name == "keras"


@pytest.mark.backends("jax", "tensorflow")
@pytest.mark.parametrize("kind", [None, "keys", "pairs"])
def test_small_blocks_with_a_remainder(kind):
    # The blocked implementation itself, with blocks of 3 over 10 queries (JAX pads 10 to 12,
    # TensorFlow's last block has 1 query).
    q, k, v = inputs(10, keys=6)
    mask = make_mask(kind, 10, keys=6)
    impl = attention.implementation(*inputs(LONG, keys=6))
    if impl.name == "keras":
        pytest.skip("no blocked implementation on this platform")
    args = [keras.ops.convert_to_tensor(t) for t in (q, k, v)]
    m = None if mask is None else keras.ops.convert_to_tensor(mask)
    got = numpy(impl.load()(*args, m, 0.3, block=3))
    np.testing.assert_allclose(got, reference(q, k, v, mask, 0.3), rtol=1e-5, atol=2e-6)


def test_kzoo_kernels_off_runs_keras(monkeypatch):
    q, k, v = inputs(LONG)
    mask = make_mask("pairs", LONG)
    monkeypatch.setenv("KZOO_KERNELS", "off")
    assert attention.implementation(q, k, v, mask=mask).name == "keras"
    got = numpy(dot_product_attention(q, k, v, mask=mask, scale=0.3))
    np.testing.assert_array_equal(
        got, numpy(keras.ops.dot_product_attention(q, k, v, mask=mask, scale=0.3))
    )
    monkeypatch.setenv("KZOO_KERNELS", "on")
    assert attention.implementation(q, k, v, mask=mask).name == expected_name()


def grads(fn, q, k, v, mask, dy):
    """``fn(q, k, v, mask)`` and the gradients of ``sum(out * dy)`` in q, k and v."""
    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        out, vjp = jax.vjp(lambda a, b, c: fn(a, b, c, mask), q, k, v)
        results = (out, *vjp(dy))
    elif backend == "tensorflow":
        import tensorflow as tf

        tq, tk, tv = (tf.constant(t) for t in (q, k, v))
        with tf.GradientTape() as tape:
            tape.watch([tq, tk, tv])
            out = fn(tq, tk, tv, mask)
        results = (out, *tape.gradient(out, [tq, tk, tv], output_gradients=tf.constant(dy)))
    else:
        import torch

        tq, tk, tv = (torch.tensor(t, requires_grad=True) for t in (q, k, v))
        out = fn(tq, tk, tv, mask)
        out.backward(torch.tensor(dy))
        results = (out, tq.grad, tk.grad, tv.grad)
    return [numpy(t) for t in results]


def test_gradients_match_keras():
    q, k, v = inputs(LONG, keys=5)
    mask = make_mask("pairs", LONG, keys=5)
    dy = np.random.default_rng(2).normal(size=(2, LONG, 2, 8)).astype("float32")
    ours = grads(
        lambda a, b, c, m: dot_product_attention(a, b, c, mask=m, scale=0.3), q, k, v, mask, dy
    )
    theirs = grads(
        lambda a, b, c, m: keras.ops.dot_product_attention(a, b, c, mask=m, scale=0.3),
        q, k, v, mask, dy,
    )  # fmt: skip
    for name, a, b in zip(("out", "dq", "dk", "dv"), ours, theirs):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5, err_msg=name)


def test_functional_model():
    q, k, v = inputs(LONG, keys=5)
    mask = make_mask("pairs", LONG, keys=5)
    inputs_ = [keras.Input(t.shape[1:], batch_size=2) for t in (q, k, v)]
    keep = keras.Input(mask.shape[1:], batch_size=2, dtype="bool")
    out = dot_product_attention(*inputs_, mask=keep, scale=0.3)
    assert tuple(out.shape) == (2, LONG, 2, 8)
    model = keras.Model([*inputs_, keep], out)
    got = model.predict([q, k, v, mask], verbose=0)
    np.testing.assert_allclose(got, reference(q, k, v, mask, 0.3), rtol=1e-5, atol=2e-6)


@pytest.mark.parametrize(
    "shapes, mask_shape, scale, match",
    [
        ([(2, 7, 2), (2, 5, 2, 8), (2, 5, 2, 8)], None, None, r"`query` must have rank 4"),
        ([(2, 7, 2, 8), (2, 5, 16), (2, 5, 2, 8)], None, None, r"`key` must have rank 4"),
        ([(2, 7, 2, 8), (3, 5, 2, 8), (3, 5, 2, 8)], None, None, r"`key` has batch size 3"),
        ([(2, 7, 2, 8), (2, 5, 2, 8), (2, 6, 2, 8)], None, None, r"same length and number"),
        ([(2, 7, 2, 8), (2, 5, 2, 4), (2, 5, 2, 8)], None, None, r"`key` has head_dim 4"),
        ([(2, 7, 2, 8), (2, 5, 2, 8), (2, 5, 2, 4)], None, None, r"`value` has head_dim 4"),
        ([(2, 7, 3, 8), (2, 5, 2, 8), (2, 5, 2, 8)], None, None, r"multiple of `key`'s 2"),
        ([(2, 7, 2, 8), (2, 5, 2, 8), (2, 5, 2, 8)], (2, 5), None, r"`mask` must have rank 4"),
        ([(2, 7, 2, 8), (2, 5, 2, 8), (2, 5, 2, 8)], (2, 1, 7, 4), None, r"received shape \(2"),
        ([(2, 7, 2, 8), (2, 5, 2, 8), (2, 5, 2, 8)], None, float("nan"), r"`scale` must be"),
        ([(2, 7, 2, 8), (2, 5, 2, 8), (2, 5, 2, 8)], None, "0.5", r"`scale` must be a float"),
        ([(2, 7, 2, 8), (2, 5, 2, 8), (2, 5, 2, 8)], None, True, r"`scale` must be a float"),
    ],
)
def test_bad_input_is_a_clear_value_error(shapes, mask_shape, scale, match):
    q, k, v = (np.zeros(s, "float32") for s in shapes)
    mask = None if mask_shape is None else np.ones(mask_shape, bool)
    with pytest.raises(ValueError, match=match):
        dot_product_attention(q, k, v, mask=mask, scale=scale)


def test_docstring_example():
    result = doctest.testmod(attention, extraglobs={"keras": keras})
    assert result.attempted >= 1 and result.failed == 0


@pytest.mark.backends("jax", "tensorflow")
def test_traced_lengths_known_block_and_unknown_run_keras():
    # Compiled with every size known the blocked path runs; with the query length unknown
    # (a shape-polymorphic export, a TensorFlow signature of None) keras's function does.
    q, k, v = inputs(LONG, keys=5)
    names = []

    def f(q, k, v):
        names.append(attention.implementation(q, k, v).name)
        return dot_product_attention(q, k, v, scale=0.3)

    if keras.backend.backend() == "jax":
        import jax
        from jax import export

        static = jax.jit(f)(q, k, v)
        b, t = export.symbolic_shape("b, t")
        specs = [jax.ShapeDtypeStruct(s, "float32") for s in ((b, t, 2, 8), (b, 5, 2, 8))]
        dynamic = export.export(jax.jit(f))(specs[0], specs[1], specs[1]).call(q, k, v)
    else:
        import tensorflow as tf

        static = tf.function(f)(q, k, v)
        spec = tf.TensorSpec((None, None, 2, 8), tf.float32)
        dynamic = tf.function(f, input_signature=[spec] * 3)(q, k, v)
    assert names == [expected_name(), "keras"]
    want = reference(q, k, v, None, 0.3)
    for got in (static, dynamic):
        np.testing.assert_allclose(numpy(got), want, rtol=1e-5, atol=2e-6)


def test_kzoo_info_descriptions_state_the_threshold_and_block():
    described = {i.name: i for i in dispatch.candidates(attention.OP)}
    assert set(BLOCKED.values()) <= set(described)
    for name in BLOCKED.values():
        assert f">= {MIN_QUERIES} queries" in described[name].description
    if keras.backend.backend() in BLOCKED:
        impl = described[BLOCKED[keras.backend.backend()]]
        block = importlib.import_module(impl.target.partition(":")[0]).BLOCK
        assert f"blocks of <= {block} queries" in impl.description
