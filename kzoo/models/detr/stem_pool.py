"""The ResNet stem's 3x3, stride-2 max pooling (no padding: the caller pads).

XLA's CPU ``reduce_window`` is slow for this window: the maximum of nine strided slices of the
feature map takes 0.6 ms where ``reduce_window`` takes 5 ms (stem of a 480x640 image), so JAX
gets the slices through the kernel dispatch. TensorFlow's strided slices are the slow side
there (87 ms against 1.3 ms for its pooling kernel), so every other backend keeps
``keras.ops.max_pool``.
"""

from keras import ops

from kzoo.kernels import dispatch


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


def max_pool_portable(x, data_format):
    return ops.max_pool(x, 3, strides=2, padding="valid", data_format=data_format)


dispatch.register(
    "detr_stem_pool",
    dispatch.Implementation(
        name="slices",
        target="kzoo.models.detr.stem_pool:max_pool_by_slices",
        backends=("jax",),
        description="maximum of nine strided slices (XLA's CPU reduce_window is ~8x slower)",
    ),
)
dispatch.register(
    "detr_stem_pool",
    dispatch.Implementation(
        name="portable",
        target="kzoo.models.detr.stem_pool:max_pool_portable",
        description="keras.ops.max_pool",
    ),
    fallback=True,
)


def stem_max_pool(x, data_format):
    """3x3, stride-2 max pooling of the stem's (padded) feature map."""
    return dispatch.select("detr_stem_pool").load()(x, data_format)
