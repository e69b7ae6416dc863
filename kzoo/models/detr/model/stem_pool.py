"""The ResNet stem's 3x3, stride-2 max pooling (no padding: the caller pads).

The portable ``keras.ops.max_pool`` is the default; JAX gets nine strided slices through the
dispatch (``kzoo/backends/jax/detr_backbone.py`` says why).
"""

from keras import ops

from kzoo.backends import dispatch

OP = "detr_stem_pool"


def max_pool_portable(x, data_format):
    return ops.max_pool(x, 3, strides=2, padding="valid", data_format=data_format)


dispatch.register(
    OP,
    dispatch.Implementation(
        name="portable",
        target="kzoo.models.detr.model.stem_pool:max_pool_portable",
        description="keras.ops.max_pool",
    ),
    fallback=True,
)


def stem_max_pool(x, data_format):
    """3x3, stride-2 max pooling of the stem's (padded) feature map."""
    return dispatch.select(OP).load()(x, data_format)
