"""A convolution followed by a frozen batch norm, computed as one folded convolution.

``bn(conv(x)) == conv_with(kernel * scale)(x) + shift``: the kernel is tiny next to the feature
maps, so folding saves two elementwise passes over every feature map. The portable version is
keras.ops (1x1 convolutions as matrix products); torch gets its own (``conv_bn_torch``) through
the kernel dispatch, which adds the shift as the convolution's bias and, at inference, reuses
the folded kernel between calls.
"""

from keras import ops

from kzoo.kernels import dispatch


def pad_spatial(x, amount, data_format):
    spatial = ((amount, amount), (amount, amount))
    if data_format == "channels_first":
        return ops.pad(x, ((0, 0), (0, 0), *spatial))
    return ops.pad(x, ((0, 0), *spatial, (0, 0)))


def conv_bn_portable(conv, bn, x, stride, pad, data_format):
    """``bn(conv(x))`` with symmetric zero padding ``pad`` (as torch pads), in keras.ops."""
    scale, shift = bn.scale_and_shift(x.dtype)
    padding = "valid"
    if pad and stride == 1 and conv.kernel_size[0] == 2 * pad + 1:
        # Stride-1 "same" pads symmetrically on every backend, and inside the convolution
        # (XLA) rather than through a padded copy of the feature map.
        padding = "same"
    elif pad:
        x = pad_spatial(x, pad, data_format)
    kernel = ops.cast(conv.kernel, x.dtype) * scale
    if conv.kernel_size == (1, 1) and not pad and data_format == "channels_last":
        # A 1x1 convolution is a matrix product over the channels. XLA's CPU dot runs it
        # about twice as fast as XLA's CPU convolution (docs/benchmarks.md, DETR).
        if stride > 1:
            x = x[:, ::stride, ::stride]
        y = ops.matmul(x, kernel[0, 0])
    else:
        y = ops.conv(x, kernel, strides=stride, padding=padding, data_format=data_format)
    if data_format == "channels_first":
        shift = ops.reshape(shift, (1, -1, 1, 1))
    return y + shift


dispatch.register(
    "detr_conv_bn",
    dispatch.Implementation(
        name="torch-fused",
        target="kzoo.models.detr.conv_bn_torch:conv_bn",
        backends=("torch",),
        description="F.conv2d with the frozen-BN shift as bias; folded kernel reused at inference",
    ),
)
dispatch.register(
    "detr_conv_bn",
    dispatch.Implementation(
        name="portable",
        target="kzoo.models.detr.conv_bn:conv_bn_portable",
        description="keras.ops: kernel scaled by the frozen BN, conv, shift added",
    ),
    fallback=True,
)


def conv_bn_function():
    """The ``conv_bn`` implementation for this backend and device (looked up once per call)."""
    return dispatch.select("detr_conv_bn").load()
