"""Deprecated: ``kzoo.models.detr.optimizer`` is now ``kzoo.models.detr.training.optimizer``.

Kept for one release: it re-exports the public names it held and warns once, when first
imported.
"""

import warnings

from kzoo.models.detr.training.optimizer import (
    CLIP_OP,
    UPDATE_OP,
    ScaledAdamW,
    clip_by_global_norm,
    global_norm,
    update_portable,
)

__all__ = [
    "CLIP_OP",
    "ScaledAdamW",
    "UPDATE_OP",
    "clip_by_global_norm",
    "global_norm",
    "update_portable",
]

warnings.warn(
    "kzoo.models.detr.optimizer is deprecated; import ScaledAdamW from "
    "kzoo.models.detr (kzoo.models.detr.training.optimizer).",
    DeprecationWarning,
    stacklevel=2,
)
