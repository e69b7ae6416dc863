"""kzoo.layers.RMSNormalization against keras's layer and a float64 numpy reference.

What it shares with LayerNormalization (loading keras's weights, the residual call) is tested
for both layers in ``test_layer_normalization.py``.
"""

import keras
import numpy as np
import pytest

from kzoo.layers import RMSNormalization


def reference(x, axes, scale=None, epsilon=1e-6):
    """RMS norm in float64; ``scale`` is shaped like the normalised axes."""
    x = np.asarray(x, np.float64)
    axes = tuple(sorted(a % x.ndim for a in axes))
    out = x / np.sqrt((x**2).mean(axis=axes, keepdims=True) + epsilon)
    if scale is not None:
        out = out * np.asarray(scale, np.float64).reshape(
            [x.shape[a] if a in axes else 1 for a in range(x.ndim)]
        )
    return out


def _random_weights(layer, seed=0):
    rng = np.random.default_rng(seed)
    layer.set_weights([rng.normal(1.0, 0.5, w.shape).astype("float32") for w in layer.weights])


@pytest.mark.parametrize(
    "shape, kwargs",
    [
        ((4, 16), {}),
        ((2, 5, 6), {"axis": [1, 2]}),
        ((2, 5, 6), {"axis": [-2, -1], "epsilon": 1e-5}),
        ((3, 2, 7), {"axis": 2, "epsilon": 0.1}),
    ],
)
def test_matches_keras_layer(shape, kwargs):
    # A drop-in: same weight (name, shape), same config, same outputs within 1e-6 in float32.
    x = np.random.default_rng(1).normal(0.5, 2.0, shape).astype("float32")
    ours, theirs = RMSNormalization(**kwargs), keras.layers.RMSNormalization(**kwargs)
    ours.build(shape)
    theirs.build(shape)
    assert [(w.path.split("/")[-1], tuple(w.shape)) for w in ours.weights] == [
        (w.path.split("/")[-1], tuple(w.shape)) for w in theirs.weights
    ]
    _random_weights(theirs)
    ours.set_weights(theirs.get_weights())
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(ours(x)),
        keras.ops.convert_to_numpy(theirs(x)),
        rtol=1e-6,
        atol=1e-6,
    )
    ours_config, theirs_config = ours.get_config(), theirs.get_config()
    for key in ("axis", "epsilon"):
        assert ours_config[key] == theirs_config[key]
    # keras's config builds kzoo's layer.
    clone = RMSNormalization.from_config(theirs_config)
    clone.build(shape)
    clone.set_weights(theirs.get_weights())
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(clone(x)), keras.ops.convert_to_numpy(theirs(x)), atol=1e-6
    )


@pytest.mark.parametrize(
    "shape, axis",
    [
        ((2, 4, 3, 5), 1),  # channels-first: keras multiplies the scale along the last axis
        ((2, 4, 5, 4), 1),  # ... silently wrong when W == C
        ((2, 4, 3, 5), [1, 3]),
        ((3, 4, 5), [0, 2]),
    ],
)
def test_matches_float64_on_every_axis(shape, axis):
    x = np.random.default_rng(2).normal(1.0, 3.0, shape).astype("float32")
    layer = RMSNormalization(axis=axis, epsilon=1e-5)
    layer.build(shape)
    _random_weights(layer)
    axes = [axis] if isinstance(axis, int) else axis
    out = keras.ops.convert_to_numpy(layer(x))
    assert out.dtype == np.float32 and out.shape == shape
    np.testing.assert_allclose(
        out, reference(x, axes, layer.scale.numpy(), 1e-5), rtol=1e-5, atol=1e-5
    )


def test_trains_with_a_residual_in_a_functional_model_and_round_trips(tmp_path):
    x_in, r_in = keras.Input((5, 8)), keras.Input((5, 8))
    normed, total = RMSNormalization(name="norm")(x_in, residual=r_in)
    outputs = keras.layers.Dense(2)(
        keras.layers.Flatten()(keras.layers.Concatenate()([normed, total]))
    )
    model = keras.Model([x_in, r_in], outputs)
    model.compile(optimizer=keras.optimizers.SGD(0.5), loss="mse")
    rng = np.random.default_rng(5)
    x, r = (rng.normal(size=(16, 5, 8)).astype("float32") for _ in range(2))
    y = rng.normal(size=(16, 2)).astype("float32")
    before = model.get_layer("norm").scale.numpy().copy()
    model.fit([x, r], y, epochs=2, batch_size=8, verbose=0)
    assert not np.allclose(model.get_layer("norm").scale.numpy(), before)
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert isinstance(loaded.get_layer("norm"), RMSNormalization)
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(loaded([x, r])),
        keras.ops.convert_to_numpy(model([x, r])),
        atol=1e-6,
    )


