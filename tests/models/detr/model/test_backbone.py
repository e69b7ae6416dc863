"""DETR's ResNet backbone: torchvision v1.5 layout, frozen batch norm, padding masking."""

import keras
import numpy as np
import pytest

from kzoo.models.detr.model.backbone import FrozenBatchNormalization, ResNetBackbone
from tests.models.detr.compiled_call import run


def _np(x):
    return np.asarray(keras.ops.convert_to_numpy(x))


def _randomise_norms(backbone, rng):
    for layer in backbone._flatten_layers():
        if isinstance(layer, FrozenBatchNormalization):
            n = layer.gamma.shape[0]
            layer.gamma.assign(rng.uniform(0.5, 1.5, n).astype("float32"))
            layer.beta.assign(rng.normal(0, 0.1, n).astype("float32"))
            layer.moving_mean.assign(rng.normal(0, 0.1, n).astype("float32"))
            layer.moving_variance.assign(rng.uniform(0.5, 1.5, n).astype("float32"))


def test_frozen_batch_norm_matches_torchvision_formula():
    rng = np.random.default_rng(0)
    bn = FrozenBatchNormalization()
    x = rng.normal(size=(2, 3, 5, 6)).astype("float32")
    bn.build(x.shape)
    w, b = rng.uniform(0.5, 2, 6), rng.normal(size=6)
    mean, var = rng.normal(size=6), rng.uniform(1e-4, 2, 6)
    for var_, value in zip(
        (bn.gamma, bn.beta, bn.moving_mean, bn.moving_variance), (w, b, mean, var)
    ):
        var_.assign(value.astype("float32"))
    # torchvision.ops.FrozenBatchNorm2d: scale = w * (rv + eps).rsqrt(); bias = b - rm * scale.
    scale = w / np.sqrt(var + 1e-5)
    expected = x.astype(np.float64) * scale + (b - mean * scale)
    np.testing.assert_allclose(_np(bn(x)), expected, rtol=1e-5, atol=1e-5)
    assert not bn.trainable_weights
    assert len(bn.non_trainable_weights) == 4


def test_frozen_batch_norm_trainable_affine_and_validation():
    bn = FrozenBatchNormalization(trainable_affine=True)
    bn.build((None, 4))
    assert {v.name for v in bn.trainable_weights} == {"gamma", "beta"}
    with pytest.raises(ValueError, match="epsilon"):
        FrozenBatchNormalization(epsilon=-1)
    restored = FrozenBatchNormalization.from_config(bn.get_config())
    assert restored.trainable_affine and restored.epsilon == 1e-5


def _torch_reference(backbone, images):
    """The same network written with torch.nn.functional in torchvision's NCHW layout."""
    torch = pytest.importorskip("torch")
    F = torch.nn.functional

    def t(v):
        return torch.tensor(_np(v), dtype=torch.float64)

    def conv(layer, x, stride, padding):
        kernel = t(layer.kernel).permute(3, 2, 0, 1)  # HWIO -> OIHW
        return F.conv2d(x, kernel, stride=stride, padding=padding)

    def bn(layer, x):
        scale = t(layer.gamma) * (t(layer.moving_variance) + 1e-5).rsqrt()
        shift = t(layer.beta) - t(layer.moving_mean) * scale
        return x * scale[None, :, None, None] + shift[None, :, None, None]

    x = torch.tensor(images, dtype=torch.float64).permute(0, 3, 1, 2)
    x = F.relu(bn(backbone.bn1, conv(backbone.conv1, x, 2, 3)))
    x = F.max_pool2d(x, 3, stride=2, padding=1)
    for prefix, _, stride, _, _ in backbone.block_specs:
        layer = lambda key, p=prefix: getattr(backbone, f"{p}_{key}", None)  # noqa: E731
        y = F.relu(bn(layer("bn1"), conv(layer("conv1"), x, 1, 0)))
        y = F.relu(bn(layer("bn2"), conv(layer("conv2"), y, stride, 1)))  # v1.5: stride in 3x3
        y = bn(layer("bn3"), conv(layer("conv3"), y, 1, 0))
        if layer("downsample_0") is not None:
            x = bn(layer("downsample_1"), conv(layer("downsample_0"), x, stride, 0))
        x = F.relu(y + x)
    return x.permute(0, 2, 3, 1).numpy()


