"""kzoo.training's callbacks on a tiny keras model: checkpoints, time limits, the NaN stop, and
the backups (resumes, rotation, refused configurations, the layouts earlier kzoo versions
wrote)."""

import json
import os
import shutil
import subprocess
import sys

import h5py
import keras
import numpy as np
import pytest

from kzoo.training.callbacks import (
    STATE_ATTRIBUTE,
    AtomicBackupAndRestore,
    AtomicCheckpoint,
    StopOnNaN,
    TimeLimit,
    TrainingDiverged,
    save_weights_atomically,
)

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")


def tiny_model():
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse")
    return model


def test_atomic_checkpoint_replaces_the_file_and_leaves_no_temporaries(tmp_path):
    path = tmp_path / "ckpt" / "last.weights.h5"
    model = tiny_model()
    x, y = np.ones((8, 3), "float32"), np.ones((8, 1), "float32")
    model.fit(x, y, epochs=2, batch_size=4, verbose=0, callbacks=[AtomicCheckpoint(path)])
    assert os.listdir(path.parent) == ["last.weights.h5"]
    other = tiny_model()
    other.load_weights(path)
    np.testing.assert_allclose(other.predict(x, verbose=0), model.predict(x, verbose=0))
    with pytest.raises(ValueError, match="weights.h5"):
        AtomicCheckpoint(tmp_path / "last.h5")


def test_the_next_save_removes_temporaries_of_killed_processes_only(tmp_path):
    # A real process that has ended: its pid names no running process.
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], check=True,
                          capture_output=True, text=True)  # fmt: skip
    dead = int(done.stdout)
    orphan = tmp_path / f".tmp-{dead}-0123abcd.weights.h5"
    running = tmp_path / f".tmp-{os.getppid()}-89abcdef.weights.h5"  # a save in progress
    mine = tmp_path / f".tmp-{dead}-notes.txt"  # not a name kzoo writes
    for p in (orphan, running, mine):
        p.write_bytes(b"x")
    save_weights_atomically(tiny_model(), tmp_path / "last.weights.h5")
    assert sorted(os.listdir(tmp_path)) == sorted(["last.weights.h5", running.name, mine.name])


def test_time_limit_stops_after_the_first_batch_past_the_limit():
    model = tiny_model()
    limit = TimeLimit(1e-9)
    x, y = np.ones((40, 3), "float32"), np.ones((40, 1), "float32")
    history = model.fit(x, y, epochs=5, batch_size=4, verbose=0, callbacks=[limit])
    assert limit.stopped and len(history.history["loss"]) == 1
    unlimited = TimeLimit(None)
    model.fit(x, y, epochs=1, batch_size=4, verbose=0, callbacks=[unlimited])
    assert not unlimited.stopped
    with pytest.raises(ValueError, match="seconds"):
        TimeLimit(0)


def test_time_limit_on_cpu_time():
    model = tiny_model()
    limit = TimeLimit(cpu_seconds=1e-9)
    x, y = np.ones((40, 3), "float32"), np.ones((40, 1), "float32")
    history = model.fit(x, y, epochs=5, batch_size=4, verbose=0, callbacks=[limit])
    assert limit.stopped and len(history.history["loss"]) == 1
    with pytest.raises(ValueError, match="cpu_seconds"):
        TimeLimit(cpu_seconds=-1)


class StopAfter(keras.callbacks.Callback):
    """Raise after ``epochs`` epochs, as a killed run stops (no on_train_end)."""

    def __init__(self, epochs):
        super().__init__()
        self.epochs = epochs

    def on_epoch_end(self, epoch, logs=None):
        if epoch + 1 == self.epochs:
            raise KeyboardInterrupt


def _data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(16, 3)).astype("float32")
    return x, x @ np.array([[1.0], [-2.0], [0.5]], "float32")


