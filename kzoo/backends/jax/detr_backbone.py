"""DETR backbone pieces that XLA on the CPU runs faster written another way.

Each is chosen for JAX only because of how XLA compiles it:

- ``conv_bn_scale_after``: the frozen batch norm's scale applied to the convolution's output,
  where XLA fuses ``* scale + shift`` into the ReLU's pass over the feature map; folding it
  into the kernel (the portable default, best for TensorFlow's oneDNN) costs a pass over all
  23.5 M ResNet-50 weights at every call (7% of an inference on the CPU).
- ``strided_conv``: the strided 3x3 convolutions (the first block of layer2-layer4) with their
  kernel gradient as one im2col matrix product. XLA's CPU gradient for a strided convolution
  is a strided weight-gradient convolution fed by transposed copies of the input and of the
  output gradient (37 ms a step at layer2's 128 channels against 16 ms for the stride-1 ones of
  the same size); the patches of the 9 taps, written once, and a plain ``patches^T g`` product
  cut the ResNet-50 backbone's training step by 4 % (2026-12-02, batch 2 at 512x640).
- ``max_pool_by_slices``: the stem's 3x3, stride-2 max pool as the maximum of nine strided
  slices (0.6 ms against 5 ms for XLA's CPU ``reduce_window`` on a 480x640 image's stem;
  TensorFlow's strided slices are the slow side, 87 ms against 1.3 ms, so it keeps its op).
"""

import functools

import jax
import jax.numpy as jnp
from keras import ops

from kzoo.backends.common.detr_backbone import conv_bn_portable, max_pool_portable


def conv_bn_scale_after(conv, bn, x, stride, pad, data_format, *, residual=None, relu=False):
    """``bn(conv(x))`` with the norm's scale applied to the output (then ``residual`` and the
    ReLU, which XLA fuses into the same pass)."""
    strided = strided_conv if data_format == "channels_last" else None
    return conv_bn_portable(
        conv, bn, x, stride, pad, data_format, False, strided, residual=residual, relu=relu
    )


def strided_conv(x, kernel, stride):
    """``ops.conv(x, kernel, stride, "valid")`` (channels last) with an im2col kernel gradient."""
    return _strided_conv(stride)(x, kernel)


@functools.cache
def _strided_conv(stride):
    def forward(x, kernel):
        return ops.conv(x, kernel, strides=stride, padding="valid")

    @jax.custom_vjp
    def conv(x, kernel):
        return forward(x, kernel)

    def conv_forward(x, kernel):
        return forward(x, kernel), (x, kernel)

    def conv_backward(residuals, g):
        x, kernel = residuals
        _, input_vjp = jax.vjp(lambda a: forward(a, kernel), x)
        (dx,) = input_vjp(g)
        rows, cols, channels, filters = kernel.shape
        out_h, out_w = g.shape[1], g.shape[2]
        taps = [
            x[
                :,
                i : i + stride * (out_h - 1) + 1 : stride,
                j : j + stride * (out_w - 1) + 1 : stride,
            ]
            for i in range(rows)
            for j in range(cols)
        ]
        patches = jnp.concatenate(taps, axis=-1).reshape(-1, rows * cols * channels)
        dk = jnp.einsum("pa,pb->ab", patches, g.reshape(-1, filters))
        return dx, dk.reshape(kernel.shape)

    conv.defvjp(conv_forward, conv_backward)
    return conv


def max_pool_by_slices(x, data_format):
    """3x3 max pooling with stride 2 as the maximum of nine strided slices (channels last)."""
    if data_format != "channels_last":
        return max_pool_portable(x, data_format)
    height, width = x.shape[1], x.shape[2]
    if height is None or width is None:
        return max_pool_portable(x, data_format)
    out_h, out_w = (height - 3) // 2 + 1, (width - 3) // 2 + 1
    out = None
    for i in range(3):
        for j in range(3):
            window = x[:, i : i + 2 * out_h - 1 : 2, j : j + 2 * out_w - 1 : 2]
            out = window if out is None else ops.maximum(out, window)
    return out
