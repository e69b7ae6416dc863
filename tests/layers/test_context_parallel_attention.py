"""ContextParallelAttention: keras's own attention layers are the single-device reference; under
ContextParallel on 8 virtual devices (JAX) it must give the single-device outputs and gradients."""

import keras
import numpy as np
import pytest

from kzoo.distribution import pack_documents
from kzoo.layers import ContextParallelAttention


def _x(b=2, s=16, d=12, seed=0):
    return np.random.default_rng(seed).normal(size=(b, s, d)).astype("float32")


def _mask(b=2, s=16, seed=1):
    mask = np.random.default_rng(seed).random((b, s)) > 0.3
    mask[:, 0] = True  # every causal query sees at least one key (keras averages otherwise)
    return mask


def test_matches_keras_multi_head_attention():
    x, y, mask = _x(), _x(s=16, seed=2), _mask()
    for causal in (False, True):
        _check_against_keras_mha(x, y, mask, causal)


def _check_against_keras_mha(x, y, mask, causal):
    # keras's MultiHeadAttention fails on JAX when value_dim != key_dim; that case is checked
    # against float64 numpy below.
    ref = keras.layers.MultiHeadAttention(num_heads=3, key_dim=4, output_shape=7)
    layer = ContextParallelAttention(num_heads=3, key_dim=4, output_shape=7, causal=causal)
    full_mask = np.broadcast_to(mask[:, None, :], (2, 16, 16))
    expected = ref(x, y, attention_mask=full_mask, use_causal_mask=causal)
    layer.build(x.shape, y.shape)
    assert [w.shape for w in layer.weights] == [w.shape for w in ref.weights]
    layer.set_weights(ref.get_weights())
    got = layer(x, y, attention_mask=mask)
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(got), keras.ops.convert_to_numpy(expected), atol=2e-5
    )
    assert got.shape == (2, 16, 7)


def test_documents_and_window_match_keras_multi_head_attention_with_the_full_mask():
    # keras's layer takes the whole (batch, q, k) mask: same document, causal, in the window.
    x = _x()
    segments, _ = pack_documents([[5, 8, 3], [16]], 16)
    ref = keras.layers.MultiHeadAttention(num_heads=3, key_dim=4)
    layer = ContextParallelAttention(num_heads=3, key_dim=4, causal=True, window_size=4)
    distance = np.arange(16)[:, None] - np.arange(16)[None, :]
    full_mask = (segments[:, :, None] == segments[:, None, :]) & (distance >= 0) & (distance < 4)
    expected = ref(x, x, attention_mask=full_mask)
    layer.build(x.shape, x.shape)
    layer.set_weights(ref.get_weights())
    got = layer(x, x, segment_ids=segments)
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(got), keras.ops.convert_to_numpy(expected), atol=2e-5
    )
    # Without the documents and window the outputs differ: the masks matter here.
    plain = ContextParallelAttention(num_heads=3, key_dim=4, causal=True)
    plain.build(x.shape, x.shape)
    plain.set_weights(ref.get_weights())
    assert np.max(np.abs(keras.ops.convert_to_numpy(plain(x, x) - got))) > 1e-3


def test_bad_segment_ids_are_value_errors_before_any_projection():
    layer = ContextParallelAttention(num_heads=2, key_dim=4, causal=True)
    x = _x()
    for segments, match in (
        (np.zeros((2, 16), "float32"), "integer document ids"),
        (np.zeros((2, 15), "int32"), "shape \\(batch, seq_len\\)"),
        (np.zeros((1, 16), "int32"), "shape \\(batch, seq_len\\)"),
    ):
        with pytest.raises(ValueError, match=match):
            layer(x, x, segment_ids=segments)
    cross = ContextParallelAttention(num_heads=2, key_dim=4)
    with pytest.raises(ValueError, match="same length"):
        cross(x, _x(s=8), segment_ids=np.zeros((2, 16), "int32"))


def test_grouped_query_value_dim_and_key_match_float64_numpy():
    q_in, k_in, v_in, mask = _x(seed=3), _x(seed=4), _x(seed=5), _mask()
    layer = ContextParallelAttention(num_heads=4, key_dim=3, value_dim=5, num_key_value_heads=2)
    out = keras.ops.convert_to_numpy(layer(q_in, v_in, key=k_in, attention_mask=mask))
    wq, bq, wk, bk, wv, bv, wo, bo = (np.asarray(w, np.float64) for w in layer.get_weights())
    q = np.einsum("bsd,dhk->bshk", q_in, wq) + bq
    k = np.repeat(np.einsum("bsd,dhk->bshk", k_in, wk) + bk, 2, axis=2)
    v = np.repeat(np.einsum("bsd,dhk->bshk", v_in, wv) + bv, 2, axis=2)
    s = np.einsum("bqhk,bshk->bhqs", q, k) / np.sqrt(3)
    s = np.where(mask[:, None, None, :], s, -np.inf)
    p = np.exp(s - s.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    ref = np.einsum("bhqs,bshv,hvo->bqo", p, v, wo) + bo
    np.testing.assert_allclose(out, ref, atol=2e-5)


def test_config_round_trip_and_serialization():
    # The same configuration and shapes as the float64 test, so eager JAX reuses its compiles.
    layer = ContextParallelAttention(
        num_heads=4, key_dim=3, value_dim=5, num_key_value_heads=2, causal=True, window_size=6
    )
    q, k, v = _x(seed=3), _x(seed=4), _x(seed=5)
    out = layer(q, v, key=k)
    clone = ContextParallelAttention.from_config(layer.get_config())
    clone.build(q.shape, v.shape, k.shape)
    clone.set_weights(layer.get_weights())
    assert clone.causal and clone.num_key_value_heads == 2 and clone.value_dim == 5
    assert clone.window_size == 6
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(clone(q, v, key=k)), keras.ops.convert_to_numpy(out), atol=1e-6
    )
    inputs = keras.Input((16, 12))
    model = keras.Model(inputs, layer(inputs, inputs))
    assert model.output.shape == (None, 16, 12)
    restored = keras.models.model_from_json(model.to_json())
    assert restored.layers[-1].get_config() == layer.get_config()


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"num_heads": 0, "key_dim": 4}, "num_heads"),
        ({"num_heads": 4, "key_dim": 4, "num_key_value_heads": 3}, "num_key_value_heads"),
        ({"num_heads": 4, "key_dim": -1}, "key_dim"),
        ({"num_heads": 4, "key_dim": 4, "output_shape": 0}, "output_shape"),
        ({"num_heads": 4, "key_dim": 4, "causal": True, "window_size": 0}, "at least 1"),
        ({"num_heads": 4, "key_dim": 4, "causal": True, "window_size": "8"}, "positive integer"),
        ({"num_heads": 4, "key_dim": 4, "window_size": 8}, "needs causal=True"),
    ],
)
def test_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ContextParallelAttention(**kwargs)


