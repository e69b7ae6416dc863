"""Deprecated: ``kzoo.models.detr.finetune`` is now ``kzoo.models.detr.training.finetune``.

Kept for one release: it re-exports the public names it held and warns once, when first
imported.
"""

import warnings

from kzoo.models.detr.training.finetune import (
    CLASS_HEAD,
    from_preset,
    label_metadata,
    logger,
    with_new_class_head,
)

__all__ = ["CLASS_HEAD", "from_preset", "label_metadata", "logger", "with_new_class_head"]

warnings.warn(
    "kzoo.models.detr.finetune is deprecated; import from kzoo.models.detr.training.finetune.",
    DeprecationWarning,
    stacklevel=2,
)
