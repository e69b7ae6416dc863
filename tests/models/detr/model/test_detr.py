"""kzoo.models.DETR: outputs, padding invariance, serialization, training hooks, detections."""

import keras
import numpy as np
import pytest
from keras import ops

from kzoo.models import DETR
from kzoo.models.detr.model.detr import nearest_indices
from kzoo.models.detr.model.postprocess import outputs_to_detections
from kzoo.models.detr.training.optimizer import ScaledAdamW

TINY = dict(
    num_classes=3,
    num_queries=5,
    d_model=16,
    num_heads=4,
    num_encoder_layers=1,
    num_decoder_layers=2,
    ffn_dim=24,
    backbone="small",
)


def tiny(**overrides):
    return DETR(**{**TINY, **overrides})


def predict(model, images, pixel_mask=None):
    inputs = images if pixel_mask is None else {"images": images, "pixel_mask": pixel_mask}
    return keras.tree.map_structure(np.asarray, model.predict_on_batch(inputs))


def _images(rng, *shape):
    return rng.normal(size=(*shape, 3)).astype("float32")


# The tests share a model and a few input shapes: on JAX every new model or shape is a new XLA
# compilation, which dominates the run time.
ALONE = _images(np.random.default_rng(1), 1, 45, 70)


def _canvas():
    """A batch of two: ALONE padded (with junk) at index 0 beside a bigger image."""
    canvas = _images(np.random.default_rng(2), 2, 97, 130) * 3
    mask = np.ones((2, 97, 130), "float32")
    canvas[0, :45, :70] = ALONE[0]
    mask[0] = 0
    mask[0, :45, :70] = 1
    return canvas, mask


@pytest.fixture(scope="module")
def model():
    keras.utils.set_random_seed(0)
    return tiny(dropout=0.0)


def test_output_dict_shapes(model):
    canvas, _ = _canvas()
    out = predict(model, canvas)
    assert out["logits"].shape == (2, 5, 4)
    assert out["boxes"].shape == (2, 5, 4)
    assert out["aux_logits"].shape == (2, 1, 5, 4)
    assert out["aux_boxes"].shape == (2, 1, 5, 4)
    assert np.all((out["boxes"] > 0) & (out["boxes"] < 1))
    # The big image fills the canvas: its mask is all ones, the same as no mask.
    masked = predict(model, *_canvas())
    for key in out:
        np.testing.assert_allclose(masked[key][1], out[key][1], atol=1e-5)
    deep = tiny(num_decoder_layers=3).compute_output_spec(keras.KerasTensor((2, 64, 64, 3)))
    assert deep["aux_logits"].shape == (2, 2, 5, 4)


def test_outputs_do_not_depend_on_padding_of_other_images(model):
    alone = predict(model, ALONE)
    canvas, mask = _canvas()
    batched = predict(model, canvas, mask)
    for key in alone:
        np.testing.assert_allclose(batched[key][0], alone[key][0], atol=1e-4, err_msg=key)
    # The original computation (padding_invariant=False) lets the padding leak into the
    # backbone's features: the guarantee above is not vacuous.
    leaky = tiny(dropout=0.0, padding_invariant=False)
    leaky.build()
    leaky.set_weights(model.get_weights())
    leaked = predict(leaky, canvas, mask)
    assert np.abs(leaked["logits"][0] - alone["logits"][0]).max() > 1e-3
    # Without padding both settings are the same computation.
    np.testing.assert_allclose(leaked["logits"][1], batched["logits"][1], atol=1e-5)


def test_nearest_indices_match_torch_interpolate():
    torch = pytest.importorskip("torch")
    for in_size, out_size in ((97, 4), (130, 5), (800, 25), (33, 2), (7, 7)):
        source = torch.arange(in_size, dtype=torch.float32)[None, None, :, None]
        expected = torch.nn.functional.interpolate(source, size=(out_size, 1))[0, 0, :, 0]
        got = np.asarray(ops.convert_to_numpy(nearest_indices(in_size, out_size)))
        np.testing.assert_array_equal(got, expected.numpy().astype(int))


