"""Callbacks for DETR training runs: atomic checkpoints and backups, and a wall-clock limit."""

import contextlib
import json
import os
import re
import secrets
import time

import keras

from kzoo.utils.files import fsync_dir, process_gone


def save_weights_atomically(model, path):
    """``model.save_weights(path)`` through a temporary beside it, flushed, then renamed.

    A kill at any moment leaves ``path`` holding the old file or the new one, never a part.
    The temporary (``.tmp-<pid>-<token>.weights.h5``) is removed when the save fails, and
    temporaries that killed processes left beside ``path`` are removed by the next save.
    """
    path = os.path.abspath(os.fspath(path))
    parent = os.path.dirname(path)
    os.makedirs(parent, exist_ok=True)
    remove_orphaned_temporaries(parent)
    tmp = os.path.join(parent, f".tmp-{os.getpid()}-{secrets.token_hex(4)}.weights.h5")
    try:
        model.save_weights(tmp, overwrite=True)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise
    fsync_dir(parent)
    return path


TEMPORARY = re.compile(r"^\.tmp-(?P<pid>\d+)-[0-9a-f]{8}\.weights\.h5$")


def remove_orphaned_temporaries(directory):
    """Delete the weight temporaries in ``directory`` whose writing process no longer runs.

    A SIGKILL between writing a temporary and renaming it leaves the temporary behind; only
    files named exactly as :func:`save_weights_atomically` names them are touched, and never one
    of a process still running (a save in progress).
    """
    with contextlib.suppress(OSError):
        for name in os.listdir(directory):
            m = TEMPORARY.match(name)
            if m and process_gone(int(m["pid"])):
                with contextlib.suppress(FileNotFoundError):
                    os.remove(os.path.join(directory, name))


class AtomicCheckpoint(keras.callbacks.Callback):
    """Save the model's weights after every epoch; readers never see a half-written file.

    The weights go to a temporary file beside ``path`` and are renamed over it, so an
    interruption leaves the previous checkpoint intact.

    Example:

    ```python
    model.fit(data, epochs=10, callbacks=[AtomicCheckpoint("run/last.weights.h5")])
    ```
    """

    def __init__(self, path):
        super().__init__()
        path = os.fspath(path)
        if not path.endswith(".weights.h5"):
            raise ValueError(f"path must end with '.weights.h5' (keras' format); got {path!r}.")
        self.path = os.path.abspath(path)

    def on_epoch_end(self, epoch, logs=None):
        save_weights_atomically(self.model, self.path)


class TimeLimit(keras.callbacks.Callback):
    """Stop training at the end of the first batch after ``seconds`` of wall time, or after
    ``cpu_seconds`` of this process's CPU time (all its threads, from when training began).

    CPU time is the measure to use on a shared machine, where wall time depends on the other
    jobs.

    Example:

    ```python
    model.fit(data, epochs=100, callbacks=[TimeLimit(30 * 60)])
    model.fit(data, epochs=100, callbacks=[TimeLimit(cpu_seconds=25 * 60)])
    ```
    """

    def __init__(self, seconds=None, cpu_seconds=None):
        super().__init__()
        for name, value in (("seconds", seconds), ("cpu_seconds", cpu_seconds)):
            if value is not None and not value > 0:
                raise ValueError(f"{name} must be > 0 or None; got {value!r}.")
        self.seconds = seconds
        self.cpu_seconds = cpu_seconds
        self.stopped = False
        self._start = None
        self._cpu_start = None

    def on_train_begin(self, logs=None):
        self._start = time.time()
        self._cpu_start = time.process_time()

    def on_train_batch_end(self, batch, logs=None):
        wall = self.seconds is not None and time.time() - self._start > self.seconds
        cpu = (
            self.cpu_seconds is not None
            and time.process_time() - self._cpu_start > self.cpu_seconds
        )
        if wall or cpu:
            self.model.stop_training = True
            self.stopped = True


_EPOCH_FILE = re.compile(r"^epoch-(\d{6,})\.weights\.h5$")
_TMP_FILE = re.compile(r"^\.tmp-(\d+)-[0-9a-f]+\.weights\.h5$")
# keras.callbacks.BackupAndRestore's layout (what kzoo wrote before): read, never written.
_KERAS_WEIGHTS = "latest.weights.h5"
_KERAS_METADATA = "training_metadata.json"


