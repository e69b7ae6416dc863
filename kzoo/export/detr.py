"""Deprecated: ``kzoo.export.detr`` is now ``kzoo.models.detr.model.detections``.

Kept for one release: it re-exports the public names it held and warns once, when first
imported.
"""

import warnings

from kzoo.models.detr.model.detections import (
    DETRDetections,
    unpadded_sizes,
)

__all__ = ["DETRDetections", "unpadded_sizes"]

warnings.warn(
    "kzoo.export.detr is deprecated; import DETRDetections from kzoo.export "
    "(kzoo.models.detr.model.detections).",
    DeprecationWarning,
    stacklevel=2,
)