def test_serialization_round_trips(model, tmp_path):
    images = ALONE
    expected = predict(model, images)
    config = model.get_config()
    assert config["dropout"] == 0.0 and config["backbone"] == "small"
    clone = DETR.from_config({**config, "padding_invariant": False})
    assert clone.padding_invariant is False and clone.num_queries == 5
    model.save_to_preset(tmp_path / "preset")
    restored = DETR.from_preset(str(tmp_path / "preset"))
    assert restored.get_config() == config
    for a, b in zip(restored.get_weights(), model.get_weights()):
        np.testing.assert_array_equal(a, b)
    out = predict(restored, images)
    # Bit-identical on JAX and torch; TensorFlow's oneDNN may pick another kernel for the new
    # graph (differences ~1e-7).
    for key in expected:
        np.testing.assert_allclose(out[key], expected[key], rtol=1e-5, atol=1e-5)


def test_variables_mirror_the_checkpoint_layout(model):
    paths = model.weights_by_path()
    for path in (
        "backbone/conv1/kernel",
        "backbone/layer1_0_downsample_1/moving_variance",
        "input_proj/kernel",
        "query_embed/embeddings",
        "transformer/encoder_layer_0/self_attn/q_proj/kernel",
        "transformer/decoder_layer_1/multihead_attn/out_proj/bias",
        "transformer/decoder_layer_1/norm3/gamma",
        "transformer/decoder_norm/beta",
        "class_embed/kernel",
        "bbox_embed_2/bias",
    ):
        assert path in paths, path
    assert tuple(paths["query_embed/embeddings"].shape) == (5, 16)
    assert tuple(paths["class_embed/kernel"].shape) == (16, 4)
    assert len(paths) == len(model.weights)


def _l1_on_boxes(y_true, y_pred):
    """A stand-in set loss using the whole output dict, as DETRLoss does."""
    final = ops.mean(ops.abs(y_pred["boxes"] - y_true["boxes"]))
    aux = ops.mean(ops.abs(y_pred["aux_boxes"] - y_true["boxes"][:, None]))
    # Every query's "no object" logit against the rest, so that the class head trains too.
    logits = ops.concatenate([y_pred["logits"][:, None], y_pred["aux_logits"]], axis=1)
    no_object = ops.mean(ops.logsumexp(logits, axis=-1) - logits[..., -1])
    return final + aux + 0.1 * no_object


def test_fit_uses_the_loss_on_the_whole_dict_and_freezes_early_stages():
    model = tiny(dropout=0.0, backbone_trainable_stages=3)
    model.compile(loss=_l1_on_boxes, optimizer=ScaledAdamW(1e-3, global_clipnorm=1.0))
    rng = np.random.default_rng(3)
    images = _images(rng, 4, 64, 64)
    targets = {
        "boxes": rng.uniform(0.2, 0.8, (4, 5, 4)).astype("float32"),
        "labels": np.zeros((4, 5), "int32"),
    }
    model.build()
    before = {k: np.array(v) for k, v in model.weights_by_path().items()}
    history = model.fit(images, targets, batch_size=4, epochs=4, verbose=0)
    losses = history.history["loss"]
    assert losses[-1] < losses[0]
    after = {k: np.array(v) for k, v in model.weights_by_path().items()}
    assert np.array_equal(before["backbone/conv1/kernel"], after["backbone/conv1/kernel"])
    assert np.array_equal(
        before["backbone/layer1_0_conv2/kernel"], after["backbone/layer1_0_conv2/kernel"]
    )
    assert not np.array_equal(
        before["backbone/layer2_0_conv2/kernel"], after["backbone/layer2_0_conv2/kernel"]
    )
    assert not np.array_equal(before["bbox_embed_2/kernel"], after["bbox_embed_2/kernel"])
    assert not np.array_equal(before["class_embed/kernel"], after["class_embed/kernel"])


def test_default_compile_is_the_detr_recipe():
    detr_loss = pytest.importorskip("kzoo.models.detr.training.loss")
    model = tiny()
    model.compile()
    assert isinstance(model.optimizer, ScaledAdamW)
    assert model.optimizer.global_clipnorm == 0.1
    assert model.optimizer.decoupled_weight_decay == 1e-4
    assert float(ops.convert_to_numpy(model.optimizer.learning_rate)) == pytest.approx(1e-4)
    assert model.optimizer.scale_for("backbone/layer2_0_conv1/kernel") == 0.1
    assert model.optimizer.scale_for("transformer/decoder_norm/gamma") == 1.0
    assert isinstance(model._detr_loss, detr_loss.DETRLoss)
    with pytest.raises(ValueError, match="loss"):
        model.compile(loss="mse")