class AtomicBackupAndRestore(keras.callbacks.Callback):
    """``keras.callbacks.BackupAndRestore`` whose backups survive a kill at any moment.

    After every epoch the model's weights, optimizer state included, are written to a temporary
    file in ``backup_dir``, flushed to disk and renamed to ``epoch-NNNNNN.weights.h5`` (NNNNNN:
    epochs finished); then older backups are deleted. The epoch number is in the file's name,
    so one ``rename`` commits the weights and the epoch together: a run killed at any instant
    leaves a complete backup of its last finished epoch (keras' own callback writes its weights
    and its metadata file in place, so a kill while it writes can leave a damaged pair).

    When training begins, the newest backup is loaded and ``fit`` continues from the epoch
    after it (``initial_epoch``); leftover temporaries of killed runs are deleted. A backup in
    keras' layout (``latest.weights.h5`` with ``training_metadata.json``) is read too. When
    ``fit`` ends without an exception the backup directory is deleted (``delete_checkpoint``),
    as keras does.

    Args:
        backup_dir: Directory of the backups (created when needed).
        delete_checkpoint: Delete ``backup_dir`` when training ends normally.

    Attributes:
        initial_epoch: The epoch ``fit`` resumes at (0 without a backup); set in
            ``on_train_begin``.

    Example:

    ```python
    model.fit(data, epochs=10, callbacks=[AtomicBackupAndRestore("run/backup")])
    # killed, then the same call again: continues after the last finished epoch
    ```
    """

    def __init__(self, backup_dir, delete_checkpoint=True):
        super().__init__()
        if not isinstance(backup_dir, str | os.PathLike) or not os.fspath(backup_dir):
            raise ValueError(f"backup_dir must be a directory path; got {backup_dir!r}.")
        if not isinstance(delete_checkpoint, bool):
            raise ValueError(f"delete_checkpoint must be True or False; got {delete_checkpoint!r}.")
        self.backup_dir = os.path.abspath(os.fspath(backup_dir))
        self.delete_checkpoint = delete_checkpoint
        self.initial_epoch = 0

    # ------------------------------------------------------------------ the files

    def backups(self):
        """``[(epochs finished, path)]`` of the complete backups, newest first."""
        try:
            names = os.listdir(self.backup_dir)
        except FileNotFoundError:
            return []
        found = []
        for name in names:
            match = _EPOCH_FILE.match(name)
            if match:
                found.append((int(match.group(1)), os.path.join(self.backup_dir, name)))
        return sorted(found, reverse=True)

    def _keras_backup(self):
        weights = os.path.join(self.backup_dir, _KERAS_WEIGHTS)
        metadata = os.path.join(self.backup_dir, _KERAS_METADATA)
        if not (os.path.isfile(weights) and os.path.isfile(metadata)):
            return None
        try:
            with open(metadata) as f:
                epoch = json.load(f)["epoch"]
        except (OSError, ValueError, KeyError, TypeError):
            return None
        if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
            return None
        return epoch, weights

    def _remove_temporaries(self):
        try:
            names = os.listdir(self.backup_dir)
        except FileNotFoundError:
            return
        for name in names:
            match = _TMP_FILE.match(name)
            if match and not _process_running(int(match.group(1))):
                with contextlib.suppress(FileNotFoundError):
                    os.remove(os.path.join(self.backup_dir, name))

    # ------------------------------------------------------------------ callback hooks

    def on_train_begin(self, logs=None):
        if not self.model.built:
            raise ValueError("AtomicBackupAndRestore needs a built model before fit().")
        self._remove_temporaries()
        candidates = self.backups()
        legacy = self._keras_backup()
        if legacy is not None:
            candidates.append(legacy)
        self.initial_epoch = 0
        if not candidates:
            return
        epoch, path = max(candidates)
        if self.model.optimizer is not None and not self.model.optimizer.built:
            # Optimizer variables must exist for their saved values to load.
            self.model.optimizer.build(self.model.trainable_variables)
        self.model.load_weights(path)
        self.initial_epoch = epoch
        # What keras' own BackupAndRestore sets: fit() starts at this epoch.
        self.model._initial_epoch = epoch

    def on_epoch_end(self, epoch, logs=None):
        finished = epoch + 1
        path = os.path.join(self.backup_dir, f"epoch-{finished:06d}.weights.h5")
        save_weights_atomically(self.model, path)
        for older, old_path in self.backups():
            if older != finished:
                with contextlib.suppress(FileNotFoundError):
                    os.remove(old_path)
        for name in (_KERAS_WEIGHTS, _KERAS_METADATA):
            with contextlib.suppress(FileNotFoundError):
                os.remove(os.path.join(self.backup_dir, name))

    def on_train_end(self, logs=None):
        # A later fit() of the same model starts where it is told to, not at this resume point.
        self.model._initial_epoch = None
        if self.delete_checkpoint and os.path.isdir(self.backup_dir):
            import shutil

            shutil.rmtree(self.backup_dir)


def _process_running(pid):
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