@pytest.mark.backends("jax")
def test_context_parallel_matches_single_device_outputs_and_all_gradients():
    # One configuration (packed documents, ring): the weight gradients only differ between the
    # modes through the attention op, whose meshes, strategies and masks
    # tests/ops/test_ring_attention.py covers.
    mesh, causal = (2, 4), True
    import jax

    from kzoo.distribution import ContextParallel

    b, s, d = 2, 32, 12
    x, mask = _x(b, s, d), _mask(b, s)
    segments = pack_documents([[7, 20, 5], [30]], s)[0]
    cot = np.random.default_rng(9).normal(size=(b, s, d)).astype("float32")
    layer = ContextParallelAttention(num_heads=4, key_dim=4, num_key_value_heads=2, causal=causal)
    layer.build(x.shape, x.shape)
    weights = [np.asarray(w) for w in layer.get_weights()]

    def make_grad_fn():
        # A fresh function per mode: jax.jit caches traces by function, and the distribution
        # is read while tracing.
        def loss(trainable, x, mask, segments, cot):
            out, _ = layer.stateless_call(
                trainable, [], x, x, attention_mask=mask, segment_ids=segments
            )
            return jax.numpy.sum(out * cot), out

        return jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))

    (_, out_ref), (dw_ref, dx_ref) = make_grad_fn()(weights, x, mask, segments, cot)

    cp = ContextParallel(keras.distribution.DeviceMesh(mesh, ["batch", "context"]))
    order = [cp.to_layout_order(a) for a in (x, mask, segments, cot)]
    with cp.scope():
        (_, out_cp), (dw_cp, dx_cp) = make_grad_fn()(weights, *order)
        # Packed documents still in natural order are refused before anything is computed.
        with pytest.raises(ValueError, match="not in the layout order"):
            layer(order[0], order[0], segment_ids=segments)
    np.testing.assert_array_less(
        np.max(np.abs(cp.from_layout_order(np.asarray(out_cp)) - np.asarray(out_ref))), 1e-4
    )
    np.testing.assert_array_less(
        np.max(np.abs(cp.from_layout_order(np.asarray(dx_cp)) - np.asarray(dx_ref))), 1e-4
    )
    assert len(dw_cp) == len(layer.trainable_weights) == 8
    for var, a, b_ in zip(layer.trainable_weights, dw_cp, dw_ref):
        assert np.max(np.abs(np.asarray(a) - np.asarray(b_))) <= 1e-4, var.path
        if not var.path.endswith("key/bias"):  # softmax ignores a key bias: its gradient is 0
            assert np.max(np.abs(np.asarray(b_))) > 1e-3, var.path


@pytest.mark.backends("jax")
def test_eager_calls_under_context_parallel_reuse_one_compiled_program(monkeypatch):
    # Issue #24, item 4: a notebook calls the layer eagerly; the second call of one shape must
    # not trace (and run op by op) the sharded attention again. Inside a jitted function
    # (keras's fit/predict steps) the attention is traced into that function, not cached.
    import jax

    from kzoo.backends.jax import sharded as jr
    from kzoo.distribution import ContextParallel

    traces, sharded = [], jr.over_mesh

    def counting(fn, *args):
        def body(*a):
            traces.append(fn)
            return fn(*a)

        return sharded(body, *args)

    monkeypatch.setattr(jr, "over_mesh", counting)
    x = _x(2, 24, 12, seed=4)
    layer = ContextParallelAttention(num_heads=4, key_dim=4, num_key_value_heads=2, causal=True)
    ref = np.asarray(layer(x, x))
    cp = ContextParallel(keras.distribution.DeviceMesh((2, 4), ["batch", "context"]))
    xl = cp.to_layout_order(x)
    with cp.scope():
        first, second = (np.asarray(layer(xl, xl)) for _ in range(2))
    assert len(traces) == 1
    for out in (first, second):
        np.testing.assert_allclose(cp.from_layout_order(out), ref, atol=1e-5)
    before = jr.eager_cache_info()
    weights = [np.asarray(w) for w in layer.trainable_weights]
    with cp.scope():
        jitted = jax.jit(lambda w, x: layer.stateless_call(w, [], x, x)[0])(weights, xl)
    assert len(traces) == 2
    assert jr.eager_cache_info() == before
    np.testing.assert_allclose(cp.from_layout_order(np.asarray(jitted)), ref, atol=1e-5)
