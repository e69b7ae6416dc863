"""The ResNet stem's 3x3, stride-2 max pooling (no padding: the caller pads).

The portable ``keras.ops.max_pool`` is the default; JAX gets nine strided slices through the
dispatch (``kzoo/backends/jax/detr_backbone.py`` says why).
"""

from kzoo.backends import dispatch
from kzoo.backends.common.detr_backbone import max_pool_portable

OP = "detr_stem_pool"

__all__ = ["OP", "max_pool_portable", "stem_max_pool"]


dispatch.register(
    OP,
    dispatch.Implementation(
        name="portable",
        target="kzoo.backends.common.detr_backbone:max_pool_portable",
        description="keras.ops.max_pool",
    ),
    fallback=True,
)


def stem_max_pool(x, data_format):
    """3x3, stride-2 max pooling of the stem's (padded) feature map."""
    return dispatch.select(OP).load()(x, data_format)
