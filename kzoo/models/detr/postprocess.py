"""Deprecated: ``kzoo.models.detr.postprocess`` is now ``kzoo.models.detr.model.postprocess``.

Kept for one release: it re-exports the public names it held and warns once, when first
imported.
"""

import warnings

from kzoo.models.detr.model.postprocess import (
    outputs_to_detections,
    predict_detections,
)

__all__ = ["outputs_to_detections", "predict_detections"]

warnings.warn(
    "kzoo.models.detr.postprocess is deprecated; import from kzoo.models.detr.model.postprocess.",
    DeprecationWarning,
    stacklevel=2,
)
