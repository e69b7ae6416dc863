"""Deprecated: ``kzoo.models.detr.stem_pool`` is now ``kzoo.models.detr.model.stem_pool``.

Kept for one release: it re-exports the public names it held and warns once, when first
imported.
"""

import warnings

from kzoo.models.detr.model.stem_pool import (
    OP,
    max_pool_portable,
    stem_max_pool,
)

__all__ = ["OP", "max_pool_portable", "stem_max_pool"]

warnings.warn(
    "kzoo.models.detr.stem_pool is deprecated; import from kzoo.models.detr.model.stem_pool.",
    DeprecationWarning,
    stacklevel=2,
)
