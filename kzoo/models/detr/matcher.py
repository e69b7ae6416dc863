"""Deprecated: ``kzoo.models.detr.matcher`` is now ``kzoo.models.detr.training.matcher``.

Kept for one release: it re-exports the public names it held and warns once, when first
imported.
"""

import warnings

from kzoo.models.detr.training.matcher import HungarianMatcher

__all__ = ["HungarianMatcher"]

warnings.warn(
    "kzoo.models.detr.matcher is deprecated; import HungarianMatcher from "
    "kzoo.models.detr (kzoo.models.detr.training.matcher).",
    DeprecationWarning,
    stacklevel=2,
)
