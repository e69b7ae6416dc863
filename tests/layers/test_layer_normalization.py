"""kzoo.layers.LayerNormalization against keras's layer and a float64 numpy reference.

Weight loading and the residual call are shared with RMSNormalization and tested for both.
"""

import keras
import numpy as np
import pytest

from kzoo.layers import LayerNormalization, RMSNormalization


def reference(x, axes, gamma=None, beta=None, epsilon=1e-3):
    """Layer norm in float64; ``gamma``/``beta`` are shaped like the normalised axes."""
    x = np.asarray(x, np.float64)
    axes = tuple(sorted(a % x.ndim for a in axes))
    mean = x.mean(axis=axes, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=axes, keepdims=True)
    out = (x - mean) / np.sqrt(var + epsilon)
    shape = [x.shape[a] if a in axes else 1 for a in range(x.ndim)]
    if gamma is not None:
        out = out * np.asarray(gamma, np.float64).reshape(shape)
    if beta is not None:
        out = out + np.asarray(beta, np.float64).reshape(shape)
    return out


def _random_weights(layer):
    rng = np.random.default_rng(0)
    layer.set_weights([rng.normal(1.0, 0.5, w.shape).astype("float32") for w in layer.weights])


@pytest.mark.parametrize(
    "shape, axis",
    [
        ((3, 7), -1),
        ((2, 5, 6), [1, 2]),
        ((2, 4, 3, 5), 1),  # channels-first: keras 3.15 gets this wrong on torch
        ((2, 4, 5, 4), 1),  # ... and silently so when W == C
        ((2, 4, 3, 5), [1, 3]),
        ((2, 3, 4, 5), [-3, -2]),
        ((3, 4, 5), [0, 2]),
    ],
)
def test_matches_float64_on_every_axis(shape, axis):
    x = np.random.default_rng(1).normal(2.0, 3.0, shape).astype("float32")
    layer = LayerNormalization(axis=axis, epsilon=1e-5)
    layer.build(shape)
    _random_weights(layer)
    axes = [axis] if isinstance(axis, int) else axis
    out = keras.ops.convert_to_numpy(layer(x))
    ref = reference(x, axes, layer.gamma.numpy(), layer.beta.numpy(), 1e-5)
    assert out.dtype == np.float32 and out.shape == shape
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"axis": [1, 2], "epsilon": 1e-6},
        {"center": False},
        {"scale": False},
        {"center": False, "scale": False},
        {"rms_scaling": True},
    ],
)
def test_matches_keras_layer_on_trailing_axes(kwargs):
    x = np.random.default_rng(2).normal(0.5, 2.0, (4, 3, 6)).astype("float32")
    ours = LayerNormalization(**kwargs)
    with pytest.warns(UserWarning) if kwargs.get("rms_scaling") else _no_warning():
        theirs = keras.layers.LayerNormalization(**kwargs)
    ours.build(x.shape)
    theirs.build(x.shape)
    assert [w.path.split("/")[-1] for w in ours.weights] == [
        w.path.split("/")[-1] for w in theirs.weights
    ]
    _random_weights(theirs)
    ours.set_weights(theirs.get_weights())
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(ours(x)),
        keras.ops.convert_to_numpy(theirs(x)),
        rtol=2e-5,
        atol=2e-5,
    )
    assert ours.get_config()["axis"] == theirs.get_config()["axis"]


class _no_warning:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_large_mean_keeps_precision():
    # Values around 1e4 with unit spread: a one-pass variance (E[x^2] - E[x]^2) loses it all
    # (E[x^2] ~ 1e8 has a float32 spacing of 8); the float32 mean itself limits us to ~1e-3.
    x = (1e4 + np.random.default_rng(3).normal(0, 1, (2, 5, 64))).astype("float32")
    layer = LayerNormalization(axis=1, epsilon=1e-5)
    out = keras.ops.convert_to_numpy(layer(x))
    np.testing.assert_allclose(out, reference(x, [1], epsilon=1e-5), atol=1e-2)


def test_float16_and_mixed_precision():
    x = np.random.default_rng(4).normal(3.0, 2.0, (3, 40)).astype("float16")
    layer = LayerNormalization(dtype="mixed_float16")
    out = layer(x)
    assert keras.backend.standardize_dtype(out.dtype) == "float16"
    assert keras.backend.standardize_dtype(layer.gamma.dtype) == "float32"
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(out).astype("float64"), reference(x, [-1]), atol=1e-2
    )


