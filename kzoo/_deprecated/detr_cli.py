"""Deprecated: ``kzoo.models.detr.cli`` is now ``kzoo.cli.detr.predict`` and
``kzoo.cli.detr.convert``; this path works for one release. It gathers the public names it held;
``kzoo._deprecated`` warns once when it is imported by its old path.
"""

from kzoo.cli.detr import convert as _convert
from kzoo.cli.detr import predict as _predict
from kzoo.cli.detr.convert import CLI_OPTIONS, cmd_convert
from kzoo.cli.detr.predict import (
    DEFAULT_THRESHOLD,
    PALETTE,
    annotation_image_ids,
    class_names_for,
    cmd_predict,
    coco_results,
    draw_detections,
    image_files,
    output_formats,
    picture_name,
    print_table,
)

__all__ = [
    "CLI_OPTIONS",
    "DEFAULT_THRESHOLD",
    "PALETTE",
    "annotation_image_ids",
    "class_names_for",
    "cmd_convert",
    "cmd_predict",
    "coco_results",
    "draw_detections",
    "image_files",
    "output_formats",
    "picture_name",
    "print_table",
    "register",
]


def register(commands):
    """``kzoo convert detr`` and ``kzoo predict detr``, as this module registered them."""
    _convert.register(commands)
    _predict.register(commands)
