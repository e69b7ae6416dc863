"""The backbone's convolution + frozen batch norm against the two layers run one after the other."""

import keras
import numpy as np
import pytest

from kzoo.backends import dispatch
from kzoo.models.detr import conv_bn
from kzoo.models.detr.backbone import FrozenBatchNormalization

# (kernel size, stride, padding) of every convolution in a torchvision ResNet: the 7x7 stem,
# the 3x3s with stride 1 and 2, the 1x1s and the strided 1x1 downsample.
CASES = [(7, 2, 3), (3, 1, 1), (3, 2, 1), (1, 1, 0), (1, 2, 0)]


def _layers(kernel_size, stride, seed):
    rng = np.random.default_rng(seed)
    conv = keras.layers.Conv2D(6, kernel_size, strides=stride, padding="valid", use_bias=False)
    conv.build((None, None, None, 4))
    conv.kernel.assign(rng.normal(size=conv.kernel.shape).astype("float32"))
    bn = FrozenBatchNormalization()
    bn.build((None, None, None, 6))
    for variable, low, high in (
        (bn.gamma, 0.5, 2.0),
        (bn.beta, -1.0, 1.0),
        (bn.moving_mean, -1.0, 1.0),
        (bn.moving_variance, 0.2, 3.0),
    ):
        variable.assign(rng.uniform(low, high, size=6).astype("float32"))
    return conv, bn


@pytest.mark.parametrize("kernel_size,stride,pad", CASES)
@pytest.mark.parametrize("fold", [True, False], ids=["folded", "scale-after"])
def test_equals_conv_then_batch_norm(kernel_size, stride, pad, fold):
    conv, bn = _layers(kernel_size, stride, seed=kernel_size * 10 + stride)
    x = np.random.default_rng(0).normal(size=(2, 11, 9, 4)).astype("float32")
    padded = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    expected = keras.ops.convert_to_numpy(bn(conv(padded)))
    out = conv_bn.conv_bn_portable(conv, bn, x, stride, pad, "channels_last", fold=fold)
    out = keras.ops.convert_to_numpy(out)
    assert out.shape == expected.shape
    # float32 sums of up to 7*7*4 products of O(1) numbers, reordered.
    np.testing.assert_allclose(out, expected, atol=2e-5, rtol=1e-5)


def test_the_dispatch_picks_the_backends_choice():
    expected = {"jax": "xla-scale-after", "torch": "torch-fused", "tensorflow": "portable"}
    assert dispatch.select("detr_conv_bn").name == expected[keras.backend.backend()]
