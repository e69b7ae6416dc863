"""Deprecated: ``kzoo.models.detr.pixel_mask`` is now ``kzoo.models.detr.model.pixel_mask``.

Kept for one release: it re-exports the public names it held and warns once, when first
imported.
"""

import warnings

from kzoo.models.detr.model.pixel_mask import (
    DETRInputChecks,
    check_batch,
    check_host_inputs,
    check_pixel_mask,
    mask_summary,
    mask_summary_numpy,
    raise_for_summary,
)

__all__ = [
    "DETRInputChecks",
    "check_batch",
    "check_host_inputs",
    "check_pixel_mask",
    "mask_summary",
    "mask_summary_numpy",
    "raise_for_summary",
]

warnings.warn(
    "kzoo.models.detr.pixel_mask is deprecated; import from kzoo.models.detr.model.pixel_mask.",
    DeprecationWarning,
    stacklevel=2,
)
