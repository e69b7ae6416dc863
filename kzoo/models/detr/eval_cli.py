"""Deprecated: ``kzoo.models.detr.eval_cli`` is now ``kzoo.cli.detr.evaluate``; this path works
for one release. It re-exports the public names it held and warns once, when first imported.
"""

import warnings

from kzoo.cli.detr.evaluate import (
    add_size_arguments,
    cmd_eval,
    model_category_ids,
    register,
    resolve_sizes,
)
from kzoo.models.detr import recipe

DEFAULT_SIZES = (recipe.EVAL_SIZE, recipe.MAX_SIZE)

__all__ = [
    "DEFAULT_SIZES",
    "add_size_arguments",
    "cmd_eval",
    "model_category_ids",
    "register",
    "resolve_sizes",
]

warnings.warn(
    "kzoo.models.detr.eval_cli is deprecated; import from kzoo.cli.detr.evaluate.",
    DeprecationWarning,
    stacklevel=2,
)
