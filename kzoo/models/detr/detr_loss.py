"""Deprecated: ``kzoo.models.detr.detr_loss`` is now ``kzoo.models.detr.training.loss``.

Kept for one release: it re-exports the public names it held and warns once, when first
imported.
"""

import warnings

from kzoo.models.detr.training.loss import DETRLoss

__all__ = ["DETRLoss"]

warnings.warn(
    "kzoo.models.detr.detr_loss is deprecated; import DETRLoss from kzoo.models.detr "
    "(kzoo.models.detr.training.loss).",
    DeprecationWarning,
    stacklevel=2,
)