def test_zero_rows_and_one_feature():
    layer = LayerNormalization()
    out = layer(np.zeros((0, 8), "float32"))
    assert tuple(out.shape) == (0, 8)
    # One feature: the centred value is 0, so the output is beta.
    layer = LayerNormalization(beta_initializer="ones")
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(layer(np.full((3, 1), 5.0, "float32"))), np.ones((3, 1))
    )


def test_negative_axis_follows_the_input_rank():
    # Like keras's layer: built on rank 3, a rank-2 input still normalises its last axis.
    layer = LayerNormalization(epsilon=1e-5)
    layer(np.ones((2, 3, 5), "float32"))
    x = np.random.default_rng(7).normal(size=(4, 5)).astype("float32")
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(layer(x)), reference(x, [-1], epsilon=1e-5), atol=1e-5
    )


def test_trains_in_a_functional_model_and_round_trips(tmp_path):
    inputs = keras.Input((4, 3, 3))
    h = LayerNormalization(axis=1, name="norm")(inputs)
    outputs = keras.layers.Dense(2)(keras.layers.Flatten()(h))
    model = keras.Model(inputs, outputs)
    model.compile(optimizer=keras.optimizers.SGD(0.5), loss="mse")
    rng = np.random.default_rng(5)
    x = rng.normal(size=(16, 4, 3, 3)).astype("float32")
    y = rng.normal(size=(16, 2)).astype("float32")
    before = model.get_layer("norm").gamma.numpy().copy()
    model.fit(x, y, epochs=2, batch_size=8, verbose=0)
    assert not np.allclose(model.get_layer("norm").gamma.numpy(), before)
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert isinstance(loaded.get_layer("norm"), LayerNormalization)
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(loaded(x)), keras.ops.convert_to_numpy(model(x)), atol=1e-6
    )


@pytest.mark.parametrize(
    "ours_cls, theirs_cls, weight, atol",
    [
        (LayerNormalization, keras.layers.LayerNormalization, "gamma", 2e-5),
        (RMSNormalization, keras.layers.RMSNormalization, "scale", 1e-6),
    ],
)
def test_loads_keras_layer_weights_and_rejects_wrong_shapes(
    tmp_path, ours_cls, theirs_cls, weight, atol
):
    def model_with(layer_cls, features):
        inputs = keras.Input((3, features))
        return keras.Model(inputs, layer_cls(name="norm")(inputs))

    theirs = model_with(theirs_cls, 6)
    _random_weights(theirs.get_layer("norm"))
    path = str(tmp_path / "norm.weights.h5")
    theirs.save_weights(path)
    ours = model_with(ours_cls, 6)
    ours.load_weights(path)
    x = np.random.default_rng(6).normal(size=(2, 3, 6)).astype("float32")
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(ours(x)), keras.ops.convert_to_numpy(theirs(x)), atol=atol
    )
    wrong = model_with(ours_cls, 5)
    with pytest.raises(ValueError, match=f"{weight}.*shape \\(6,\\).*expects \\(5,\\)"):
        wrong.load_weights(path)


def test_config_round_trip():
    layer = LayerNormalization(axis=[1, 3], epsilon=1e-4, center=False, name="n")
    clone = LayerNormalization.from_config(layer.get_config())
    assert clone.get_config() == layer.get_config()
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(layer))
    assert isinstance(restored, LayerNormalization) and restored.axis == [1, 3]


@pytest.mark.parametrize(
    "axis, shape, match",
    [
        (4, (2, 3, 4, 5), "out of range"),
        (-5, (2, 3, 4, 5), "out of range"),
        ([1, -3], (2, 3, 4, 5), "more than once"),
        (1, (2, 0, 4), "normalised size is 0"),
    ],
)
def test_bad_axes_are_clear_errors(axis, shape, match):
    with pytest.raises(ValueError, match=match):
        LayerNormalization(axis=axis).build(shape)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"axis": "channels"}, "`axis`"),
        ({"axis": [1, 1]}, "more than once"),
        ({"axis": []}, "`axis`"),
        ({"epsilon": -1.0}, "`epsilon`"),
        ({"center": "yes"}, "`center`"),
    ],
)
def test_bad_arguments_are_clear_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        LayerNormalization(**kwargs)


