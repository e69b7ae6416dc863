"""Import paths that moved in the house redesign (issue #25) keep working for one release.

Importing an old module warns once with a ``DeprecationWarning`` naming where its contents went,
and gives the very objects of the new modules; the two public names that moved
(``kzoo.layers.DETRHead``, ``kzoo.export.DETRDetections``, now in ``kzoo.models``) warn and give
the same classes; the public API (``kzoo.models.*``, ``kzoo.models.detr.*``) warns not at all,
and no kzoo module imports an old path.
"""

import importlib
import os
import subprocess
import sys
import warnings

import pytest

from tests.robustness.support import ROOT

D = "kzoo.models.detr"
# Old module: (what the warning names, {name: new module holding it}).
MOVED = {
    f"{D}.detr_model": (f"{D}.model.detr", {"DETR": f"{D}.model.detr", "nearest_indices": f"{D}.model.detr", "CONFIG_VERSION": f"{D}.model.detr"}),
    f"{D}.backbone": (f"{D}.model.backbone", {"ResNetBackbone": f"{D}.model.backbone", "FrozenBatchNormalization": f"{D}.model.backbone", "RESNET_BLOCKS": f"{D}.model.backbone"}),
    f"{D}.conv_bn": (f"{D}.model.conv_bn", {"conv_bn_function": f"{D}.model.conv_bn", "conv_bn_portable": f"{D}.model.conv_bn"}),
    f"{D}.stem_pool": (f"{D}.model.stem_pool", {"stem_max_pool": f"{D}.model.stem_pool"}),
    f"{D}.initializers": (f"{D}.model.initializers", {"glorot_uniform": f"{D}.model.initializers"}),
    f"{D}.transformer": (f"{D}.model.transformer", {"DETRTransformer": f"{D}.model.transformer", "DETRAttention": f"{D}.model.transformer"}),
    f"{D}.position_embedding": (f"{D}.model.position_embedding", {"SinePositionEmbedding": f"{D}.model.position_embedding"}),
    f"{D}.pixel_mask": (f"{D}.model.pixel_mask", {"check_pixel_mask": f"{D}.model.pixel_mask", "mask_summary": f"{D}.model.pixel_mask"}),
    f"{D}.postprocess": (f"{D}.model.postprocess", {"outputs_to_detections": f"{D}.model.postprocess"}),
    f"{D}.coco_names": (f"{D}.model.labels", {"COCO91_NAMES": f"{D}.model.labels", "class_name": f"{D}.model.labels"}),
    "kzoo.layers.detr_head": (f"{D}.model.head", {"DETRHead": f"{D}.model.head"}),
    "kzoo.export.detr": (f"{D}.model.detections", {"DETRDetections": f"{D}.model.detections"}),
    f"{D}.detr_loss": (f"{D}.training.loss", {"DETRLoss": f"{D}.training.loss"}),
    f"{D}.matcher": (f"{D}.training.matcher", {"HungarianMatcher": f"{D}.training.matcher"}),
    f"{D}.optimizer": (f"{D}.training.optimizer", {"ScaledAdamW": f"{D}.training.optimizer", "update_portable": f"{D}.training.optimizer"}),
    f"{D}.finetune": (f"{D}.training.finetune", {"with_new_class_head": f"{D}.training.finetune", "label_metadata": f"{D}.training.finetune"}),
    f"{D}.coco_callbacks": (f"{D}.training.evaluation", {"CocoEvaluation": f"{D}.training.callbacks", "DatasetEpoch": f"{D}.training.callbacks", "evaluate_coco": f"{D}.training.evaluation", "predict_coco": f"{D}.training.evaluation"}),
    f"{D}.train_coco": (f"{D}.training.engine", {"train_transform": f"{D}.training.engine", "preset_image_size": f"{D}.training.finetune", "default_max_size": f"{D}.recipe", "scaled": f"{D}.recipe"}),
    f"{D}.train_callbacks": ("kzoo.training", {"AtomicBackupAndRestore": "kzoo.training.callbacks", "AtomicCheckpoint": "kzoo.training.callbacks", "TimeLimit": "kzoo.training.callbacks", "save_weights_atomically": "kzoo.training.callbacks"}),
    f"{D}.convert_config": (f"{D}.convert.config", {"infer_config": f"{D}.convert.config"}),
    f"{D}.convert_reading": (f"{D}.convert.reading", {"read_state_dict": f"{D}.convert.reading"}),
    f"{D}.convert_weights": (f"{D}.convert.weights", {"WEIGHT_TABLE": f"{D}.convert.weights", "assign_weights": f"{D}.convert.weights"}),
    f"{D}.cli": ("kzoo.cli.detr.predict", {"cmd_predict": "kzoo.cli.detr.predict", "class_names_for": "kzoo.cli.detr.predict", "cmd_convert": "kzoo.cli.detr.convert"}),
    f"{D}.eval_cli": ("kzoo.cli.detr.evaluate", {"cmd_eval": "kzoo.cli.detr.evaluate", "resolve_sizes": "kzoo.cli.detr.evaluate"}),
    f"{D}.train_cli": ("TrainConfig", {"add_arguments": "kzoo.cli.detr.train", "main": "kzoo.cli.detr.train", "ARCHITECTURE_KEYS": f"{D}.training.config"}),
    "kzoo.models.conv_lstm.cli": ("kzoo.cli.convlstm", {"register": "kzoo.cli.convlstm", "train": "kzoo.cli.convlstm", "predict": "kzoo.cli.convlstm", "TARGETS": "kzoo.cli.convlstm"}),
    "kzoo.export.cli": ("kzoo.cli.export", {"register": "kzoo.cli.export", "cmd_export": "kzoo.cli.export", "sample_inputs": "kzoo.cli.export", "FORMATS": "kzoo.cli.export"}),
    "kzoo.cli.paths": ("kzoo.utils.paths", {"check_input_file": "kzoo.utils.paths", "check_output_file": "kzoo.utils.paths", "check_output_location": "kzoo.utils.paths", "describe": "kzoo.utils.paths"}),
}  # fmt: skip


