"""Deprecated: ``kzoo.models.detr.detr_model`` is now ``kzoo.models.detr.model.detr``.

Kept for one release: it re-exports the public names it held and warns once, when first
imported.
"""

import warnings

from kzoo.models.detr.model.detr import (
    BACKBONE_STRIDE,
    CONFIG_VERSION,
    DEFAULT_TRAINABLE_STAGES,
    DETR,
    LEGACY_WEIGHT_GROUPS,
    PROBE_SIZE,
    migrate_legacy_weights,
    nearest_indices,
)

__all__ = [
    "BACKBONE_STRIDE",
    "CONFIG_VERSION",
    "DEFAULT_TRAINABLE_STAGES",
    "DETR",
    "LEGACY_WEIGHT_GROUPS",
    "PROBE_SIZE",
    "migrate_legacy_weights",
    "nearest_indices",
]

warnings.warn(
    "kzoo.models.detr.detr_model is deprecated; import DETR from kzoo.models.detr "
    "(kzoo.models.detr.model.detr).",
    DeprecationWarning,
    stacklevel=2,
)
