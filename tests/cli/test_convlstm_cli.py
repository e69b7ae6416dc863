"""``kzoo train convlstm-color``, ``kzoo predict convlstm-color`` and ``kzoo demo``."""

import os

import keras
import numpy as np
import pytest
from PIL import Image

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
        (["predict", "convlstm-color", "--out", "a.gif", "--steps", "0"], "steps"),
        (["predict", "convlstm-next", "--preset", "no/such/dir", "--out", "a.gif"], "preset"),
        (["train", "convlstm-next", "--output-dir", "x", "--channels", "2"], "channels"),
        (["train", "convlstm-color", "--output-dir", "x", "--data", "missing"], "data"),
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


def test_demo_prints_a_few_lines_then_where_it_wrote_the_picture(tmp_path, capsys):
    """Issue #24 item 6: the demo printed a 60-line table of op implementations first."""
    out = tmp_path / "grid.png"
    assert main(["demo", "--out", str(out)]) == 0
    lines = capsys.readouterr().out.split("\n")
    wrote = next(k for k, line in enumerate(lines) if line.startswith("wrote "))
    assert lines[wrote] == f"wrote {out} (rows: last inputs, ground truth, prediction)"
    assert 3 <= wrote <= 10, lines[:wrote]
    header = "\n".join(lines[:wrote])
    backend = keras.backend.backend()
    assert f"keras {keras.__version__}, backend {backend} " in header and " on cpu (" in header
    assert "op implementations" not in header and "layer_norm" not in header
    # The progress bar (keras's Progbar, redrawn in place) ends at 4 of 4 stages.
    bar = lines[wrote - 1]
    assert "\r" in bar and "4/4" in bar.split("\r")[-1]
    assert lines[wrote + 1].startswith("MAE of the next frame")


def _tiny_train(target, out_dir, *extra):
    argv = ["train", target, "--epochs", "1", "--batch-size", "4", "--output-dir", str(out_dir)]
    argv += ["--num-sequences", "4", "--val-sequences", "4", "--filters", "4"]
    argv += ["--kernel-sizes", "3", "--frame-size", "12", "--input-frames", "3", *extra]
    return main(argv)


def test_predict_writes_a_gif_and_never_overwrites_without_asking(tmp_path, capsys):
    out = tmp_path / "pred.gif"
    argv = ["predict", "convlstm-color", "--out", str(out), "--steps", "3", "--num-examples", "2"]
    assert main(argv) == 0
    with Image.open(out) as gif:
        assert gif.format == "GIF" and gif.n_frames == 6 + 3  # 6 inputs, 3 predicted
    printed = capsys.readouterr().out
    assert "3-step rollout" in printed and "copy-last-frame baseline" in printed
    before = out.read_bytes()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("kzoo: error:") and "--overwrite" in err
    assert out.read_bytes() == before
    assert main(argv + ["--overwrite", "--seed", "5"]) == 0
    assert out.read_bytes() != before
    # Nothing is written into the preset it reads.
    from kzoo.presets import preset_io

    inside = os.path.join(preset_io.resolve_preset("convlstm_color_shapes"), "x.gif")
    assert main(["predict", "convlstm-color", "--out", inside]) == 2
    assert "inside the --preset folder" in capsys.readouterr().err
    assert not os.path.exists(inside)


@slow_on_jax
def test_next_frame_target_trains_and_writes_an_mp4(tmp_path, capsys):
    assert _tiny_train("convlstm-next", tmp_path / "run") == 0
    assert "copy-last-frame baseline" in capsys.readouterr().out
    out = tmp_path / "next.mp4"
    preset = str(tmp_path / "run" / "preset")
    argv = ["predict", "convlstm-next", "--preset", preset, "--out", str(out), "--steps", "2"]
    assert main(argv) == 0
    assert out.read_bytes()[4:8] == b"ftyp"  # an MP4 container, not a PNG
    png = tmp_path / "grid.png"
    assert main(argv[:-4] + ["--out", str(png)]) == 0
    _png_size(png)


@slow_on_jax
def test_train_on_a_video_folder(tmp_path, capsys):
    videos = tmp_path / "videos"
    videos.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        np.save(videos / f"v{i}.npy", rng.integers(0, 255, (8, 16, 16, 3), dtype=np.uint8))
    rc = _tiny_train(
        "convlstm-color", tmp_path / "run", "--data", str(videos), "--validation-split", "0.34"
    )
    assert rc == 0
    printed = capsys.readouterr().out
    assert "MAE on the validation videos" in printed
    import json

    with open(tmp_path / "run" / "preset" / "metadata.json") as f:
        meta = json.load(f)
    assert meta["input_frames"] == 3 and meta["frame_size"] == [12, 12]
    # --data also drives predict; the output may not go inside the data folder.
    preset = str(tmp_path / "run" / "preset")
    argv = ["predict", "convlstm-color", "--preset", preset, "--data", str(videos)]
    assert main(argv + ["--out", str(videos / "p.gif")]) == 2
    assert main(argv + ["--out", str(tmp_path / "p.gif"), "--steps", "2"]) == 0
    with Image.open(tmp_path / "p.gif") as gif:
        assert gif.n_frames == 3 + 2
