"""Deprecated: ``kzoo.models.detr.convert_reading`` is now ``kzoo.models.detr.convert.reading``.

Kept for one release: it re-exports the public names it held and warns once, when first
imported.
"""

import warnings

from kzoo.models.detr.convert.reading import (
    detect_format,
    heads_from_sidecar,
    read_state_dict,
)

__all__ = ["detect_format", "heads_from_sidecar", "read_state_dict"]

warnings.warn(
    "kzoo.models.detr.convert_reading is deprecated; import from kzoo.models.detr.convert.reading.",
    DeprecationWarning,
    stacklevel=2,
)
