"""The backbone's convolution + frozen batch norm against the two layers run one after the other."""

import keras
import numpy as np
import pytest

from kzoo.backends import dispatch
from kzoo.models.detr.model import conv_bn
from kzoo.models.detr.model.backbone import FrozenBatchNormalization

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


def _conv_grads_float64(x, kernel, g, stride):
    """The gradients of ``sum(conv(x, kernel) * g)`` ('valid', channels last) in float64."""
    x, kernel, g = (np.asarray(a, np.float64) for a in (x, kernel, g))
    rows, cols = kernel.shape[:2]
    out_h, out_w = g.shape[1:3]
    dx, dk = np.zeros_like(x), np.zeros_like(kernel)
    for i in range(rows):
        for j in range(cols):
            window = (slice(None), slice(i, i + stride * (out_h - 1) + 1, stride))
            window += (slice(j, j + stride * (out_w - 1) + 1, stride),)
            dk[i, j] = np.einsum("bhwc,bhwf->cf", x[window], g)
            dx[window] += np.einsum("bhwf,cf->bhwc", g, kernel[i, j])
    return dx, dk


@pytest.mark.backends("jax")
@pytest.mark.parametrize("size", [(10, 12), (9, 11)], ids=["even", "odd"])
def test_jax_strided_conv_gradients_match_float64(size):
    """JAX's strided 3x3 convolution (im2col kernel gradient) against float64 sums."""
    import jax

    from kzoo.backends.jax.detr_backbone import strided_conv

    rng = np.random.default_rng(3)
    x = rng.normal(size=(2, *size, 5)).astype("float32")
    kernel = rng.normal(size=(3, 3, 5, 7)).astype("float32")
    y, vjp = jax.vjp(lambda a, k: strided_conv(a, k, 2), x, kernel)
    expected_y = keras.ops.convert_to_numpy(keras.ops.conv(x, kernel, strides=2))
    np.testing.assert_allclose(np.asarray(y), expected_y, atol=1e-5, rtol=1e-5)
    g = rng.normal(size=y.shape).astype("float32")
    dx, dk = (np.asarray(a, np.float64) for a in vjp(g))
    expected_dx, expected_dk = _conv_grads_float64(x, kernel, g, 2)
    np.testing.assert_allclose(dx, expected_dx, atol=1e-4, rtol=1e-5)
    np.testing.assert_allclose(dk, expected_dk, atol=1e-4, rtol=1e-5)


@pytest.mark.backends("jax")
def test_jax_backbone_uses_the_strided_conv_only_for_strided_3x3():
    """The ResNet's strided 3x3 convolutions take the im2col gradient, the others do not."""
    import jax

    conv, bn = _layers(3, 2, seed=5)
    x = np.random.default_rng(1).normal(size=(1, 8, 8, 4)).astype("float32")
    run = dispatch.select("detr_conv_bn").load()
    for stride, expected in ((2, True), (1, False)):
        jaxpr = str(jax.make_jaxpr(lambda a, s=stride: run(conv, bn, a, s, 1, "channels_last"))(x))
        assert ("custom_vjp_call" in jaxpr) is expected, stride
