"""Deprecated: ``kzoo.models.detr.eval_cli`` is now ``kzoo.cli.detr.evaluate``; this path works for
one release. It gathers the public names it held; ``kzoo._deprecated`` warns once when it is
imported by its old path.
"""

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
