"""kzoo.ops.dense (``x @ kernel + bias`` through the dispatch) and DETR's dense layers built on it,
against float64 numpy and keras's own ``Dense``."""

import keras
import numpy as np
import pytest

from kzoo.backends import dispatch
from kzoo.models.detr.model.transformer import _dense
from kzoo.ops.dense import dense

EXPECTED = {"torch": "torch-addmm", "jax": "keras", "tensorflow": "keras"}


def _data(shape, units=5, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=shape).astype("float32")
    kernel = rng.normal(size=(shape[-1], units)).astype("float32")
    bias = rng.normal(size=units).astype("float32")
    return x, kernel, bias


@pytest.mark.parametrize("shape", [(7, 6), (2, 9, 6), (2, 3, 4, 6)], ids=["2d", "3d", "4d"])
@pytest.mark.parametrize("with_bias", [True, False], ids=["bias", "no-bias"])
def test_matches_float64(shape, with_bias):
    x, kernel, bias = _data(shape)
    got = keras.ops.convert_to_numpy(dense(x, kernel, bias if with_bias else None))
    expected = x.astype(np.float64) @ kernel.astype(np.float64)
    if with_bias:
        expected = expected + bias
    assert got.shape == (*shape[:-1], 5) and got.dtype == np.float32
    # Sums of 6 products of O(1) numbers in float32.
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_the_dispatch_picks_the_backends_choice_and_kernels_off_runs_keras(monkeypatch):
    assert dispatch.select("dense").name == EXPECTED[keras.backend.backend()]
    x, kernel, bias = _data((2, 9, 6))
    monkeypatch.setenv("KZOO_KERNELS", "off")
    assert dispatch.select("dense").name == "keras"
    got = keras.ops.convert_to_numpy(dense(x, kernel, bias))
    expected = keras.ops.convert_to_numpy(keras.ops.add(keras.ops.matmul(x, kernel), bias))
    np.testing.assert_array_equal(got, expected)


def _pair(seed=3):
    """DETR's dense layer and keras's Dense with the same weights."""
    ours = _dense(5, "q_proj")
    theirs = keras.layers.Dense(5)
    for layer in (ours, theirs):
        layer.build((None, 6))
    rng = np.random.default_rng(seed)
    for a, b in zip(ours.weights, theirs.weights):
        value = rng.normal(size=a.shape).astype("float32")
        a.assign(value)
        b.assign(value)
    return ours, theirs


def test_detr_dense_is_keras_dense_with_the_same_weights_and_names():
    ours, theirs = _pair()
    assert isinstance(ours, keras.layers.Dense)
    assert [w.path for w in ours.weights] == ["q_proj/kernel", "q_proj/bias"]
    x = np.random.default_rng(1).normal(size=(2, 9, 6)).astype("float32")
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(ours(x)), keras.ops.convert_to_numpy(theirs(x)), atol=1e-6
    )
    assert ours.get_config()["units"] == 5


def test_detr_dense_trains_like_keras_dense():
    """Gradients of the same loss reach the same kernel and bias values (torch: through addmm)."""
    x = np.random.default_rng(2).normal(size=(4, 6)).astype("float32")
    y = np.random.default_rng(3).normal(size=(4, 5)).astype("float32")
    trained = []
    for layer in _pair():
        model = keras.Sequential([keras.Input((6,)), layer])
        model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
        model.fit(x, y, epochs=2, batch_size=4, verbose=0, shuffle=False)
        trained.append([keras.ops.convert_to_numpy(w) for w in layer.weights])
    for a, b in zip(*trained):
        np.testing.assert_allclose(a, b, atol=1e-6)


def test_detr_dense_under_mixed_precision_computes_in_the_policys_dtype():
    ours, theirs = _pair()
    x = np.random.default_rng(4).normal(size=(2, 9, 6)).astype("float32")
    for layer in (ours, theirs):
        layer.dtype_policy = keras.DTypePolicy("mixed_bfloat16")
    got, expected = ours(x), theirs(x)
    assert keras.backend.standardize_dtype(got.dtype) == "bfloat16"
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(keras.ops.cast(got, "float32")),
        keras.ops.convert_to_numpy(keras.ops.cast(expected, "float32")),
        atol=0.1,
    )
