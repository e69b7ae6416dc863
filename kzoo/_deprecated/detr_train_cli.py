"""Deprecated: ``kzoo.models.detr.train_cli`` is now ``kzoo.cli.detr.train`` (the flags) and
``kzoo.models.detr.train`` with a ``TrainConfig`` (the training); this path works for one
release. It gathers the public names it held; ``kzoo._deprecated`` warns once when it is
imported by its old path.
"""

from kzoo.cli.detr.train import add_arguments, cmd_train, config_from_args, main, register
from kzoo.models.detr import recipe
from kzoo.models.detr.training import engine
from kzoo.models.detr.training.config import ARCHITECTURE_KEYS, DTYPE_POLICIES, TrainConfig
from kzoo.models.detr.training.engine import ARCHITECTURE_FILE

DEFAULTS = dict(recipe.SYNTHETIC)

__all__ = [
    "ARCHITECTURE_FILE",
    "ARCHITECTURE_KEYS",
    "DEFAULTS",
    "DTYPE_POLICIES",
    "add_arguments",
    "cmd_train",
    "main",
    "register",
    "train",
]


def train(args):
    """``kzoo.models.detr.train`` of a ``TrainConfig`` or of parsed flags (a Namespace)."""
    return engine.train(args if isinstance(args, TrainConfig) else config_from_args(args))
