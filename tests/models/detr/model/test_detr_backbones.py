"""DETR on a backbone instance: kzoo's ResNetBackbone, keras.applications, a user's own model."""

import json

import keras
import numpy as np
import pytest

from kzoo.models import DETR
from kzoo.models.detr.model.backbone import ResNetBackbone
from kzoo.models.detr.model.detr import nearest_indices

HEAD = dict(
    num_classes=3,
    num_queries=4,
    d_model=16,
    num_heads=2,
    num_encoder_layers=1,
    num_decoder_layers=2,
    ffn_dim=16,
    dropout=0.0,
)
KEYS = ("logits", "boxes", "aux_logits", "aux_boxes")
# On JAX each new model and input shape is an XLA compilation (tens of seconds on a shared
# 2-core machine): the tests that fit or predict run on JAX in the slow step (which runs under
# JAX) and in the per-backend runs of TensorFlow and torch.
slow_on_jax = pytest.mark.slow if keras.backend.backend() == "jax" else (lambda f: f)


def _np(x):
    return np.asarray(keras.ops.convert_to_numpy(x))


def _predict(model, images, pixel_mask=None):
    inputs = images if pixel_mask is None else {"images": images, "pixel_mask": pixel_mask}
    return {k: _np(v) for k, v in model.predict_on_batch(inputs).items()}


def _assert_outputs_equal(a, b, atol=1e-6):
    for key in KEYS:
        np.testing.assert_allclose(a[key], b[key], rtol=0, atol=atol, err_msg=key)


def _data(seed=0, batch=4, size=64):
    rng = np.random.default_rng(seed)
    images = rng.normal(size=(batch, size, size, 3)).astype("float32")
    targets = {
        "boxes": rng.uniform(0.3, 0.6, (batch, 2, 4)).astype("float32"),
        "labels": rng.integers(0, 3, (batch, 2)).astype("int32"),
    }
    return images, targets


def _padded():
    images = np.random.default_rng(5).normal(size=(2, 64, 96, 3)).astype("float32")
    mask = np.ones((2, 64, 96), "float32")
    mask[1, 30:] = 0
    mask[1, :, 50:] = 0
    return images, mask


def user_backbone(strides=(2, 2, 2, 2, 2), name="user_backbone", size=None):
    """A user's own functional backbone: stride-2 convolutions, channels last."""
    inputs = keras.Input((size, size, 3))
    x = inputs
    for i, stride in enumerate(strides):
        x = keras.layers.Conv2D(8 + 4 * i, 3, strides=stride, padding="same", activation="relu")(x)
    return keras.Model(inputs, x, name=name)


@keras.saving.register_keras_serializable(package="kzoo_tests")
class PatchBackbone(keras.Model):
    """A user's own subclassed backbone: 32x32 patches, projected (a ViT-style stem)."""

    def __init__(self, channels=12, channels_first=False, **kwargs):
        super().__init__(**kwargs)
        self.channels = channels
        self.channels_first = channels_first
        self.patch = keras.layers.Conv2D(channels, 32, strides=32, padding="same", name="patch")
        self.norm = keras.layers.LayerNormalization(name="norm")

    def call(self, images):
        x = self.norm(self.patch(images))
        return keras.ops.transpose(x, (0, 3, 1, 2)) if self.channels_first else x

    def get_config(self):
        return {
            **super().get_config(),
            "channels": self.channels,
            "channels_first": self.channels_first,
        }


def _check_learning_rate_scales(model):
    """The default compile() scales exactly the backbone's variables' learning rate."""
    optimizer = model.optimizer
    backbone = {id(v) for v in model.backbone.weights}
    assert model.backbone.weights and model.head.weights
    for v in model.weights:
        expected = 0.1 if id(v) in backbone else 1.0
        assert optimizer.scale_for(v.path) == expected, v.path