def test_predict_detections_postprocesses_like_detr(model):
    images, mask = _canvas()
    out = predict(model, images, mask)
    sizes = ([480, 640], [97, 130])
    detections = model.predict_detections(
        {"images": images, "pixel_mask": mask}, threshold=0.0, target_sizes=sizes
    )
    assert len(detections) == 2
    for i, (height, width) in enumerate(sizes):
        logits = out["logits"][i].astype(np.float64)
        probs = np.exp(logits - logits.max(-1, keepdims=True))
        probs = (probs / probs.sum(-1, keepdims=True))[:, :-1]
        order = np.argsort(-probs.max(-1), kind="stable")
        np.testing.assert_allclose(detections[i]["scores"], probs.max(-1)[order], rtol=1e-4)
        np.testing.assert_array_equal(detections[i]["labels"], probs.argmax(-1)[order])
        cx, cy, w, h = out["boxes"][i][order].T
        expected = np.stack(
            [
                (cx - w / 2) * width,
                (cy - h / 2) * height,
                (cx + w / 2) * width,
                (cy + h / 2) * height,
            ],
            -1,
        )
        np.testing.assert_allclose(detections[i]["boxes"], expected, rtol=1e-4, atol=1e-3)
    # Default sizes: each image's unpadded extent.
    default = model.predict_detections(images, pixel_mask=mask, threshold=0.0)
    scale = np.array([70 / 640, 45 / 480, 70 / 640, 45 / 480], "float32")
    np.testing.assert_allclose(
        default[0]["boxes"], detections[0]["boxes"] * scale, rtol=1e-4, atol=1e-3
    )
    np.testing.assert_allclose(default[1]["boxes"], detections[1]["boxes"], rtol=1e-4, atol=1e-3)
    # A threshold keeps exactly the detections above it; the padded image alone gives the same
    # (cut midway between two scores: the batched and the lone run differ by rounding only).
    cut = float(np.mean(detections[0]["scores"][1:3]))
    kept = model.predict_detections(ALONE, threshold=cut)
    assert np.all(kept[0]["scores"] > cut)
    assert len(kept[0]["scores"]) == int(np.sum(detections[0]["scores"] > cut))


def test_outputs_to_detections_drops_no_object():
    logits = np.array([[[0.0, 0.0, 10.0], [5.0, 0.0, 0.0]]], "float32")  # 2 classes + no-object
    boxes = np.array([[[0.5, 0.5, 0.2, 0.4], [0.25, 0.5, 0.5, 1.0]]], "float32")
    (result,) = outputs_to_detections(logits, boxes, [[100, 200]], threshold=0.5)
    np.testing.assert_array_equal(result["labels"], [0])
    np.testing.assert_allclose(result["boxes"], [[0.0, 0.0, 100.0, 100.0]], atol=1e-4)
    with pytest.raises(ValueError, match="target_sizes"):
        outputs_to_detections(logits, boxes, [[1, 2], [3, 4]])


def test_bad_arguments_raise_clear_errors():
    for kwargs, match in (
        ({"num_classes": 0}, "num_classes"),
        ({"d_model": 18, "num_heads": 4}, "d_model"),
        ({"d_model": 6, "num_heads": 3}, "multiple of 4"),
        ({"backbone": "vgg"}, "backbone"),
        ({"dropout": 1.5}, "dropout"),
        ({"backbone_trainable_stages": 7}, "backbone_trainable_stages"),
        ({"padding_invariant": "yes"}, "padding_invariant"),
    ):
        with pytest.raises(ValueError, match=match):
            tiny(**kwargs)
    model = tiny()
    with pytest.raises(ValueError, match="images shaped"):
        model(np.zeros((1, 32, 32, 1), "float32"))
    with pytest.raises(ValueError, match="pixel_mask"):
        model({"images": np.zeros((1, 32, 32, 3), "float32"), "pixel_mask": np.ones((1, 16, 32))})
    with pytest.raises(ValueError, match="keys"):
        model({"pixels": np.zeros((1, 32, 32, 3), "float32")})
    with pytest.raises(ValueError, match="threshold"):
        model.predict_detections(np.zeros((1, 32, 32, 3), "float32"), threshold=1.0)
    with pytest.raises(ValueError, match="floats"):
        model.predict_detections(np.zeros((1, 32, 32, 3), "uint8"))
