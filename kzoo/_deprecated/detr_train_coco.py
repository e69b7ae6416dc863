"""Deprecated: ``kzoo.models.detr.train_coco`` is now ``kzoo.models.detr.training.engine`` (with
DETR's sizes in ``kzoo.models.detr.recipe``); this path works for one release. It gathers the
public names it held; ``kzoo._deprecated`` warns once when it is imported by its old path.
"""

import dataclasses

from kzoo.models.detr import recipe
from kzoo.models.detr.training.config import TrainConfig
from kzoo.models.detr.training.engine import train, train_transform
from kzoo.models.detr.training.finetune import preset_image_size

DETR_EVAL_SIZE = recipe.EVAL_SIZE
DETR_MAX_SIZE = recipe.MAX_SIZE
DETR_SCALES = recipe.TRAIN_SCALES
DETR_CROP_RESIZE = recipe.CROP_RESIZE
DETR_CROP_SIZE = recipe.CROP_SIZE
scaled = recipe.scaled
default_max_size = recipe.default_max_size

__all__ = [
    "DETR_CROP_RESIZE",
    "DETR_CROP_SIZE",
    "DETR_EVAL_SIZE",
    "DETR_MAX_SIZE",
    "DETR_SCALES",
    "default_max_size",
    "preset_image_size",
    "scaled",
    "train_coco",
    "train_transform",
]


def train_coco(args):
    """``train`` of the options in ``args`` (an ``argparse.Namespace`` of ``kzoo train detr``)."""
    names = [field.name for field in dataclasses.fields(TrainConfig)]
    return train(TrainConfig.from_flags({name: getattr(args, name) for name in names}))
