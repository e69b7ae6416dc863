"""kzoo.models.DETRHead: DETR's head on any feature map, serializable, with its loss."""

import keras
import numpy as np
import pytest

import kzoo
from kzoo.models import DETR, DETRHead
from kzoo.models.detr.model.postprocess import outputs_to_detections
from kzoo.models.detr.training.loss import DETRLoss

ARGS = dict(
    num_classes=3,
    num_queries=5,
    d_model=16,
    num_heads=4,
    num_encoder_layers=1,
    num_decoder_layers=2,
    ffn_dim=24,
    dropout=0.0,
)


# On JAX a DETR's predict is an XLA compilation of tens of seconds on a shared 2-core machine:
# that test runs on JAX in the slow step (which runs under JAX) and in the TensorFlow and torch
# runs.
slow_on_jax = pytest.mark.slow if keras.backend.backend() == "jax" else (lambda f: f)


def _np(x):
    return np.asarray(keras.ops.convert_to_numpy(x))


def _features(seed=0, shape=(2, 3, 4, 40)):
    return np.random.default_rng(seed).normal(size=shape).astype("float32")


def _mask():
    mask = np.ones((2, 3, 4), bool)
    mask[1, 2:] = False
    mask[1, :, 3:] = False
    return mask


@pytest.fixture(scope="module")
def head():
    layer = DETRHead(**ARGS)
    layer.build((None, None, None, 40))
    return layer


@slow_on_jax
def test_is_what_detr_runs_after_its_backbone():
    keras.utils.set_random_seed(0)
    model = DETR(**ARGS, backbone="small", padding_invariant=False)
    images = np.random.default_rng(1).normal(size=(2, 70, 100, 3)).astype("float32")
    pixel_mask = np.ones((2, 70, 100), "float32")
    pixel_mask[1, 40:] = 0
    out = model.predict_on_batch({"images": images, "pixel_mask": pixel_mask})
    # The same head, called on the backbone's features and the pixel mask's nearest resize.
    features = model.backbone(images)
    rows, cols = np.arange(3) * 70 // 3, np.arange(4) * 100 // 4
    mask = pixel_mask[:, rows][:, :, cols] > 0
    assert not mask[1].all() and mask[0].all()
    alone = model.head(features, mask)
    for key in ("logits", "boxes", "aux_logits", "aux_boxes"):
        np.testing.assert_allclose(_np(out[key]), _np(alone[key]), rtol=1e-5, atol=1e-5)
    assert isinstance(model.head, kzoo.models.DETRHead)


def test_output_shapes_and_masked_positions_are_ignored(head):
    features = _features()
    out = head(features, _mask())
    assert tuple(out["logits"].shape) == (2, 5, 4)
    assert tuple(out["boxes"].shape) == (2, 5, 4)
    assert tuple(out["aux_logits"].shape) == (2, 1, 5, 4)
    assert tuple(out["aux_boxes"].shape) == (2, 1, 5, 4)
    # What lies under the mask does not matter: the second image alone, cropped to its extent,
    # gives the same outputs. A 0/1 float mask means the same as a boolean one.
    junk = features.copy()
    junk[1, 2:] = 100.0
    junk[1, :, 3:] = -100.0
    cropped = head(features[1:, :2, :3], None)
    padded = head(junk, _mask().astype("float32"))
    for key in out:
        np.testing.assert_allclose(_np(padded[key])[1], _np(out[key])[1], rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(_np(cropped[key])[0], _np(out[key])[1], rtol=1e-4, atol=1e-4)
    spec = head.compute_output_spec(keras.KerasTensor((None, 7, 9, 40)))
    assert spec["aux_boxes"].shape == (None, 1, 5, 4)


def test_loss_and_detections_come_with_the_head(head):
    out = head(_features(), _mask())
    targets = {
        "boxes": np.array([[[0.5, 0.5, 0.2, 0.2]], [[0.3, 0.4, 0.2, 0.1]]], "float32"),
        "labels": np.array([[1], [2]], "int32"),
    }
    loss = float(_np(head.compute_loss(targets, out)))
    assert loss == pytest.approx(float(_np(DETRLoss()(targets, out))), rel=1e-6)
    # The head's loss knows its number of classes.
    wrong = {**out, "logits": out["logits"][..., :3], "aux_logits": out["aux_logits"][..., :3]}
    with pytest.raises(ValueError, match="num_classes=3"):
        head.compute_loss(targets, wrong)
    found = head.detections(out, target_sizes=[[96, 128], [64, 96]], threshold=0.0)
    expected = outputs_to_detections(
        _np(out["logits"]), _np(out["boxes"]), [[96, 128], [64, 96]], threshold=0.0
    )
    for got, want in zip(found, expected):
        for key in ("boxes", "scores", "labels"):
            np.testing.assert_array_equal(got[key], want[key])


def test_config_round_trip_and_keras_file_of_a_functional_model(head, tmp_path):
    config = head.get_config()
    assert {k: config[k] for k in ARGS} == ARGS
    assert keras.saving.get_registered_name(DETRHead) == "kzoo>DETRHead"
    clone = DETRHead.from_config(config)
    assert clone.num_queries == 5 and clone.d_model == 16
    # A user's own detector: any backbone, then the head, as a functional model saved to a
    # .keras file and loaded back.
    inputs = keras.Input((64, 64, 3))
    x = keras.layers.Conv2D(8, 3, strides=4, padding="same", activation="relu")(inputs)
    x = keras.layers.Conv2D(40, 3, strides=8, padding="same")(x)
    outputs = DETRHead(**ARGS, name="head")(x)
    model = keras.Model(inputs, outputs)
    images = np.random.default_rng(2).normal(size=(1, 64, 64, 3)).astype("float32")
    expected = model.predict_on_batch(images)
    model.save(tmp_path / "detector.keras")
    restored = keras.saving.load_model(tmp_path / "detector.keras")
    got = restored.predict_on_batch(images)
    for key in expected:
        np.testing.assert_allclose(_np(got[key]), _np(expected[key]), rtol=1e-6, atol=1e-6)


def test_bad_arguments_and_inputs_raise_clear_errors(head):
    for kwargs, match in (
        ({"num_classes": 0}, "num_classes"),
        ({"num_queries": 1.5}, "num_queries"),
        ({"d_model": 18, "num_heads": 4}, "multiple of num_heads"),
        ({"d_model": 6, "num_heads": 3}, "multiple of 4"),
        ({"num_encoder_layers": -1}, "num_encoder_layers"),
        ({"dropout": 1.0}, "dropout"),
    ):
        with pytest.raises(ValueError, match=match):
            DETRHead(**{**ARGS, **kwargs})
    with pytest.raises(ValueError, match="channels-last feature map"):
        head(np.zeros((2, 3, 40), "float32"))
    with pytest.raises(ValueError, match="feature_mask must be shaped"):
        head(_features(), np.ones((2, 4, 3), bool))