def test_backup_resumes_after_the_last_finished_epoch(tmp_path):
    x, y = _data()
    backup = tmp_path / "backup"
    reference = tiny_model()
    interrupted = tiny_model()
    interrupted.set_weights(reference.get_weights())
    full = reference.fit(x, y, epochs=4, batch_size=4, verbose=0, shuffle=False)
    with pytest.raises(KeyboardInterrupt):
        interrupted.fit(
            x,
            y,
            epochs=4,
            batch_size=4,
            verbose=0,
            shuffle=False,
            callbacks=[AtomicBackupAndRestore(backup), StopAfter(2)],
        )
    # One complete backup, named by its epoch; no temporaries.
    assert sorted(os.listdir(backup)) == ["epoch-000002.weights.h5"]
    # A leftover temporary of a dead process is deleted; the resumed run starts at epoch 3.
    (backup / ".tmp-999999999-abcd.weights.h5").write_bytes(b"half")
    resumed = tiny_model()  # fresh weights and optimizer: everything comes from the backup
    callback = AtomicBackupAndRestore(backup)
    history = resumed.fit(
        x, y, epochs=4, batch_size=4, verbose=0, shuffle=False, callbacks=[callback]
    )
    assert callback.initial_epoch == 2 and len(history.history["loss"]) == 2
    np.testing.assert_allclose(history.history["loss"], full.history["loss"][2:], rtol=1e-5)
    for a, b in zip(resumed.get_weights(), reference.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    # Training ended normally: the backup is gone, and a later fit starts from its own epoch 0.
    assert not backup.exists()
    again = resumed.fit(x, y, epochs=1, batch_size=4, verbose=0)
    assert len(again.history["loss"]) == 1


def test_backup_reads_keras_own_layout(tmp_path):
    x, y = _data()
    backup = tmp_path / "backup"
    model = tiny_model()
    with pytest.raises(KeyboardInterrupt):
        model.fit(
            x,
            y,
            epochs=3,
            batch_size=4,
            verbose=0,
            callbacks=[keras.callbacks.BackupAndRestore(str(backup)), StopAfter(1)],
        )
    assert (backup / "training_metadata.json").is_file()
    callback = AtomicBackupAndRestore(backup, delete_checkpoint=False)
    history = tiny_model().fit(x, y, epochs=3, batch_size=4, verbose=0, callbacks=[callback])
    assert callback.initial_epoch == 1 and len(history.history["loss"]) == 2
    # Its own backups replace keras's files.
    assert sorted(os.listdir(backup)) == ["epoch-000003.weights.h5"]
    with pytest.raises(ValueError, match="backup_dir"):
        AtomicBackupAndRestore("")


def adam_model():
    """The model of ``data/make_legacy_backups.py``."""
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.Adam(0.05), loss="mse")
    return model


def _legacy(tmp_path, name):
    """A copy of a backup written by kzoo before the shared callback, and its reference."""
    shutil.copytree(os.path.join(DATA, name), tmp_path / "backup")
    return tmp_path / "backup", np.load(os.path.join(DATA, "legacy_reference.npz"))


class Weights(keras.callbacks.Callback):
    """The model's weights when training begins (after any restore)."""

    def on_train_begin(self, logs=None):
        self.weights = self.model.get_weights()


@pytest.mark.parametrize("layout", ["detr_backup", "convlstm_backup"])
def test_resumes_a_backup_written_before_the_shared_callback(tmp_path, layout):
    # DETR's epoch-000002.weights.h5 (no state) and ConvLSTM's epoch-0002/ folder.
    backup, ref = _legacy(tmp_path, layout)
    x, y = _data()
    config = {"kind": "color", "epochs": 4, "learning_rate": 0.01}
    callback = AtomicBackupAndRestore(backup, config=config, delete_checkpoint=False)
    seen = Weights()
    history = adam_model().fit(
        x, y, epochs=4, batch_size=4, verbose=0, shuffle=False, callbacks=[callback, seen]
    )
    assert callback.initial_epoch == 2 and len(history.history["loss"]) == 2
    np.testing.assert_array_equal(seen.weights[0], ref["kernel_2"])
    np.testing.assert_array_equal(seen.weights[1], ref["bias_2"])
    # The optimizer state came back too: the run continues as the uninterrupted one did.
    np.testing.assert_allclose(history.history["loss"], ref["losses"][2:], rtol=1e-4)
    if layout == "convlstm_backup":
        # Its history and its time are carried on.
        np.testing.assert_allclose(callback.history["loss"], ref["losses"], rtol=1e-4)
        assert callback.seconds > 0.25
    # The new layout replaced the old one.
    assert sorted(os.listdir(backup)) == ["epoch-000004.weights.h5"]


def test_a_legacy_backup_of_another_configuration_is_refused(tmp_path):
    backup, _ = _legacy(tmp_path, "convlstm_backup")
    callback = AtomicBackupAndRestore(
        backup, config={"kind": "color", "epochs": 4, "learning_rate": 0.02}
    )
    with pytest.raises(ValueError, match=r"learning_rate 0.01 \(now 0.02\).*--fresh"):
        callback.latest()
    with pytest.raises(ValueError, match="learning_rate"):
        adam_model().fit(*_data(), epochs=4, verbose=0, callbacks=[callback])
    assert os.path.isdir(backup / "epoch-0002")  # refused, not deleted


