"""DETR's ResNet backbone pieces in keras.ops: the portable implementations behind the dispatch.

The model (``kzoo/models/detr/model/conv_bn.py``, ``stem_pool.py``) registers these as the
fallbacks of ops ``detr_conv_bn`` and ``detr_stem_pool``; the JAX and torch versions
(``kzoo/backends/jax/detr_backbone.py``, ``kzoo/backends/torch/detr_backbone.py``) build on them,
so they live here, below both.
"""

from keras import ops

from kzoo.backends.common.pointwise import pointwise_conv


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


def epilogue(y, residual=None, relu=False):
    """What follows a ResNet convolution and its norm: ``relu(y + residual)``, either optional."""
    if residual is not None:
        y = y + residual
    return ops.relu(y) if relu else y


def conv_bn_portable(
    conv,
    bn,
    x,
    stride,
    pad,
    data_format,
    fold=True,
    strided_conv=None,
    *,
    residual=None,
    relu=False,
):
    """``bn(conv(x))`` with symmetric zero padding ``pad`` (as torch pads), in keras.ops; then
    ``residual`` added and a ReLU when asked (:func:`epilogue`).

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
    return epilogue(y + shift if fold else y * scale + shift, residual, relu)


def max_pool_portable(x, data_format):
    return ops.max_pool(x, 3, strides=2, padding="valid", data_format=data_format)
