"""``kzoo export TARGET --preset P --format F --out DST``: real presets, real runtimes."""

import os

import keras
import pytest

from kzoo import export
from kzoo.cli.main import main
from tests.export.cases import small_detr

BACKEND = keras.backend.backend()
FORMAT = export.supported_formats(BACKEND)[0]
SUFFIX = {"saved_model": "", "onnx": ".onnx", "litert": ".tflite"}


def test_exports_the_shipped_colour_preset_and_checks_it(tmp_path, capsys):
    out = tmp_path / f"color{SUFFIX[FORMAT]}"
    argv = ["export", "convlstm-color", "--format", FORMAT, "--out", str(out)]
    rc = main(argv + ["--time", "3", "--height", "16", "--width", "24", "--batch", "1"])
    printed = capsys.readouterr().out
    assert rc == 0, printed
    assert os.path.exists(out)
    assert f"max |{FORMAT} - keras| output_0" in printed
    assert "within 1e-05 of keras" in printed
    assert "sample   frames (1, 3, 16, 24, 3)" in printed
    # The time axis stays free on every backend (torch: the ConvLSTM exports an ONNX Loop).
    assert "frames (batch, time, height, width, 3)" in printed


def test_existing_destination_is_refused_without_overwrite(tmp_path, capsys):
    out = tmp_path / f"color{SUFFIX[FORMAT]}"
    out.write_text("mine") if FORMAT != "saved_model" else out.mkdir()
    argv = ["export", "convlstm-color", "--format", FORMAT, "--out", str(out), "--time", "2"]
    assert main(argv) == 2
    assert "kzoo: error:" in capsys.readouterr().err
    assert out.read_text() == "mine" if FORMAT != "saved_model" else os.listdir(out) == []


def test_overwrite_refuses_a_folder_of_user_files_and_force_replaces_it(tmp_path, capsys):
    """Issue #24 item 7: ``--out proj2 --overwrite`` deleted the user's ``proj2/mywork.txt``
    (exit 0). Now: one error line naming the path and ``--force``, exit 2, nothing touched."""
    out = tmp_path / f"proj2{SUFFIX[FORMAT]}"
    if FORMAT == "saved_model":
        out.mkdir()
        mine = out / "mywork.txt"
    else:
        mine = out  # a file of the user's where the ONNX model would go
    mine.write_text("my work")
    argv = ["export", "convlstm-color", "--format", FORMAT, "--out", str(out), "--time", "2"]
    argv += ["--height", "8", "--width", "8", "--batch", "1"]
    assert main(argv + ["--overwrite"]) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("kzoo: error:"), captured.err
    assert str(out) in lines[0] and "--force" in lines[0]
    assert "exported" not in captured.out  # refused before the model was loaded
    assert mine.read_text() == "my work"
    assert main(argv + ["--force"]) == 0, capsys.readouterr()
    assert export.is_artifact(str(out), FORMAT)
    assert "within 1e-05 of keras" in capsys.readouterr().out


def test_unknown_format_lists_the_choices(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["export", "convlstm-color", "--format", "tflite", "--out", "x"])
    assert exit_info.value.code == 2
    assert "saved_model" in capsys.readouterr().err


@pytest.mark.parametrize(
    "format", [f for f in export.FORMATS if f not in export.supported_formats(BACKEND)] or [None]
)
def test_format_the_backend_does_not_write_is_one_error_line(format, tmp_path, capsys):
    if format is None:
        pytest.skip(f"{BACKEND} writes every format")
    rc = main(["export", "convlstm-color", "--format", format, "--out", str(tmp_path / "m")])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.startswith("kzoo: error: Format") and len(err.strip().splitlines()) == 1


# DETR's JAX exports take 10-30 s (jax2tf / jax2onnx traces): those run in the slow step.
slow_on_jax = pytest.mark.slow if BACKEND == "jax" else (lambda f: f)


@slow_on_jax
@pytest.mark.parametrize("postprocess", [False, True])
def test_detr_preset_with_and_without_post_processing(postprocess, tmp_path, capsys):
    _run_detr(postprocess, tmp_path, capsys)


def _run_detr(postprocess, tmp_path, capsys):
    preset = tmp_path / "detr_preset"
    small_detr().save_to_preset(str(preset))
    out = tmp_path / f"detr{SUFFIX[FORMAT]}"
    argv = ["export", "detr", "--preset", str(preset), "--format", FORMAT, "--out", str(out)]
    argv += ["--height", "64", "--width", "96"] + (["--postprocess"] if postprocess else [])
    rc = main(argv)
    printed = capsys.readouterr().out
    assert rc == 0, printed
    names = ("boxes", "labels", "scores") if postprocess else ("logits", "boxes", "aux_logits")
    for name in names:
        assert f"- keras| {name}" in printed
    if postprocess:
        assert " px" in printed  # pixel boxes are reported in pixels
    assert "images (batch, height, width, 3), pixel_mask (batch, height, width)" in printed
