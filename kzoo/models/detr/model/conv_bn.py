"""A convolution followed by a frozen batch norm, computed with the norm folded in.

``bn(conv(x)) == conv(x, kernel * scale) + shift == conv(x, kernel) * scale + shift``. Which
side takes the scale is a per-backend choice, made through the kernel dispatch:

- folded into the kernel (the portable default, TensorFlow): the kernel is small next to the
  feature maps, and oneDNN fuses the convolution with the shift;
- applied to the output (JAX, ``kzoo/backends/jax/detr_backbone.py``): XLA fuses
  ``* scale + shift`` into the ReLU's pass over the feature map;
- torch gets its own (``kzoo/backends/torch/detr_backbone.py``), which adds the shift as the
  convolution's bias and, at inference, reuses the folded kernel between calls.

1x1 convolutions run as matrix products (channels last): XLA's CPU dot is about twice as fast
as its 1x1 convolution, and on the flattened map (``kzoo.ops.pointwise``) its kernel gradient
needs no transposed copies.
"""

from kzoo.backends import dispatch
from kzoo.backends.common.detr_backbone import conv_bn_portable, pad_spatial

OP = "detr_conv_bn"

__all__ = ["OP", "conv_bn_function", "conv_bn_portable", "pad_spatial"]


dispatch.register(
    OP,
    dispatch.Implementation(
        name="portable",
        target="kzoo.backends.common.detr_backbone:conv_bn_portable",
        description="keras.ops: kernel scaled by the frozen BN, conv, shift added",
    ),
    fallback=True,
)


def conv_bn_function():
    """The ``conv_bn`` implementation for this backend and device (looked up once per call)."""
    return dispatch.select(OP).load()
