"""DETR under the mixed_bfloat16 policy: bfloat16 layers, float32 matching cost and losses."""

import keras
import numpy as np
import pytest

from kzoo.data.detection import SyntheticDetection
from kzoo.models.detr.training.loss import DETRLoss
from tests.models.detr.coco_files import tiny_detr

slow_unless_torch = pytest.mark.slow if keras.backend.backend() != "torch" else (lambda f: f)
# Eager JAX compiles every op of the first call: ~20 s here.
slow_on_jax = pytest.mark.slow if keras.backend.backend() == "jax" else (lambda f: f)


@pytest.fixture
def mixed_bfloat16():
    before = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_bfloat16")
    yield
    keras.config.set_dtype_policy(before)


def _batch():
    data = SyntheticDetection(num_images=4, image_size=64, batch_size=4, max_objects=3, seed=2)
    return data[0]


@slow_on_jax
def test_layers_compute_in_bfloat16_while_cost_and_loss_stay_float32(mixed_bfloat16):
    x, y = _batch()
    model = tiny_detr()
    assert all(v.dtype == "float32" for v in model.weights)
    out = model(x)
    assert keras.backend.standardize_dtype(out["logits"].dtype) == "bfloat16"
    loss = DETRLoss()
    terms = loss.components(y, out)
    for values in terms.values():
        for value in values:
            assert keras.backend.standardize_dtype(value.dtype) == "float32"
    cost = loss.matcher.cost_matrix(out["logits"], out["boxes"], y["boxes"], y["labels"])
    assert keras.backend.standardize_dtype(cost.dtype) == "float32"
    # The same weights in float32 give the same loss up to bfloat16's rounding of the layers.
    keras.config.set_dtype_policy("float32")
    reference = tiny_detr()
    reference.set_weights(model.get_weights())
    expected = float(keras.ops.convert_to_numpy(loss(y, reference(x))))
    got = float(keras.ops.convert_to_numpy(loss(y, out)))
    assert abs(got - expected) / expected < 0.03, (got, expected)


@slow_unless_torch
def test_fit_under_mixed_bfloat16(mixed_bfloat16):
    x, y = _batch()
    model = tiny_detr()
    model.compile()
    history = model.fit(x, y, batch_size=2, epochs=3, shuffle=False, verbose=0)
    losses = history.history["loss"]
    assert np.isfinite(losses).all() and losses[-1] < losses[0]
    assert all(v.dtype == "float32" for v in model.trainable_variables)
