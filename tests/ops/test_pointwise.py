"""kzoo.ops.pointwise.pointwise_conv: a 1x1 convolution as a flat matrix product.

Forward against keras's ``Conv2D`` and float64 numpy; gradients through each backend's
autodiff against the float64 products ``g @ W^T`` and ``x^T g``.
"""

import keras
import numpy as np
import pytest

from kzoo.ops.pointwise import pointwise_conv


def _vjp(x, kernel, dy):
    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        y, vjp = jax.vjp(pointwise_conv, x, kernel)
        grads = vjp(dy)
    elif backend == "tensorflow":
        import tensorflow as tf

        tx, tk = tf.constant(x), tf.constant(kernel)
        with tf.GradientTape() as tape:
            tape.watch([tx, tk])
            y = pointwise_conv(tx, tk)
        grads = tape.gradient(y, [tx, tk], output_gradients=tf.constant(dy))
    else:
        import torch

        tx, tk = (torch.tensor(v, requires_grad=True) for v in (x, kernel))
        y = pointwise_conv(tx, tk)
        y.backward(torch.tensor(dy))
        grads = (tx.grad, tk.grad)
    return [keras.ops.convert_to_numpy(t).astype(np.float64) for t in (y, *grads)]


@pytest.mark.parametrize("shape, filters", [((2, 5, 7, 3), 4), ((1, 1, 1, 8), 2), ((3, 6), 5)])
def test_matches_float64_products(shape, filters):
    rng = np.random.default_rng(0)
    x = rng.normal(size=shape).astype("float32")
    kernel = rng.normal(size=(shape[-1], filters)).astype("float32")
    dy = rng.normal(size=(*shape[:-1], filters)).astype("float32")
    y, dx, dk = _vjp(x, kernel, dy)
    x64, k64, dy64 = (a.astype(np.float64) for a in (x, kernel, dy))
    np.testing.assert_allclose(y, x64 @ k64, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(dx, dy64 @ k64.T, rtol=1e-5, atol=1e-5)
    flat = x64.reshape(-1, shape[-1])
    expected = flat.T @ dy64.reshape(-1, filters)
    np.testing.assert_allclose(dk, expected, rtol=1e-5, atol=1e-5)


def test_same_as_keras_conv2d():
    conv = keras.layers.Conv2D(6, 1, use_bias=False)
    x = np.random.default_rng(1).normal(size=(2, 4, 5, 3)).astype("float32")
    expected = keras.ops.convert_to_numpy(conv(x))
    got = keras.ops.convert_to_numpy(pointwise_conv(x, conv.kernel[0, 0]))
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.backends("jax")
def test_symbolic_sizes_take_the_plain_product():
    """With sizes unknown until run (shape-polymorphic export) no reshape is emitted: jax2onnx
    cannot map a flattened symbolic size back to the input's axes."""
    import jax
    from jax import export

    batch, height = export.symbolic_shape("b, h")
    args = (
        jax.ShapeDtypeStruct((batch, height, 3), np.float32),
        jax.ShapeDtypeStruct((3, 4), np.float32),
    )
    exported = export.export(jax.jit(pointwise_conv))(*args)
    assert "reshape" not in exported.mlir_module()
    rng = np.random.default_rng(2)
    x = rng.normal(size=(2, 5, 3)).astype("float32")
    kernel = rng.normal(size=(3, 4)).astype("float32")
    np.testing.assert_allclose(
        np.asarray(exported.call(x, kernel)), x.astype(np.float64) @ kernel, rtol=1e-5, atol=1e-5
    )
