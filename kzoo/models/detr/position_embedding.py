"""Deprecated: ``kzoo.models.detr.position_embedding`` is now
``kzoo.models.detr.model.position_embedding``.

Kept for one release: it re-exports the public names it held and warns once, when first
imported.
"""

import warnings

from kzoo.models.detr.model.position_embedding import SinePositionEmbedding

__all__ = ["SinePositionEmbedding"]

warnings.warn(
    "kzoo.models.detr.position_embedding is deprecated; import SinePositionEmbedding "
    "from kzoo.models.detr (kzoo.models.detr.model.position_embedding).",
    DeprecationWarning,
    stacklevel=2,
)
