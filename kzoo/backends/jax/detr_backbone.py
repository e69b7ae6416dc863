"""DETR backbone pieces that XLA on the CPU runs faster written another way.

Both are ``keras.ops`` code, chosen for JAX only because of how XLA compiles them:

- ``conv_bn_scale_after``: the frozen batch norm's scale applied to the convolution's output,
  where XLA fuses ``* scale + shift`` into the ReLU's pass over the feature map; folding it
  into the kernel (the portable default, best for TensorFlow's oneDNN) costs a pass over all
  23.5 M ResNet-50 weights at every call (7% of an inference on the CPU).
- ``max_pool_by_slices``: the stem's 3x3, stride-2 max pool as the maximum of nine strided
  slices (0.6 ms against 5 ms for XLA's CPU ``reduce_window`` on a 480x640 image's stem;
  TensorFlow's strided slices are the slow side, 87 ms against 1.3 ms, so it keeps its op).
"""

from keras import ops

from kzoo.models.detr.conv_bn import conv_bn_portable
from kzoo.models.detr.stem_pool import max_pool_portable


def conv_bn_scale_after(conv, bn, x, stride, pad, data_format):
    """``bn(conv(x))`` with the norm's scale applied to the output."""
    return conv_bn_portable(conv, bn, x, stride, pad, data_format, fold=False)


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
