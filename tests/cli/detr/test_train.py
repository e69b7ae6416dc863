"""``kzoo train detr`` end to end in a subprocess: checkpoints, preset, COCO eval, resume."""

import json
import os
import subprocess
import sys

import pytest

TINY = [
    "--epochs", "2", "--batch-size", "2", "--train-images", "4", "--eval-images", "4",
    "--image-size", "32", "--num-queries", "4", "--max-objects", "2", "--d-model", "16",
    "--num-heads", "2", "--num-encoder-layers", "1", "--num-decoder-layers", "2",
    "--ffn-dim", "16", "--verbose", "2",
]  # fmt: skip


def run_train(out, *extra, backend="torch"):
    env = dict(os.environ, KERAS_BACKEND=backend)
    cmd = [sys.executable, "-m", "kzoo", "train", "detr", "--out", str(out), *TINY, *extra]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_train_writes_checkpoint_preset_and_eval(tmp_path):
    out = tmp_path / "run"
    proc = run_train(out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "held-out COCO AP" in proc.stdout
    result = json.loads((out / "eval.json").read_text())
    assert result["steps"] == 4 and 0.0 <= result["AP50"] <= 1.0
    assert (out / "checkpoints" / "last.weights.h5").is_file()
    # BackupAndRestore removes its backup once training ends normally.
    assert not any((out / "backup").glob("*.weights.h5"))
    meta = json.loads((out / "preset" / "metadata.json").read_text())
    assert meta["class_names"] == ["rectangle", "ellipse", "triangle"]
    preset = str(out / "preset")
    check = (
        f"import kzoo, numpy as np; m = kzoo.models.DETR.from_preset({preset!r}); "
        "print(tuple(m(np.zeros((1, 32, 32, 3), 'float32'))['logits'].shape))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", check],
        env=dict(os.environ, KERAS_BACKEND="torch"),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0 and "(1, 4, 4)" in proc.stdout, proc.stderr[-2000:]


@pytest.mark.slow
def test_resumes_from_backup_after_an_interruption(tmp_path):
    out = tmp_path / "run"
    backup = out / "backup"
    backup.mkdir(parents=True)
    # A backup as BackupAndRestore leaves it when a run dies after its first epoch.
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, keras; from kzoo.cli.detr import train as t\n"
            "from kzoo.models.detr.training import engine\n"
            "p = __import__('argparse').ArgumentParser(); t.add_arguments(p)\n"
            f"a = p.parse_args(['--out', {str(out)!r}] + {TINY!r})\n"
            "c = t.config_from_args(a).resolved()\n"
            "m = engine.synthetic_model(c); m.optimizer.build(m.trainable_variables)\n"
            f"m.save_weights({str(backup / 'latest.weights.h5')!r})\n"
            f"open({str(backup / 'training_metadata.json')!r}, 'w').write('{{\"epoch\": 1}}')\n",
        ],
        env=dict(os.environ, KERAS_BACKEND="torch"),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    resumed = run_train(out)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    # Epoch 1 of 2 was restored, so only epoch 2 runs.
    assert "Epoch 2/2" in resumed.stdout and "Epoch 1/2" not in resumed.stdout
    fresh = run_train(out, "--fresh")
    assert "Epoch 1/2" in fresh.stdout


def test_bad_arguments_are_one_line_errors():
    from kzoo.cli.main import main

    with pytest.raises(SystemExit):
        main(["train", "detr", "--epochs"])
    assert main(["train", "detr", "--max-objects", "20", "--num-queries", "10"]) == 2
    assert main(["train", "detr", "--backbone-lr-scale", "2"]) == 2
