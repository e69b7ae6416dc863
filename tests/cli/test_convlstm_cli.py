"""``kzoo train convlstm-color``, ``kzoo predict convlstm-color`` and ``kzoo demo``."""

import os

import keras
import pytest

from kzoo.cli.main import main

# On JAX every test that runs a layer eagerly or fits a model pays XLA compilations (tens of
# seconds on this shared 2-core machine): those run on JAX in the slow step (which runs under
# JAX) and in the per-backend runs of TensorFlow and torch.
slow_on_jax = pytest.mark.slow if keras.backend.backend() == "jax" else (lambda f: f)


def _png_size(path):
    with open(path, "rb") as f:
        head = f.read(24)
    assert head[:8] == b"\x89PNG\r\n\x1a\n"
    return int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")


@slow_on_jax
def test_train_then_predict_with_the_new_preset(tmp_path, capsys):
    out_dir = tmp_path / "run"
    rc = main(
        [
            "train",
            "convlstm-color",
            "--epochs",
            "1",
            "--batch-size",
            "4",
            "--output-dir",
            str(out_dir),
            "--num-sequences",
            "4",
            "--val-sequences",
            "4",
            "--filters",
            "4",
            "--kernel-sizes",
            "3",
        ]
    )
    assert rc == 0
    assert os.path.isfile(out_dir / "preset" / "config.json")
    _png_size(out_dir / "loss_curve.png")
    grid = tmp_path / "g.png"
    rc = main(
        ["predict", "convlstm-color", "--preset", str(out_dir / "preset"), "--out", str(grid)]
    )
    assert rc == 0
    _png_size(grid)


@pytest.mark.parametrize(
    "argv,message",
    [
        (["predict", "convlstm-color", "--out", "grid.jpg"], "png"),
        (["predict", "convlstm-color", "--preset", "no_such_preset", "--out", "g.png"], "preset"),
        (["train", "convlstm-color", "--epochs", "0", "--output-dir", "x"], "epochs"),
        (["train", "convlstm-color", "--filters", "4,0", "--output-dir", "x"], "filters"),
    ],
)
def test_user_mistakes_exit_2_with_one_line(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("kzoo: error:") and message in err.lower()


def test_demo_predicts_with_the_shipped_preset(tmp_path, capsys):
    # `kzoo demo` runs `kzoo predict convlstm-color --out ...` with no --preset: the shipped
    # convlstm_color_shapes preset.
    out = tmp_path / "demo" / "grid.png"
    assert main(["demo", "--out", str(out)]) == 0
    width, height = _png_size(out)
    assert width > height > 100  # 3 rows of 6 panels
    printed = capsys.readouterr().out
    assert "kzoo predict convlstm-color" in printed and "copy-last-frame baseline" in printed
