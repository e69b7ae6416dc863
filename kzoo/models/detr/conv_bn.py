"""Deprecated: ``kzoo.models.detr.conv_bn`` is now ``kzoo.models.detr.model.conv_bn``.

Kept for one release: it re-exports the public names it held and warns once, when first
imported.
"""

import warnings

from kzoo.models.detr.model.conv_bn import (
    OP,
    conv_bn_function,
    conv_bn_portable,
    pad_spatial,
)

__all__ = ["OP", "conv_bn_function", "conv_bn_portable", "pad_spatial"]

warnings.warn(
    "kzoo.models.detr.conv_bn is deprecated; import from kzoo.models.detr.model.conv_bn.",
    DeprecationWarning,
    stacklevel=2,
)