def test_small_backbone_matches_torch_reference_on_odd_sizes():
    rng = np.random.default_rng(1)
    backbone = ResNetBackbone("small")
    images = rng.normal(size=(2, 67, 45, 3)).astype("float32")
    backbone.build(images.shape)
    _randomise_norms(backbone, rng)
    out = run(backbone, images)
    assert out.shape == (2, 3, 2, 512)  # ceil(67 / 32), ceil(45 / 32)
    assert backbone.compute_output_shape(images.shape) == out.shape
    expected = _torch_reference(backbone, images)
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())


def test_valid_sizes_make_features_independent_of_padding():
    rng = np.random.default_rng(2)
    backbone = ResNetBackbone("small")
    alone = rng.normal(size=(1, 50, 70, 3)).astype("float32")
    canvas = rng.normal(size=(2, 96, 128, 3)).astype("float32")  # padding holds junk
    canvas[1, :50, :70] = alone[0]
    sizes = np.array([[96, 128], [50, 70]], "int32")
    expected = run(backbone, alone)[0]  # (2, 3, C)
    padded = run(backbone, canvas, sizes)
    np.testing.assert_allclose(padded[1, :2, :3], expected, rtol=1e-4, atol=1e-4)
    # Without the sizes the junk leaks in: this is what the masking is for.
    leaky = run(backbone, canvas)
    assert np.abs(leaky[1, :2, :3] - expected).max() > 1e-2
    # The full-size image is unaffected by its neighbour's masking.
    np.testing.assert_allclose(padded[0], leaky[0], rtol=1e-4, atol=1e-4)


def test_trainable_stages():
    backbone = ResNetBackbone("small", trainable_stages=3)
    backbone.build((None, None, None, 3))
    trainable = {v.path.split("/")[-2] for v in backbone.trainable_weights}
    assert trainable == {
        f"layer{s}_0_{k}" for s in (2, 3, 4) for k in ("conv1", "conv2", "conv3", "downsample_0")
    }
    everything = ResNetBackbone("small", trainable_stages=5, trainable_affine=True)
    everything.build((None, None, None, 3))
    assert {v.path.split("/")[-2] for v in everything.trainable_weights} >= {"conv1", "bn1"}
    assert not any("moving" in v.name for v in everything.trainable_weights)
    with pytest.raises(ValueError, match="trainable_stages"):
        ResNetBackbone("small", trainable_stages=6)
    with pytest.raises(ValueError, match="variant"):
        ResNetBackbone("resnet18")


@pytest.mark.slow
def test_resnet50_has_torchvision_parameter_count_and_names():
    backbone = ResNetBackbone("resnet50", name="backbone")
    backbone.build((None, None, None, 3))
    stats = sum(int(np.prod(v.shape)) for v in backbone.weights if "moving" in v.name)
    params = sum(int(np.prod(v.shape)) for v in backbone.weights) - stats
    # torchvision resnet50: 25,557,032 parameters, minus the fc layer's 2,049,000.
    assert params == 23_508_032
    paths = {v.path for v in backbone.weights}
    assert {
        "backbone/conv1/kernel",
        "backbone/layer3_5_bn3/moving_variance",
        "backbone/layer4_0_downsample_0/kernel",
    } <= paths
    assert tuple(backbone.layer2_0_conv2.kernel.shape) == (3, 3, 128, 128)
    assert backbone.layer2_0_conv2.strides == (2, 2)
    assert backbone.layer2_0_conv1.strides == (1, 1)


def test_inference_after_weight_updates_uses_the_new_weights(monkeypatch):
    # torch reuses folded kernels between inference calls; every backend must still see
    # assigned kernels and batch-norm statistics on the very next call.
    rng = np.random.default_rng(3)
    backbone = ResNetBackbone("small")
    images = rng.normal(size=(1, 40, 36, 3)).astype("float32")
    backbone.build(images.shape)
    _randomise_norms(backbone, rng)
    first = run(backbone, images)
    conv = backbone.conv1
    conv.kernel.assign(_np(conv.kernel) * 1.5)
    _randomise_norms(backbone, rng)
    second = run(backbone, images)
    assert np.abs(second - first).max() > 1e-3
    expected = _torch_reference(backbone, images)
    np.testing.assert_allclose(second, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())
    # The dispatched convolution agrees with the portable keras.ops one.
    monkeypatch.setenv("KZOO_KERNELS", "off")
    portable = run(backbone, images)
    np.testing.assert_allclose(second, portable, rtol=1e-5, atol=1e-5 * np.abs(portable).max())
