"""kzoo.ops."""

from kzoo.ops import box_ops  # noqa: E402,F401
from kzoo.ops.attention import dot_product_attention  # noqa: E402,F401
from kzoo.ops.hungarian import linear_sum_assignment  # noqa: E402,F401
from kzoo.ops.layer_norm import (  # noqa: E402,F401
    add_layer_norm,
    add_rms_norm,
    layer_norm,
    rms_norm,
)
from kzoo.ops.pointwise import pointwise_conv  # noqa: E402,F401
from kzoo.ops.ring_attention import exact_attention, ring_attention  # noqa: E402,F401
