"""Deprecated: ``kzoo.models.detr.convert_weights`` is now ``kzoo.models.detr.convert.weights``.

Kept for one release: it re-exports the public names it held and warns once, when first
imported.
"""

import warnings

from kzoo.models.detr.convert.weights import (
    IGNORED_SUFFIXES,
    PARAMETERS,
    PLACEHOLDERS,
    WEIGHT_TABLE,
    assign_weights,
    canonical_name,
    to_canonical,
)

__all__ = [
    "IGNORED_SUFFIXES",
    "PARAMETERS",
    "PLACEHOLDERS",
    "WEIGHT_TABLE",
    "assign_weights",
    "canonical_name",
    "to_canonical",
]

warnings.warn(
    "kzoo.models.detr.convert_weights is deprecated; import from kzoo.models.detr.convert.weights.",
    DeprecationWarning,
    stacklevel=2,
)
