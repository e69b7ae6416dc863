"""``kzoo convert detr`` and ``kzoo predict detr``, through the CLI's own ``main``."""

import importlib.util
import os
import re
import sys

import numpy as np
import pytest
from PIL import Image

from kzoo.cli.detr.predict import class_names_for
from kzoo.cli.main import main
from kzoo.models.detr import DETR
from kzoo.models.detr.model import labels
from kzoo.presets import preset_io
from tests.robustness.support import ROOT


def _checkpoints():
    name = "detr_checkpoints"
    if name not in sys.modules:
        path = os.path.join(ROOT, "tests", "models", "detr", "detr_checkpoints.py")
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        sys.modules[name] = module
    return sys.modules[name]


NUM = r"\s+(-?\d+\.\d)"
# #, label, category id (or -), name, score, x0, y0, x1, y1.
ROW = re.compile(r"^\s*(\d+)\s+(\d+)\s+(\d+|-)\s+(.+?)\s+(\d\.\d{3})" + NUM * 4 + r"\s*$")


def _rows(out):
    return [ROW.match(line).groups() for line in out.splitlines() if ROW.match(line)]


@pytest.fixture
def picture(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "street.jpg"
    Image.fromarray(rng.integers(0, 256, (48, 80, 3), dtype=np.uint8)).save(path)
    return path


def test_convert_then_predict_draws_coco_labels(tmp_path_factory, tmp_path, picture, capsys):
    files = _checkpoints().reference(tmp_path_factory, "coco_tiny")
    assert main(["convert", "detr", str(files / "detr-tiny.pth"), str(tmp_path / "p")]) == 0
    out = capsys.readouterr().out
    assert "original format" in out and "91 classes" in out and "6 queries" in out
    assert preset_io.read_metadata(tmp_path / "p")["source_format"] == "original"

    png = tmp_path / "boxes.png"
    args = ["predict", "detr", "--preset", str(tmp_path / "p"), "--image", str(picture)]
    args += ["--out", str(png), "--threshold", "0", "--shortest-edge", "64"]
    assert main(args) == 0
    out = capsys.readouterr().out
    rows = _rows(out)
    assert "6 detections scoring above 0" in out and len(rows) == 6  # every query scores > 0
    for _, label, category, name, score, *_ in rows:
        assert name == labels.COCO91_NAMES[int(label)] and 0 < float(score) < 1
        assert category == label  # the COCO checkpoints' labels are COCO category ids
    drawn = np.asarray(Image.open(png))
    assert drawn.shape == (48, 80, 3)  # boxes are drawn on the original image size
    assert not np.array_equal(drawn, np.asarray(Image.open(picture)))


def test_predict_with_a_trained_preset_uses_class_ids_or_names(tmp_path, picture, capsys):
    # As `kzoo train detr` leaves it: a kzoo DETR with its own classes, saved as a preset.
    model = DETR(
        num_classes=3,
        num_queries=4,
        d_model=64,
        num_heads=8,
        num_encoder_layers=2,
        num_decoder_layers=2,
        ffn_dim=128,
        backbone="small",
    )
    with preset_io.placeholder_initializers(model):
        model.build((None, None, None, 3))
    rng = np.random.default_rng(1)
    for v in model.weights:
        value = rng.normal(size=v.shape) * 0.1
        v.assign(np.abs(value) + 0.5 if "variance" in v.path else value)
    model.save_to_preset(tmp_path / "trained")
    args = ["predict", "detr", "--preset", str(tmp_path / "trained"), "--image", str(picture)]
    args += ["--out", str(tmp_path / "a.png"), "--threshold", "0", "--shortest-edge", "64"]
    assert main(args) == 0
    rows = _rows(capsys.readouterr().out)
    assert len(rows) == 4 and all(name == f"class {label}" for _, label, _, name, *_ in rows)
    assert all(category == "-" for _, _, category, *_ in rows)  # no category_ids recorded
    assert os.path.isfile(tmp_path / "a.png")
    # A second run refuses to replace the picture unless asked to, before the model runs.
    (tmp_path / "a.png").write_bytes(b"mine")
    assert main(args) == 2
    assert "already exists; pass --overwrite" in capsys.readouterr().err
    assert (tmp_path / "a.png").read_bytes() == b"mine"
    assert main([*args, "--overwrite"]) == 0
    assert Image.open(tmp_path / "a.png").size == (80, 48)
    # The same for a folder of images drawn into a directory that already holds one of them.
    (tmp_path / "in").mkdir()
    (tmp_path / "drawn").mkdir()
    Image.open(picture).save(tmp_path / "in" / "one.png")
    (tmp_path / "drawn" / "one.png").write_bytes(b"mine")
    folder = ["predict", "detr", "--preset", str(tmp_path / "trained")]
    folder += ["--image", str(tmp_path / "in"), "--out", str(tmp_path / "drawn")]
    folder += ["--shortest-edge", "64"]
    assert main(folder) == 2
    assert "already holds 'one.png'" in capsys.readouterr().err
    assert (tmp_path / "drawn" / "one.png").read_bytes() == b"mine"
    capsys.readouterr()
    # Class names recorded in the preset's metadata are used when present.
    preset_io.save_preset(
        model, tmp_path / "named", extra_metadata={"class_names": ["disc", "square", "star"]}
    )
    assert class_names_for(str(tmp_path / "named"), 3) == ["disc", "square", "star"]
    assert class_names_for(str(tmp_path / "named"), 4)[3] == "class 3"  # wrong length: ignored
    assert class_names_for(str(tmp_path / "trained"), 91)[17] == "cat"


def test_user_mistakes_are_one_line_errors(tmp_path, picture, capsys):
    assert main(["convert", "detr", str(tmp_path / "missing.pth"), str(tmp_path / "p")]) == 2
    assert "does not exist" in capsys.readouterr().err
    args = ["predict", "detr", "--preset", str(tmp_path), "--image", str(tmp_path / "no.png")]
    assert main(args) == 2
    assert "no.png" in capsys.readouterr().err
    args = ["predict", "detr", "--preset", str(tmp_path), "--image", str(picture)]
    assert main([*args, "--threshold", "1.5"]) == 2
    assert "--threshold" in capsys.readouterr().err
    assert main(args) == 2  # tmp_path is not a preset
    assert "config.json" in capsys.readouterr().err