@pytest.mark.parametrize("old", sorted(MOVED))
def test_an_old_path_warns_once_and_gives_the_same_objects(old):
    named, names = MOVED[old]
    sys.modules.pop(old, None)
    with pytest.warns(DeprecationWarning, match=rf"{old} is deprecated.*{named}"):
        module = importlib.import_module(old)
    for name, home in names.items():
        assert getattr(module, name) is getattr(importlib.import_module(home), name), name
    # Once: the module is imported now.
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        importlib.import_module(old)


def test_the_old_wrappers_take_what_they_took():
    import argparse

    from kzoo.models.detr import recipe

    for name in ("train_coco", "train_cli", "eval_cli", "cli"):
        sys.modules.pop(f"{D}.{name}", None)
    with pytest.warns(DeprecationWarning):
        train_coco = importlib.import_module(f"{D}.train_coco")
        train_cli = importlib.import_module(f"{D}.train_cli")
        eval_cli = importlib.import_module(f"{D}.eval_cli")
        cli = importlib.import_module(f"{D}.cli")
    assert (train_coco.DETR_EVAL_SIZE, train_coco.DETR_MAX_SIZE) == (800, 1333)
    assert eval_cli.DEFAULT_SIZES == (recipe.EVAL_SIZE, recipe.MAX_SIZE)
    assert train_cli.DEFAULTS == recipe.SYNTHETIC
    # The old register() added both commands; the old train() took parsed flags.
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command")
    commands = {
        name: sub.add_parser(name).add_subparsers(dest="target") for name in ("convert", "predict")
    }
    cli.register(commands)
    assert all("detr" in c.choices for c in commands.values())
    flags = argparse.ArgumentParser()
    train_cli.add_arguments(flags)
    with pytest.raises(ValueError, match="--epochs must be >= 1"):
        train_cli.train(flags.parse_args(["--epochs", "0"]))


def test_training_backup_of_conv_lstm_is_the_shared_callback():
    from kzoo.models.conv_lstm import training
    from kzoo.training import AtomicBackupAndRestore

    with pytest.warns(DeprecationWarning, match="TrainingBackup is deprecated.*kzoo.training"):
        assert training.TrainingBackup is AtomicBackupAndRestore


@pytest.mark.parametrize(
    "package, name", [("kzoo.layers", "DETRHead"), ("kzoo.export", "DETRDetections")]
)
def test_a_moved_public_name_warns_and_is_the_same_class(package, name):
    import kzoo.models

    module = importlib.import_module(package)
    with pytest.warns(DeprecationWarning, match=f"{package}.{name} is deprecated.*kzoo.models"):
        assert getattr(module, name) is getattr(kzoo.models, name)
    with pytest.raises(AttributeError, match="no attribute 'NoSuchName'"):
        module.NoSuchName  # noqa: B018


def test_the_public_api_and_kzoo_itself_warn_nothing():
    # A fresh process: every kzoo module imported, every public name used; no kzoo deprecation.
    code = (
        "import warnings\n"
        "warnings.simplefilter('always')\n"
        "with warnings.catch_warnings(record=True) as caught:\n"
        "    warnings.simplefilter('always')\n"
        "    import kzoo, kzoo.cli.main, kzoo.cli.detr.train, kzoo.cli.detr.predict\n"
        "    import kzoo.cli.detr.evaluate, kzoo.cli.detr.convert, kzoo.training\n"
        "    import kzoo.cli.convlstm, kzoo.cli.export, kzoo.utils.paths\n"
        "    import kzoo.models.detr.convert, kzoo.models.conv_lstm.training\n"
        "    from kzoo.models.detr import *\n"
        "    kzoo.models.DETR, kzoo.models.DETRHead, kzoo.models.DETRDetections\n"
        "    kzoo.cli.main.build_parser()\n"
        "ours = [str(w.message) for w in caught if 'kzoo' in str(w.message)\n"
        "        and issubclass(w.category, DeprecationWarning)]\n"
        "assert not ours, ours\n"
    )
    env = dict(os.environ, PYTHONPATH=ROOT)
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
