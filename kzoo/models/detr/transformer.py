"""Deprecated: ``kzoo.models.detr.transformer`` is now ``kzoo.models.detr.model.transformer``.

Kept for one release: it re-exports the public names it held and warns once, when first
imported.
"""

import warnings

from kzoo.models.detr.model.transformer import (
    LAYER_NORM_EPSILON,
    DETRAttention,
    DETRTransformer,
    TransformerDecoderLayer,
    TransformerEncoderLayer,
)

__all__ = [
    "DETRAttention",
    "DETRTransformer",
    "LAYER_NORM_EPSILON",
    "TransformerDecoderLayer",
    "TransformerEncoderLayer",
]

warnings.warn(
    "kzoo.models.detr.transformer is deprecated; import DETRTransformer and its "
    "layers from kzoo.models.detr (kzoo.models.detr.model.transformer).",
    DeprecationWarning,
    stacklevel=2,
)