def test_mixed_precision_keeps_the_scale_in_float32():
    x = np.random.default_rng(7).normal(3.0, 2.0, (3, 40)).astype("float32")
    layer = RMSNormalization(dtype="mixed_bfloat16")
    out = layer(keras.ops.cast(x, "bfloat16"))
    assert keras.backend.standardize_dtype(out.dtype) == "bfloat16"
    assert keras.backend.standardize_dtype(layer.scale.dtype) == "float32"
    rounded = keras.ops.convert_to_numpy(keras.ops.cast(keras.ops.cast(x, "bfloat16"), "float32"))
    got = keras.ops.convert_to_numpy(keras.ops.cast(out, "float32"))
    np.testing.assert_allclose(got, reference(rounded, [-1]), atol=2e-2)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"axis": "channels"}, "`axis`"),
        ({"axis": [1, 1]}, "more than once"),
        ({"epsilon": -1.0}, "`epsilon`"),
        ({"epsilon": True}, "`epsilon`"),
    ],
)
def test_bad_arguments_are_clear_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        RMSNormalization(**kwargs)


@pytest.mark.parametrize(
    "axis, shape, match",
    [(4, (2, 3, 4, 5), "out of range"), ([1, -3], (2, 3, 4, 5), "more than once")],
)
def test_bad_axes_are_clear_errors(axis, shape, match):
    with pytest.raises(ValueError, match=match):
        RMSNormalization(axis=axis).build(shape)


def test_residual_of_another_shape_is_a_clear_error():
    layer = RMSNormalization()
    with pytest.raises(ValueError, match="`residual` has shape"):
        layer(np.ones((2, 4), "float32"), residual=np.ones((2, 3), "float32"))
    with pytest.raises(ValueError, match="`residual` has shape"):
        layer(keras.Input((4,)), residual=keras.Input((3,)))


@pytest.mark.parametrize("epsilon", [0, 0.0, 1e-40])
def test_an_epsilon_that_leaves_zero_rows_nan_is_refused(epsilon):
    # Issue #24, item 11: with epsilon=0 an all-zero row is 0 * rsqrt(0) = NaN (keras's layer
    # returns NaN too); 1e-40 is 0 in the float32 statistics (or flushed to 0 on a GPU).
    with pytest.raises(
        ValueError, match="`epsilon` must be a finite float of at least 2\\*\\*-126"
    ):
        RMSNormalization(epsilon=epsilon)


def test_an_all_zero_row_normalises_to_zero_at_the_smallest_epsilon():
    # At the smallest epsilon accepted an all-zero row gives exactly 0 and the other rows
    # match keras's layer (given the same epsilon) and float64, through the plain and the
    # residual call (x + residual is zero on that row).
    from kzoo.ops.layer_norm import MIN_EPSILON

    rng = np.random.default_rng(3)
    x = rng.normal(size=(3, 8)).astype("float32")
    x[1] = 0.0
    ours = RMSNormalization(epsilon=MIN_EPSILON)
    theirs = keras.layers.RMSNormalization(epsilon=MIN_EPSILON)
    theirs.build(x.shape)
    _random_weights(theirs)
    ours.build(x.shape)
    ours.set_weights(theirs.get_weights())
    got = keras.ops.convert_to_numpy(ours(x))
    np.testing.assert_array_equal(got[1], 0.0)
    np.testing.assert_allclose(got, keras.ops.convert_to_numpy(theirs(x)), rtol=1e-6, atol=1e-6)
    want = reference(x, [-1], theirs.get_weights()[0], epsilon=MIN_EPSILON)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
    y = rng.normal(size=x.shape).astype("float32")
    residual = x - y
    normed, total = (keras.ops.convert_to_numpy(t) for t in ours(y, residual=residual))
    np.testing.assert_array_equal(normed[1], 0.0)
    np.testing.assert_allclose(normed, want, rtol=1e-5, atol=1e-5)
