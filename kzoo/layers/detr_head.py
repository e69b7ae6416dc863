"""Deprecated: ``kzoo.layers.detr_head`` is now ``kzoo.models.detr.model.head``.

Kept for one release: it re-exports the public names it held and warns once, when first
imported.
"""

import warnings

from kzoo.models.detr.model.head import DETRHead

__all__ = ["DETRHead"]

warnings.warn(
    "kzoo.layers.detr_head is deprecated; import DETRHead from kzoo.layers or "
    "kzoo.models.detr (kzoo.models.detr.model.head).",
    DeprecationWarning,
    stacklevel=2,
)
