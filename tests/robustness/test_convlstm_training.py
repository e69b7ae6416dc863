"""``kzoo train convlstm-*`` under failure: a SIGKILL mid-run and a resume, bad learning
rates, and a loss that turns NaN. The kill test runs the real CLI in a subprocess."""

import hashlib
import json
import os
import signal
import subprocess
import sys
import time

import keras
import numpy as np
import pytest

from kzoo.cli.main import main
from kzoo.models import ColorFramePredictor
from kzoo.models.conv_lstm import training

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# Fitting on JAX pays XLA compilations (tens of seconds on the shared 2-core machine): the
# training tests run there in the slow step.
slow_on_jax = pytest.mark.slow if keras.backend.backend() == "jax" else (lambda f: f)

TINY = [
    "--batch-size",
    "4",
    "--val-sequences",
    "4",
    "--filters",
    "4",
    "--kernel-sizes",
    "3",
    "--frame-size",
    "12",
    "--input-frames",
    "3",
]


def _digest(directory):
    """sha256 of every file under ``directory``, by relative path."""
    found = {}
    for base, _, files in os.walk(directory):
        for name in files:
            path = os.path.join(base, name)
            with open(path, "rb") as f:
                found[os.path.relpath(path, directory)] = hashlib.sha256(f.read()).hexdigest()
    return found


def _previous_preset(out_dir):
    """A preset already in the output directory, as a user's earlier run would leave it."""
    model = ColorFramePredictor(filters=(4,), kernel_sizes=(3,))
    model.save_to_preset(str(out_dir / "preset"))
    return _digest(out_dir / "preset")


def _env(backend):
    return dict(
        os.environ,
        KERAS_BACKEND=backend,
        PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
        OMP_NUM_THREADS="1",
    )


# Two CLI processes (imports, a few epochs): about 20 s of CPU each, so it runs once, in the
# slow step, for each backend.
@pytest.mark.slow
@pytest.mark.parametrize("backend", ["torch", "tensorflow", "jax"])
def test_sigkill_mid_run_then_the_same_command_resumes(tmp_path, backend):
    out = tmp_path / "run"
    before = _previous_preset(out)
    cmd = [sys.executable, "-m", "kzoo", "train", "convlstm-color", "--output-dir", str(out)]
    cmd += ["--epochs", "4", "--warmup-epochs", "1", "--num-sequences", "32"] + TINY
    proc = subprocess.Popen(
        cmd, cwd=tmp_path, env=_env(backend), stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    backup = out / "backup"
    deadline = time.time() + 300
    try:
        while not (backup.is_dir() and any(p.startswith("epoch-") for p in os.listdir(backup))):
            assert proc.poll() is None, proc.stdout.read().decode()[-3000:]
            assert time.time() < deadline, "no epoch backup within 300 s"
            time.sleep(0.02)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    done = sorted(p for p in os.listdir(backup) if p.startswith("epoch-"))
    # epoch-NNNNNN.weights.h5 (kzoo.training's AtomicBackupAndRestore)
    epoch = int(done[-1][len("epoch-") :].split(".")[0])
    assert 1 <= epoch < 4
    # The kill left the previous preset as it was, and wrote no history.
    assert _digest(out / "preset") == before
    assert not (out / "history.json").exists()

    rerun = subprocess.run(cmd, cwd=tmp_path, env=_env(backend), capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
    assert f"{epoch} of 4 epochs done" in rerun.stdout
    # It trained only the epochs that were left.
    assert f"Epoch {epoch + 1}/4" in rerun.stdout and "Epoch 1/4" not in rerun.stdout
    with open(out / "history.json") as f:
        history = json.load(f)["history"]
    assert len(history["loss"]) == 4 and np.isfinite(history["loss"]).all()
    assert history["loss_name"] == ["binary_crossentropy"] + ["mae"] * 3
    assert not backup.exists()
    model = ColorFramePredictor.from_preset(str(out / "preset"))
    assert _digest(out / "preset") != before
    x, _ = training.synthetic_rollout_data(model, 2, 1, input_frames=3)
    assert np.isfinite(model.rollout(x, steps=2)).all()

    # A different command does not silently continue someone else's run (here, one recorded in
    # the layout of kzoo before the shared backups).
    (backup / "epoch-0001").mkdir(parents=True)
    (backup / "epoch-0001" / "state.json").write_text(
        json.dumps({"epoch": 1, "history": {}, "config": {"epochs": 99}})
    )
    assert main(["train", "convlstm-color", "--output-dir", str(out), "--epochs", "4"]) == 2


@pytest.mark.parametrize("rate", ["nan", "-1", "0", "inf"])
def test_bad_learning_rate_exits_2_naming_it(rate, tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["train", "convlstm-next", "--output-dir", str(out), "--learning-rate", rate]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("kzoo: error: --learning-rate") and err.count("\n") == 1
    assert not out.exists()
    with pytest.raises(ValueError, match="learning_rate"):
        training.train_frame_predictor(str(out), kind="color", learning_rate=float(rate))
    assert not out.exists()


@slow_on_jax
def test_nan_loss_stops_and_keeps_the_previous_preset(tmp_path, capsys):
    out = tmp_path / "run"
    before = _previous_preset(out)
    # Adam moves every weight by about the learning rate per step: at 1e30 the activations
    # overflow to inf, then inf - inf = NaN, within two steps.
    argv = ["train", "convlstm-color", "--output-dir", str(out), "--learning-rate", "1e30"]
    rc = main(argv + ["--epochs", "2", "--num-sequences", "8"] + TINY)
    assert rc not in (0, 2)
    err = capsys.readouterr().err
    assert "kzoo: error: training stopped" in err and "was not changed" in err
    assert _digest(out / "preset") == before
    assert sorted(os.listdir(out)) == ["preset"]
    with pytest.raises(training.TrainingDiverged):
        training.train_frame_predictor(
            str(out / "api"),
            kind="color",
            learning_rate=1e30,
            epochs=2,
            warmup_epochs=1,
            batch_size=4,
            num_sequences=8,
            val_sequences=4,
            filters=(4,),
            kernel_sizes=(3,),
            frame_size=12,
            input_frames=3,
        )
    assert not (out / "api" / "preset").exists()


def test_a_preset_folder_holding_user_files_is_refused_before_training(tmp_path, capsys):
    out = tmp_path / "run"
    (out / "preset").mkdir(parents=True)
    (out / "preset" / "notes.txt").write_text("mine")
    start = time.perf_counter()
    code = main(["train", "convlstm-color", "--output-dir", str(out), "--epochs", "1", *TINY])
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("kzoo: error:") and "notes.txt" in err, err
    # Refused before any training (and any backup) happened.
    assert time.perf_counter() - start < 10
    assert not (out / "backup").exists()
    assert (out / "preset" / "notes.txt").read_text() == "mine"
