"""Deprecated: ``kzoo.models.detr.initializers`` is now ``kzoo.models.detr.model.initializers``.

Kept for one release: it re-exports the public names it held and warns once, when first
imported.
"""

import warnings

from kzoo.models.detr.model.initializers import (
    HostRandomNormal,
    HostVarianceScaling,
    glorot_uniform,
    he_normal_fan_out,
    standard_normal,
)

__all__ = [
    "HostRandomNormal",
    "HostVarianceScaling",
    "glorot_uniform",
    "he_normal_fan_out",
    "standard_normal",
]

warnings.warn(
    "kzoo.models.detr.initializers is deprecated; import from kzoo.models.detr.model.initializers.",
    DeprecationWarning,
    stacklevel=2,
)
