"""AtomicCheckpoint and TimeLimit on a tiny keras model."""

import os
import subprocess
import sys

import keras
import numpy as np
import pytest

from kzoo.models.detr.train_callbacks import AtomicCheckpoint, TimeLimit, save_weights_atomically


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
    from kzoo.models.detr.train_callbacks import AtomicBackupAndRestore

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
    from kzoo.models.detr.train_callbacks import AtomicBackupAndRestore

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
