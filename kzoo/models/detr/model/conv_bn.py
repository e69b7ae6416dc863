"""A convolution followed by a frozen batch norm, computed with the norm folded in.

``bn(conv(x)) == conv(x, kernel * scale) + shift == conv(x, kernel) * scale + shift``. Which
side takes the scale is a per-backend choice, made through the kernel dispatch:

- folded into the kernel (the portable default, TensorFlow): the kernel is small next to the
  feature maps, and oneDNN fuses the convolution with the shift;
- applied to the output (JAX, ``kzoo/backends/jax/detr_backbone.py``): XLA fuses
  ``* scale + shift`` into the ReLU's pass over the feature map;
- torch gets its own (``kzoo/backends/torch/detr_conv_bn.py``), which adds the shift as the
  convolution's bias and, at inference, reuses the folded kernel between calls.

1x1 convolutions run as matrix products (channels last): XLA's CPU dot is about twice as fast
as its 1x1 convolution, and on the flattened map (``kzoo.ops.pointwise``) its kernel gradient
needs no transposed copies.
"""

from keras import ops

from kzoo.backends import dispatch
from kzoo.ops.pointwise import pointwise_conv

OP = "detr_conv_bn"


def pad_spatial(x, amount, data_format):
    spatial = ((amount, amount), (amount, amount))
    if data_format == "channels_first":
        return ops.pad(x, ((0, 0), (0, 0), *spatial))
    return ops.pad(x, ((0, 0), *spatial, (0, 0)))


def _subsample(x, stride):
    """``x[:, ::stride, ::stride]`` (channels last), sized as a strided convolution's output.

    Both are ``ceil(n / stride)``, but a shape-polymorphic trace (JAX export) writes the strided
    3x3 branch's size as ``(n - 1) // stride + 1`` and cannot prove it equal to ``x[::stride]``'s
    ``(n + 1) // stride``; stopping the slice after the last window's start gives the same
    expression, so the residual sum type-checks.
    """
    shape = ops.shape(x)
    stops = []
    for n in (shape[1], shape[2]):
        stops.append(None if isinstance(n, int) else (n - 1) // stride * stride + 1)
    return x[:, : stops[0] : stride, : stops[1] : stride]


def conv_bn_portable(conv, bn, x, stride, pad, data_format, fold=True, strided_conv=None):
    """``bn(conv(x))`` with symmetric zero padding ``pad`` (as torch pads), in keras.ops.

    The convolution's ``dilation_rate`` is honoured (DETR-DC5's last stage); ``pad`` is then the
    dilation, as torchvision pads a dilated 3x3 convolution.

    ``fold``: scale the kernel (True) or the output (False) by the norm's scale.
    ``strided_conv``: optional ``f(x, kernel, stride)`` for the strided 3x3 convolutions
    (channels last, ``x`` already padded), in place of ``ops.conv``.
    """
    scale, shift = bn.scale_and_shift(x.dtype)
    dilation = conv.dilation_rate[0]
    padding = "valid"
    if pad and stride == 1 and dilation * (conv.kernel_size[0] - 1) == 2 * pad:
        # Stride-1 "same" pads symmetrically on every backend, and inside the convolution
        # (XLA) rather than through a padded copy of the feature map.
        padding = "same"
    elif pad:
        x = pad_spatial(x, pad, data_format)
    kernel = ops.cast(conv.kernel, x.dtype)
    if fold:
        kernel = kernel * scale
    if conv.kernel_size == (1, 1) and not pad and data_format == "channels_last":
        if stride > 1:
            x = _subsample(x, stride)
        y = pointwise_conv(x, kernel[0, 0])
    elif strided_conv is not None and stride > 1 and conv.kernel_size == (3, 3) and dilation == 1:
        y = strided_conv(x, kernel, stride)
    else:
        y = ops.conv(
            x,
            kernel,
            strides=stride,
            padding=padding,
            data_format=data_format,
            dilation_rate=dilation,
        )
    if data_format == "channels_first":
        scale = ops.reshape(scale, (1, -1, 1, 1))
        shift = ops.reshape(shift, (1, -1, 1, 1))
    return y + shift if fold else y * scale + shift


dispatch.register(
    OP,
    dispatch.Implementation(
        name="portable",
        target="kzoo.models.detr.model.conv_bn:conv_bn_portable",
        description="keras.ops: kernel scaled by the frozen BN, conv, shift added",
    ),
    fallback=True,
)


def conv_bn_function():
    """The ``conv_bn`` implementation for this backend and device (looked up once per call)."""
    return dispatch.select(OP).load()
