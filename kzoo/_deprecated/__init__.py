"""Module paths kzoo had before the house redesign (issue #25), kept working for one release.

Importing an old path warns once with a ``DeprecationWarning`` naming where its contents went, and
gives the very objects of the new modules: an old module that was only renamed *is* the new
module (``MOVED``); one whose contents were spread over several new modules is a small module of
this package that gathers them (``GATHERED``), with the same names it had. A finder on
``sys.meta_path`` (installed by ``import kzoo``) answers for the old names only, so nothing of
this lives in the folders where the code now is.

Two public names moved to the package of the model they belong to (``NAMES``):
``kzoo.layers.DETRHead`` is ``kzoo.models.DETRHead`` and ``kzoo.export.DETRDetections`` is
``kzoo.models.DETRDetections``; the old names answer through ``moved_name``, looked up by name so
that ``kzoo.layers`` and ``kzoo.export`` import nothing from the layer above them.

The public API (``kzoo.models.*``, ``kzoo.models.detr.*``) is not deprecated and warns nothing.
Next release: delete this package, its ``install()`` call in ``kzoo/__init__.py`` and the two
``__getattr__`` calling ``moved_name``.
"""

import importlib
import importlib.abc
import importlib.util
import os
import sys
import warnings

# An old module that was renamed: old dotted path -> the module it now is.
MOVED = {
    "kzoo.models.detr.detr_model": "kzoo.models.detr.model.detr",
    "kzoo.models.detr.backbone": "kzoo.models.detr.model.backbone",
    "kzoo.models.detr.conv_bn": "kzoo.models.detr.model.conv_bn",
    "kzoo.models.detr.stem_pool": "kzoo.models.detr.model.stem_pool",
    "kzoo.models.detr.initializers": "kzoo.models.detr.model.initializers",
    "kzoo.models.detr.transformer": "kzoo.models.detr.model.transformer",
    "kzoo.models.detr.position_embedding": "kzoo.models.detr.model.position_embedding",
    "kzoo.models.detr.pixel_mask": "kzoo.models.detr.model.pixel_mask",
    "kzoo.models.detr.postprocess": "kzoo.models.detr.model.postprocess",
    "kzoo.models.detr.coco_names": "kzoo.models.detr.model.labels",
    "kzoo.models.detr.detr_loss": "kzoo.models.detr.training.loss",
    "kzoo.models.detr.matcher": "kzoo.models.detr.training.matcher",
    "kzoo.models.detr.optimizer": "kzoo.models.detr.training.optimizer",
    "kzoo.models.detr.finetune": "kzoo.models.detr.training.finetune",
    "kzoo.models.detr.convert_config": "kzoo.models.detr.convert.config",
    "kzoo.models.detr.convert_reading": "kzoo.models.detr.convert.reading",
    "kzoo.models.detr.convert_weights": "kzoo.models.detr.convert.weights",
    "kzoo.layers.detr_head": "kzoo.models.detr.model.head",
    "kzoo.export.detr": "kzoo.models.detr.model.detections",
    "kzoo.layers.conv_lstm_portable": "kzoo.backends.common.conv_lstm",
    # The command line's modules, all in kzoo/cli (issue #24); the path checks moved below the
    # models, which use them too.
    "kzoo.models.conv_lstm.cli": "kzoo.cli.convlstm",
    "kzoo.export.cli": "kzoo.cli.export",
    "kzoo.cli.paths": "kzoo.utils.paths",
}

# A public name that moved: package -> {name: the module that holds it now}.
NAMES = {
    "kzoo.layers": {"DETRHead": "kzoo.models.detr.model.head"},
    "kzoo.export": {"DETRDetections": "kzoo.models.detr.model.detections"},
}

# An old module whose names went to several new homes: old path -> (the module of this package
# that gathers them, what the warning says).
GATHERED = {
    "kzoo.models.detr.train_cli": (
        "kzoo._deprecated.detr_train_cli",
        (
            "kzoo.models.detr.train_cli is deprecated; build a TrainConfig and call train(config) from "
            "kzoo.models.detr; the command line is kzoo.cli.detr.train."
        ),
    ),
    "kzoo.models.detr.train_coco": (
        "kzoo._deprecated.detr_train_coco",
        (
            "kzoo.models.detr.train_coco is deprecated; call train(TrainConfig(...)) from "
            "kzoo.models.detr (kzoo.models.detr.training.engine); DETR's sizes are in "
            "kzoo.models.detr.recipe."
        ),
    ),
    "kzoo.models.detr.cli": (
        "kzoo._deprecated.detr_cli",
        (
            "kzoo.models.detr.cli is deprecated; import from kzoo.cli.detr.predict and "
            "kzoo.cli.detr.convert."
        ),
    ),
    "kzoo.models.detr.eval_cli": (
        "kzoo._deprecated.detr_eval_cli",
        ("kzoo.models.detr.eval_cli is deprecated; import from kzoo.cli.detr.evaluate."),
    ),
    "kzoo.models.detr.coco_callbacks": (
        "kzoo._deprecated.detr_coco_callbacks",
        (
            "kzoo.models.detr.coco_callbacks is deprecated; import CocoEvaluation and DatasetEpoch from "
            "kzoo.models.detr.training.callbacks, evaluate_coco and predict_coco from "
            "kzoo.models.detr.training.evaluation."
        ),
    ),
    "kzoo.models.detr.train_callbacks": (
        "kzoo._deprecated.detr_train_callbacks",
        (
            "kzoo.models.detr.train_callbacks is deprecated; import the callbacks from "
            "kzoo.training (kzoo.training.callbacks)."
        ),
    ),
}


def message(old):
    """The warning for importing ``old``: what it is deprecated for."""
    if old in GATHERED:
        return GATHERED[old][1]
    return f"{old} is deprecated; import from {MOVED[old]}."


_HERE = os.path.dirname(os.path.abspath(__file__))


def _stacklevel():
    # The frame that imported the old path: past importlib's own frames and this module's.
    frame, level = sys._getframe(1), 1
    while frame is not None and (
        frame.f_code.co_filename.startswith("<frozen importlib")
        or os.path.dirname(os.path.abspath(frame.f_code.co_filename)) == _HERE
        or frame.f_code.co_filename.endswith(os.path.join("importlib", "__init__.py"))
    ):
        frame, level = frame.f_back, level + 1
    return level


class _OldPaths(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds the old module paths, and loads each as the module it became."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname in MOVED or fullname in GATHERED:
            return importlib.util.spec_from_loader(fullname, self)
        return None

    def create_module(self, spec):
        old = spec.name
        new = GATHERED[old][0] if old in GATHERED else MOVED[old]
        module = importlib.import_module(new)
        warnings.warn(message(old), DeprecationWarning, stacklevel=_stacklevel())
        return module

    def exec_module(self, module):
        # The module is the new one, executed already.
        pass


_FINDER = _OldPaths()


def install():
    """Let the old paths be imported (idempotent)."""
    if _FINDER not in sys.meta_path:
        sys.meta_path.insert(0, _FINDER)


def moved_name(package, name):
    """``package.name`` for a name in ``NAMES``, with a ``DeprecationWarning`` naming the new home.

    For a package's module ``__getattr__``; any other name raises ``AttributeError`` as Python
    would.
    """
    module = NAMES.get(package, {}).get(name)
    if module is None:
        raise AttributeError(f"module {package!r} has no attribute {name!r}")
    warnings.warn(
        f"{package}.{name} is deprecated; use kzoo.models.{name}.",
        DeprecationWarning,
        stacklevel=2,
    )
    return getattr(importlib.import_module(module), name)
