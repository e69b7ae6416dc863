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


def _epilogue_case(stride, seed=7):
    conv, bn = _layers(3, stride, seed=seed)
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(2, 11, 9, 4)).astype("float32")
    out_shape = (2, -(-11 // stride), -(-9 // stride), 6)
    residual = rng.normal(size=out_shape).astype("float32")
    return conv, bn, x, residual


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("relu,with_residual", [(True, False), (True, True), (False, True)])
def test_the_dispatched_conv_bn_adds_the_residual_then_applies_the_relu(
    stride, relu, with_residual
):
    """What ResNet's blocks ask of the op (``relu(bn(conv(x)) + shortcut)``), on this backend's
    implementation, against the plain op followed by keras's add and ReLU."""
    conv, bn, x, residual = _epilogue_case(stride)
    run = dispatch.select("detr_conv_bn").load()
    data_format = "channels_first" if keras.backend.backend() == "torch" else "channels_last"
    to_format = (
        (lambda a: np.transpose(a, (0, 3, 1, 2)))
        if data_format == "channels_first"
        else (lambda a: a)
    )
    x_in, r_in = (
        keras.ops.convert_to_tensor(to_format(x)),
        keras.ops.convert_to_tensor(to_format(residual)),
    )
    plain = run(conv, bn, x_in, stride, 1, data_format)
    expected = plain + r_in if with_residual else plain
    expected = keras.ops.convert_to_numpy(keras.ops.relu(expected) if relu else expected)
    got = run(
        conv, bn, x_in, stride, 1, data_format, residual=r_in if with_residual else None, relu=relu
    )
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(got), expected)


@pytest.mark.backends("torch")
@pytest.mark.parametrize("channels_last", [True, False], ids=["nhwc-strides", "contiguous"])
@pytest.mark.parametrize("stride", [1, 2])
def test_torch_inference_fuses_the_relu_and_the_sum_to_the_bit(channels_last, stride):
    """At inference on the CPU the ReLU and the residual sum run as oneDNN post-ops: the same
    numbers as the separate ops, the residual left as it was, and the fused op really used."""
    import torch

    from kzoo.backends.torch import detr_backbone as tb

    if tb._FUSED is None:
        pytest.skip("this torch build has no oneDNN convolution post-ops")
    conv, bn, x, residual = _epilogue_case(stride, seed=11)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    x = torch.tensor(np.transpose(x, (0, 3, 1, 2))).contiguous(memory_format=memory_format)
    residual = torch.tensor(np.transpose(residual, (0, 3, 1, 2)))
    kept = residual.clone()
    calls = []
    fused = tb._FUSED

    class Counting:
        def __call__(self, *args):
            calls.append("relu")
            return fused(*args)

        def binary(self, *args):
            calls.append("binary")
            return fused.binary(*args)

    with torch.no_grad():
        plain = tb.conv_bn(conv, bn, x, stride, 1, "channels_first")
        expected = {"relu": torch.relu(plain), "sum": plain + residual}
        expected["both"] = torch.relu(expected["sum"])
        tb._FUSED = Counting()
        try:
            got = {
                "relu": tb.conv_bn(conv, bn, x, stride, 1, "channels_first", relu=True),
                "sum": tb.conv_bn(conv, bn, x, stride, 1, "channels_first", residual=residual),
                "both": tb.conv_bn(
                    conv, bn, x, stride, 1, "channels_first", residual=residual, relu=True
                ),
            }
        finally:
            tb._FUSED = fused
    for key in expected:
        np.testing.assert_array_equal(got[key].numpy(), expected[key].numpy(), err_msg=key)
    assert torch.equal(residual, kept)
    assert calls == ["relu", "binary", "binary"]


@pytest.mark.backends("torch")
def test_torch_training_keeps_separate_ops_and_their_gradients():
    """With gradients on, the fused op (which has no backward) is not used: the ReLU and the sum
    stay torch ops, and the gradient reaches the input, the residual and the kernel."""
    import torch

    from kzoo.backends.torch import detr_backbone as tb

    conv, bn, x, residual = _epilogue_case(1, seed=13)
    x = torch.tensor(np.transpose(x, (0, 3, 1, 2)), requires_grad=True)
    residual = torch.tensor(np.transpose(residual, (0, 3, 1, 2)), requires_grad=True)
    out = tb.conv_bn(conv, bn, x, 1, 1, "channels_first", residual=residual, relu=True)
    out.sum().backward()
    positive = (out > 0).to(out.dtype)
    np.testing.assert_array_equal(residual.grad.numpy(), positive.detach().numpy())
    assert x.grad is not None and float(x.grad.abs().sum()) > 0
    assert conv.kernel.value.grad is not None


@pytest.mark.backends("torch")
def test_torch_export_traces_portable_ops_even_without_gradients():
    """An exported graph must run outside oneDNN's CPU build: tracing takes the separate ops,
    with gradients off as at inference, and leaves no traced kernel in the cache for the eager
    calls after it."""
    import torch

    from kzoo.backends.torch import detr_backbone as tb

    conv, bn, x, residual = _epilogue_case(1, seed=17)

    class Block(torch.nn.Module):
        def forward(self, x, residual):
            return tb.conv_bn(conv, bn, x, 1, 1, "channels_first", residual=residual, relu=True)

    args = tuple(torch.tensor(np.transpose(a, (0, 3, 1, 2))) for a in (x, residual))
    with torch.no_grad():
        program = torch.export.export(Block(), args)
        eager = Block()(*args)
    graph = str(program.graph)
    assert "mkldnn" not in graph and "conv" in graph and "relu" in graph
    np.testing.assert_array_equal(program.module()(*args).numpy(), eager.numpy())