@slow_on_jax
def test_user_functional_backbone_builds_fits_and_round_trips(tmp_path):
    keras.utils.set_random_seed(0)
    model = DETR(**HEAD, backbone=user_backbone())
    model.compile()
    _check_learning_rate_scales(model)
    images, targets = _data()
    before = {k: _np(v).copy() for k, v in model.weights_by_path().items()}
    assert "backbone/conv2d/kernel" in before or any(k.startswith("backbone/") for k in before)
    history = model.fit(images, targets, batch_size=2, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"]).all()
    after = {k: _np(v) for k, v in model.weights_by_path().items()}
    changed = {k for k in before if not np.array_equal(before[k], after[k])}
    assert any(k.startswith("backbone/") for k in changed)
    assert "class_embed/kernel" in changed and "transformer/decoder_norm/gamma" in changed

    padded, mask = _padded()
    expected = _predict(model, padded, mask)
    model.save_to_preset(tmp_path / "preset")
    config = json.loads((tmp_path / "preset" / "config.json").read_text())["config"]
    assert config["backbone"]["class_name"] == "Functional"
    assert "build_config" not in config["backbone"]
    restored = DETR.from_preset(str(tmp_path / "preset"))
    # Compared as JSON: the nested layers' shapes are tuples or lists depending on the source.
    assert json.dumps(restored.get_config()) == json.dumps(model.get_config())
    for a, b in zip(restored.get_weights(), model.get_weights()):
        np.testing.assert_array_equal(a, b)
    _assert_outputs_equal(_predict(restored, padded, mask), expected)


@slow_on_jax
def test_subclassed_backbone_uses_the_resized_pixel_mask(tmp_path):
    keras.utils.set_random_seed(1)
    model = DETR(**HEAD, backbone=PatchBackbone(name="patches"))
    padded, mask = _padded()
    out = _predict(model, padded, mask)
    # Without valid_sizes the backbone sees the padding, and the feature mask is the pixel
    # mask resized by torch's nearest rule (the original DETR), whatever padding_invariant says.
    assert not model.backbone_takes_valid_sizes
    features = model.backbone(padded)
    rows = _np(nearest_indices(64, 2))
    cols = _np(nearest_indices(96, 3))
    feature_mask = mask[:, rows][:, :, cols] > 0
    assert feature_mask[1].tolist() == [[True, True, False], [False, False, False]]
    # (Eager against the compiled predict: TensorFlow's kernels differ by ~1e-6.)
    eager = {k: _np(v) for k, v in model.head(features, feature_mask).items()}
    _assert_outputs_equal(out, eager, atol=1e-5)
    leaky = DETR(**HEAD, backbone=PatchBackbone(name="patches"), padding_invariant=False)
    leaky.build()
    leaky.set_weights(model.get_weights())
    _assert_outputs_equal(_predict(leaky, padded, mask), out)

    model.save_to_preset(tmp_path / "preset")
    restored = DETR.from_preset(str(tmp_path / "preset"))
    assert isinstance(restored.backbone, PatchBackbone) and restored.backbone.name == "patches"
    _assert_outputs_equal(_predict(restored, padded, mask), out)


def test_resnet_backbone_instance_is_the_named_backbone(tmp_path):
    keras.utils.set_random_seed(2)
    named = DETR(**HEAD, backbone="small")
    instance = DETR(
        **HEAD, backbone=ResNetBackbone("small", trainable_stages=5, trainable_affine=True)
    )
    named.build()
    instance.build()
    assert named.weights_by_path().keys() == instance.weights_by_path().keys()
    instance.set_weights(named.get_weights())
    padded, mask = _padded()
    # It accepts valid_sizes, so padding invariance holds as with the named backbone.
    assert instance.backbone_takes_valid_sizes
    _assert_outputs_equal(_predict(instance, padded, mask), _predict(named, padded, mask), 1e-5)
    instance.compile()
    _check_learning_rate_scales(instance)
    assert instance.get_config()["backbone"]["class_name"] == "ResNetBackbone"
    assert instance.get_config()["backbone_trainable_stages"] is None


def test_resnet_backbone_presets(tmp_path):
    keras.utils.set_random_seed(3)
    backbone = ResNetBackbone("small", trainable_stages=2)
    images = np.random.default_rng(4).normal(size=(1, 64, 64, 3)).astype("float32")
    expected = _np(backbone(images))
    backbone.save_to_preset(tmp_path / "backbone")
    loaded = ResNetBackbone.from_preset(str(tmp_path / "backbone"))
    assert loaded.trainable_stages == 2
    np.testing.assert_allclose(_np(loaded(images)), expected, rtol=1e-6, atol=1e-6)
    # A head on a loaded backbone keeps the backbone's weights.
    model = DETR(**HEAD, backbone=loaded)
    model.build()
    for a, b in zip(model.backbone.get_weights(), backbone.get_weights()):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="holds a ResNetBackbone, not a DETR"):
        DETR.from_preset(str(tmp_path / "backbone"))

    # The backbone of a DETR preset, with its weights; overrides give a fresh instance.
    model.save_to_preset(tmp_path / "detr")
    taken = ResNetBackbone.from_preset(str(tmp_path / "detr"))
    np.testing.assert_allclose(_np(taken(images)), expected, rtol=1e-6, atol=1e-6)
    frozen = ResNetBackbone.from_preset(str(tmp_path / "detr"), trainable_stages=0)
    assert frozen.trainable_stages == 0 and not frozen.trainable_weights
    for a, b in zip(frozen.get_weights(), backbone.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_backbones_that_do_not_fit_are_refused_by_name():
    with pytest.raises(ValueError, match="output stride 16.*|.*output stride 16"):
        DETR(**HEAD, backbone=user_backbone(strides=(2, 2, 2, 2, 1), name="stride16")).build()
    with pytest.raises(ValueError, match="'stride16'"):
        DETR(**HEAD, backbone=user_backbone(strides=(2, 2, 2, 2, 1), name="stride16")).build()
    with pytest.raises(ValueError, match="channels first: DETR needs channels-last"):
        DETR(**HEAD, backbone=PatchBackbone(channels_first=True)).build()
    with pytest.raises(ValueError, match="backbone must be one of resnet50, resnet101, small"):
        DETR(**HEAD, backbone=42)
    with pytest.raises(ValueError, match="backbone_trainable_stages only applies"):
        DETR(**HEAD, backbone=user_backbone(), backbone_trainable_stages=3)


def test_a_fixed_size_backbone_is_checked_at_its_size():
    model = DETR(**HEAD, backbone=user_backbone(size=80, name="fixed"))
    model.build()  # 80 -> 3 (rounded up): fine; the default probe (128, 96) would not fit
    assert model.head.input_proj.kernel.shape == (1, 1, 24, 16)
    with pytest.raises(ValueError, match=r"on a \(1, 80, 80, 3\) image.*output stride 16"):
        DETR(**HEAD, backbone=user_backbone((2, 2, 2, 2, 1), size=80, name="f16")).build()


@pytest.mark.slow
def test_keras_applications_resnet50_builds_fits_and_round_trips(tmp_path):
    keras.utils.set_random_seed(6)
    resnet = keras.applications.ResNet50(include_top=False, weights=None)
    model = DETR(**HEAD, backbone=resnet)
    model.compile()
    _check_learning_rate_scales(model)
    images, targets = _data(batch=2)
    history = model.fit(images, targets, batch_size=2, epochs=2, verbose=0)
    assert np.isfinite(history.history["loss"]).all()
    expected = _predict(model, images)
    assert expected["logits"].shape == (2, 4, 4)
    model.save_to_preset(tmp_path / "preset")
    restored = DETR.from_preset(str(tmp_path / "preset"))
    assert restored.backbone.name == resnet.name
    # keras' BatchNormalization in inference mode: the moving statistics the fit updated.
    _assert_outputs_equal(_predict(restored, images), expected, atol=1e-5)
