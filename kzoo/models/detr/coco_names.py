"""Deprecated: ``kzoo.models.detr.coco_names`` is now ``kzoo.models.detr.model.labels``.

Kept for one release: it re-exports the public names it held and warns once, when first
imported.
"""

import warnings

from kzoo.models.detr.model.labels import (
    COCO91_NAMES,
    COCO_CATEGORIES,
    NUM_CLASSES,
    UNUSED,
    class_name,
)

__all__ = ["COCO91_NAMES", "COCO_CATEGORIES", "NUM_CLASSES", "UNUSED", "class_name"]

warnings.warn(
    "kzoo.models.detr.coco_names is deprecated; import from kzoo.models.detr.model.labels.",
    DeprecationWarning,
    stacklevel=2,
)
