"""Deprecated: ``kzoo.models.detr.backbone`` is now ``kzoo.models.detr.model.backbone``.

Kept for one release: it re-exports the public names it held and warns once, when first
imported.
"""

import warnings

from kzoo.models.detr.model.backbone import (
    BASE_WIDTH,
    BLOCK_KEYS,
    EXPANSION,
    RESNET_BLOCKS,
    STAGES,
    FrozenBatchNormalization,
    ResNetBackbone,
    backbone_channels,
    channels_last,
    compute_data_format,
    region_mask,
    valid_extent,
)

__all__ = [
    "BASE_WIDTH",
    "BLOCK_KEYS",
    "EXPANSION",
    "FrozenBatchNormalization",
    "RESNET_BLOCKS",
    "ResNetBackbone",
    "STAGES",
    "backbone_channels",
    "channels_last",
    "compute_data_format",
    "region_mask",
    "valid_extent",
]

warnings.warn(
    "kzoo.models.detr.backbone is deprecated; import ResNetBackbone and "
    "FrozenBatchNormalization from kzoo.models.detr "
    "(kzoo.models.detr.model.backbone).",
    DeprecationWarning,
    stacklevel=2,
)
