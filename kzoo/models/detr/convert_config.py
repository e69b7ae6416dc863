"""Deprecated: ``kzoo.models.detr.convert_config`` is now ``kzoo.models.detr.convert.config``.

Kept for one release: it re-exports the public names it held and warns once, when first
imported.
"""

import warnings

from kzoo.models.detr.convert.config import (
    DEFAULT_NUM_HEADS,
    RESNET_DEPTHS,
    infer_config,
)

__all__ = ["DEFAULT_NUM_HEADS", "RESNET_DEPTHS", "infer_config"]

warnings.warn(
    "kzoo.models.detr.convert_config is deprecated; import from kzoo.models.detr.convert.config.",
    DeprecationWarning,
    stacklevel=2,
)
