"""kzoo.layers.Dropout: keras's layer on TensorFlow and torch, 16-bit hash fields on JAX.

The mask's statistics are checked on a million elements: the drop fraction within five
standard deviations of the rate, and pairs of elements that share one hash (JAX) dropped
together as often as independent draws would be.
"""

import keras
import numpy as np
import pytest

from kzoo.backends import dispatch
from kzoo.layers import Dropout

N = 1 << 20


def _keep_probability(rate):
    """The keep probability the backend's implementation uses (what kept values divide by)."""
    if keras.backend.backend() == "jax":
        return (65536 - round(rate * 65536)) / 65536
    return 1.0 - rate


@pytest.mark.parametrize("rate", [0.1, 0.5, 0.73])
def test_drop_fraction_and_scale(rate):
    layer = Dropout(rate, seed=7)
    x = np.random.default_rng(0).uniform(1.0, 2.0, (4, N // 4)).astype("float32")
    y = keras.ops.convert_to_numpy(layer(x, training=True))
    dropped = y == 0
    sigma = np.sqrt(rate * (1 - rate) / N)
    assert abs(dropped.mean() - rate) < 5 * sigma
    np.testing.assert_allclose(y[~dropped], x[~dropped] / _keep_probability(rate), rtol=1e-6)


def test_inference_and_zero_rate_are_the_identity():
    x = np.random.default_rng(1).normal(size=(3, 5)).astype("float32")
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(Dropout(0.5)(x)), x)
    zero = Dropout(0.0)(x, training=True)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(zero), x)
    everything = Dropout(1.0)(x, training=True)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(everything), np.zeros_like(x))


def test_noise_shape_broadcasts_the_mask():
    layer = Dropout(0.5, noise_shape=(None, 1, 64), seed=3)
    x = np.ones((2, 7, 64), "float32")
    y = keras.ops.convert_to_numpy(layer(x, training=True))
    assert np.all(y == y[:, :1, :])
    assert 0 < (y == 0).mean() < 1


def test_seeding_matches_keras_conventions():
    x = np.ones((8, 512), "float32")
    a = keras.ops.convert_to_numpy(Dropout(0.3, seed=11)(x, training=True))
    b = keras.ops.convert_to_numpy(Dropout(0.3, seed=11)(x, training=True))
    np.testing.assert_array_equal(a, b)
    layer = Dropout(0.3, seed=11)
    first = keras.ops.convert_to_numpy(layer(x, training=True))
    second = keras.ops.convert_to_numpy(layer(x, training=True))
    assert np.mean(first != second) > 0.1  # the stream advances between calls


def test_config_round_trip():
    layer = Dropout(0.25, noise_shape=(None, 1), seed=5, name="drop")
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(layer))
    assert type(restored) is Dropout
    assert restored.get_config() == layer.get_config()


def test_in_a_compiled_training_step():
    """The mask is drawn inside ``fit`` (traced on every backend) and changes between steps."""
    inputs = keras.Input((256,))
    model = keras.Model(inputs, Dropout(0.5, seed=2)(keras.layers.Dense(256)(inputs)))
    model.compile(optimizer="sgd", loss="mse")
    x = np.ones((4, 256), "float32")
    history = model.fit(x, np.zeros((4, 256), "float32"), epochs=3, batch_size=4, verbose=0)
    losses = history.history["loss"]
    assert np.all(np.isfinite(losses)) and len(set(losses)) == 3


@pytest.mark.backends("jax")
def test_jax_uses_hash_fields_and_they_are_independent():
    assert dispatch.select("dropout").name == "threefry-16bit-fields"
    rate = 0.5
    y = keras.ops.convert_to_numpy(Dropout(rate, seed=9)(np.ones(N, "float32"), training=True))
    dropped = (y == 0).reshape(4, N // 4)  # row j: field j of every hash
    sigma = np.sqrt(rate**2 * (1 - rate**2) / (N // 4))
    for i in range(4):
        for j in range(i + 1, 4):
            both = np.mean(dropped[i] & dropped[j])
            assert abs(both - rate**2) < 5 * sigma, (i, j, both)


@pytest.mark.backends("jax")
def test_jax_threshold_is_within_a_field_step_of_the_rate():
    from kzoo.backends.jax.dropout import threshold

    for rate in (0.1, 0.25, 1e-6, 0.999):
        assert abs(threshold(rate) / 65536 - rate) <= 2**-17
    x = np.ones(16, "float32")
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(Dropout(1e-6)(x, training=True)), x
    )  # rounds to no drops at all