def test_the_backup_records_its_state_and_refuses_another_configuration(tmp_path):
    x, y = _data()
    backup = tmp_path / "backup"
    config = {"lr": 0.1, "layers": (2, 3)}
    first = AtomicBackupAndRestore(backup, config=config, option_names={"lr": "--lr"})
    first.tags = {"stage": "warm-up"}
    with pytest.raises(KeyboardInterrupt):
        adam_model().fit(x, y, epochs=3, verbose=0, callbacks=[first, StopAfter(2)])
    with h5py.File(backup / "epoch-000002.weights.h5", "r") as f:
        state = json.loads(f.attrs[STATE_ATTRIBUTE])
    assert state["epoch"] == 2 and state["config"] == {"lr": 0.1, "layers": [2, 3]}
    assert len(state["history"]["loss"]) == 2 and state["history"]["stage"] == ["warm-up"] * 2
    # The same configuration resumes (a tuple equals the list it was recorded as) ...
    same = AtomicBackupAndRestore(backup, config={"lr": 0.1, "layers": (2, 3)})
    assert same.latest().epoch == 2
    # ... another is refused with the option's name, before any model is needed.
    other = AtomicBackupAndRestore(backup, config={"lr": 0.2, "layers": (2, 3)},
                                   option_names={"lr": "--lr"})  # fmt: skip
    with pytest.raises(ValueError, match=r"--lr 0.1 \(now 0.2\)"):
        other.latest()
    with pytest.raises(ValueError, match="JSON"):
        AtomicBackupAndRestore(backup, config={"f": print})


def test_a_backup_of_another_architecture_is_one_clear_error(tmp_path):
    x, y = _data()
    backup = tmp_path / "backup"
    with pytest.raises(KeyboardInterrupt):
        adam_model().fit(
            x, y, epochs=2, verbose=0, callbacks=[AtomicBackupAndRestore(backup), StopAfter(1)]
        )
    wider = keras.Sequential([keras.Input((3,)), keras.layers.Dense(4), keras.layers.Dense(1)])
    wider.compile(optimizer="adam", loss="mse")
    with pytest.raises(ValueError, match="different architecture.*--fresh") as info:
        wider.fit(x, y, epochs=2, verbose=0, callbacks=[AtomicBackupAndRestore(backup)])
    assert "\n" not in str(info.value)


def test_keeps_the_newest_backups(tmp_path):
    x, y = _data()
    backup = tmp_path / "backup"
    callback = AtomicBackupAndRestore(backup, keep=2, delete_checkpoint=False)
    adam_model().fit(x, y, epochs=4, verbose=0, callbacks=[callback])
    assert sorted(os.listdir(backup)) == ["epoch-000003.weights.h5", "epoch-000004.weights.h5"]
    with pytest.raises(ValueError, match="keep"):
        AtomicBackupAndRestore(backup, keep=0)


def test_restore_at_a_chosen_moment(tmp_path):
    # A training in stages restores once, into the stage that wrote the backup, by hand.
    x, y = _data()
    backup = tmp_path / "backup"
    with pytest.raises(KeyboardInterrupt):
        adam_model().fit(
            x, y, epochs=4, verbose=0, callbacks=[AtomicBackupAndRestore(backup), StopAfter(2)]
        )
    model = adam_model()
    callback = AtomicBackupAndRestore(backup, restore_on_train_begin=False)
    assert callback.restore(model) == 2
    assert int(keras.ops.convert_to_numpy(model.optimizer.iterations)) == 2
    seen = Weights()
    restored = model.get_weights()
    # The next stage, with an optimizer of its own (one the backup's state would fit).
    model.compile(optimizer=keras.optimizers.Adam(0.05), loss="mse")
    model.fit(x, y, epochs=4, initial_epoch=2, verbose=0, callbacks=[callback, seen])
    # Nothing was loaded when the stage's fit began: the weights were the restored ones, and
    # the new optimizer counted only its own two steps (one batch per epoch), not 2 + 2.
    for a, b in zip(seen.weights, restored):
        np.testing.assert_array_equal(a, b)
    assert int(keras.ops.convert_to_numpy(model.optimizer.iterations)) == 2
    assert callback.initial_epoch == 2


def test_stop_on_nan_raises_before_the_epoch_is_saved(tmp_path):
    x, y = _data()
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.SGD(1e30), loss="mse")
    backup = tmp_path / "backup"
    with pytest.raises(TrainingDiverged, match="epoch 1, batch"):
        model.fit(x, y, epochs=2, batch_size=4, verbose=0,
                  callbacks=[StopOnNaN(), AtomicBackupAndRestore(backup)])  # fmt: skip
    assert not backup.exists()


def test_a_legacy_record_alone_is_enough_to_refuse(tmp_path):
    # What a different command finds after ConvLSTM's old layout: the check reads the record
    # before any weights.
    folder = tmp_path / "backup" / "epoch-0001"
    folder.mkdir(parents=True)
    (folder / "state.json").write_text(json.dumps({"epoch": 1, "config": {"epochs": 99}}))
    callback = AtomicBackupAndRestore(tmp_path / "backup", config={"epochs": 4})
    with pytest.raises(ValueError, match=r"epochs 99 \(now 4\)"):
        callback.latest()