@pytest.mark.parametrize(
    "layer_cls, kwargs",
    [
        (LayerNormalization, {}),
        (LayerNormalization, {"axis": [1, 2], "center": False}),
        (LayerNormalization, {"rms_scaling": True}),
        (RMSNormalization, {}),
        (RMSNormalization, {"axis": 1}),
    ],
)
def test_residual_call_is_the_norm_of_the_sum(layer_cls, kwargs):
    # layer(x, residual=r) -> (layer(x + r), x + r): the fused residual step of a pre-norm block.
    rng = np.random.default_rng(8)
    x, r = (rng.normal(1.0, 2.0, (2, 5, 12)).astype("float32") for _ in range(2))
    layer = layer_cls(epsilon=1e-5, **kwargs)
    layer.build(x.shape)
    _random_weights(layer)
    normed, total = layer(x, residual=r)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(total), x + r)
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(normed),
        keras.ops.convert_to_numpy(layer(x + r)),
        rtol=1e-6,
        atol=1e-6,
    )


def test_residual_call_in_a_functional_model_trains():
    x_in, r_in = keras.Input((4, 6)), keras.Input((4, 6))
    normed, total = LayerNormalization(name="norm")(x_in, residual=r_in)
    assert tuple(normed.shape) == tuple(total.shape) == (None, 4, 6)
    model = keras.Model([x_in, r_in], keras.layers.Add()([normed, total]))
    model.compile(optimizer=keras.optimizers.SGD(0.5), loss="mse")
    rng = np.random.default_rng(9)
    x, r, y = (rng.normal(size=(8, 4, 6)).astype("float32") for _ in range(3))
    before = model.get_layer("norm").beta.numpy().copy()
    model.fit([x, r], y, epochs=2, batch_size=4, verbose=0)
    assert not np.allclose(model.get_layer("norm").beta.numpy(), before)
    got = keras.ops.convert_to_numpy(model([x, r]))
    norm = model.get_layer("norm")
    want = reference(x + r, [-1], norm.gamma.numpy(), norm.beta.numpy()) + x + r
    np.testing.assert_allclose(got, want, atol=1e-5)


@pytest.mark.parametrize("layer_cls", [LayerNormalization, RMSNormalization])
@pytest.mark.parametrize("epsilon", [0, 1e-40, "1e-3", None])
def test_epsilon_must_keep_zero_rows_finite(layer_cls, epsilon):
    # Issue #24, item 11: epsilon=0 turned a zero-variance row into NaN. A non-number is also
    # a TypeError, the class keras raises when it first uses such an epsilon.
    with pytest.raises(ValueError, match="`epsilon`") as error:
        layer_cls(epsilon=epsilon)
    assert isinstance(error.value, TypeError) == (not isinstance(epsilon, (int, float)))


@pytest.mark.parametrize("rms_scaling", [False, True])
def test_an_all_zero_row_at_the_smallest_epsilon_gives_beta(rms_scaling):
    # At the smallest epsilon accepted an all-zero row normalises to 0, so the output is beta
    # (0 without it), where keras's layer with epsilon=0 gives NaN; the other rows match
    # keras's layer and float64. (A constant row of other values only has variance 0 when its
    # float32 mean is exact, so it is not a case to promise anything about.)
    from kzoo.ops.layer_norm import MIN_EPSILON

    rng = np.random.default_rng(4)
    x = rng.normal(size=(3, 6)).astype("float32")
    x[1] = 0.0
    kwargs = {"epsilon": MIN_EPSILON, "rms_scaling": rms_scaling}
    ours, theirs = LayerNormalization(**kwargs), keras.layers.LayerNormalization(**kwargs)
    theirs.build(x.shape)
    _random_weights(theirs)
    ours.build(x.shape)
    ours.set_weights(theirs.get_weights())
    got = keras.ops.convert_to_numpy(ours(x))
    gamma, beta = (theirs.get_weights() + [None])[:2]
    np.testing.assert_array_equal(got[1], 0.0 if rms_scaling else beta)
    np.testing.assert_allclose(got, keras.ops.convert_to_numpy(theirs(x)), rtol=1e-5, atol=1e-5)
    if rms_scaling:
        # keras's deprecated variant: x * rsqrt(var + epsilon) * gamma, without centring.
        x64 = x.astype(np.float64)
        want = x64 / np.sqrt(x64.var(axis=-1, keepdims=True) + MIN_EPSILON) * gamma
    else:
        want = reference(x, [-1], gamma, beta, epsilon=MIN_EPSILON)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
