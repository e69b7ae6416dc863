"""The activation layout convolution-heavy models compute in on torch.

torch's convolutions take NCHW without the per-layer transposes keras adds around them for
NHWC, so models that may choose (DETR's backbone) compute channels-first on torch.
"""


def conv_data_format():
    return "channels_first"
