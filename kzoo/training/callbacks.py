"""Training callbacks shared by kzoo's models (ConvLSTM and DETR training use them).

- :class:`AtomicBackupAndRestore`: the state after every epoch (weights, optimizer, the metric
  history, the run's configuration) in one file renamed into place, so a kill at any instant
  leaves the last finished epoch; ``fit`` resumes after it; old epochs are rotated out; a backup
  made with another configuration is refused naming what differs;
- :class:`AtomicCheckpoint`: the weights after every epoch, written atomically;
- :class:`TimeLimit`: stop after so much wall or CPU time;
- :class:`StopOnNaN`: raise :class:`TrainingDiverged` as soon as the loss is NaN or infinite,
  before any callback saves the broken weights.
"""

import contextlib
import dataclasses
import json
import os
import re
import secrets
import shutil
import time

import keras
import numpy as np

from kzoo.utils.files import fsync_dir, process_gone


def save_weights_atomically(model, path, attributes=None):
    """``model.save_weights(path)`` through a temporary beside it, flushed, then renamed.

    A kill at any moment leaves ``path`` holding the old file or the new one, never a part.
    The temporary (``.tmp-<pid>-<token>.weights.h5``) is removed when the save fails, and
    temporaries that killed processes left beside ``path`` are removed by the next save.
    ``attributes`` (``{name: str}``) are stored on the HDF5 file's root before the rename, so
    they are committed with the weights (``keras`` ignores them when loading).
    """
    path = os.path.abspath(os.fspath(path))
    parent = os.path.dirname(path)
    os.makedirs(parent, exist_ok=True)
    remove_orphaned_temporaries(parent)
    tmp = os.path.join(parent, f".tmp-{os.getpid()}-{secrets.token_hex(4)}.weights.h5")
    try:
        model.save_weights(tmp, overwrite=True)
        if attributes:
            import h5py

            with h5py.File(tmp, "r+") as f:
                f.attrs.update(attributes)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise
    fsync_dir(parent)
    return path


TEMPORARY = re.compile(r"^\.tmp-(?P<pid>\d+)-[0-9a-f]+\.weights\.h5$")


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


class TrainingDiverged(RuntimeError):
    """The training loss became NaN or infinite (raised by :class:`StopOnNaN`)."""


class StopOnNaN(keras.callbacks.TerminateOnNaN):
    """``TerminateOnNaN`` that raises :class:`TrainingDiverged` (naming where) instead of
    stopping quietly, so that no callback saves the broken weights at the end of the epoch.

    Example:

    ```python
    try:
        model.fit(data, epochs=10, callbacks=[StopOnNaN(), AtomicBackupAndRestore("run/backup")])
    except TrainingDiverged as e:
        print(e)  # training stopped: the loss became nan in epoch 3, batch 7 (...)
    ```
    """

    def __init__(self):
        super().__init__(raise_error=True)
        self.epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not np.all(np.isfinite(np.asarray(loss, dtype="float64"))):
            raise TrainingDiverged(
                f"training stopped: the loss became {float(np.asarray(loss))} in epoch "
                f"{self.epoch + 1}, batch {batch + 1} (try a lower learning rate)"
            )


# What AtomicBackupAndRestore writes: one file per finished epoch, its training state (a JSON
# object) in the file's root attribute STATE_ATTRIBUTE.
_EPOCH_FILE = re.compile(r"^epoch-(\d{6,})\.weights\.h5$")
STATE_ATTRIBUTE = "kzoo_training_state"
# Layouts earlier kzoo versions wrote, read (and rotated out) but never written:
# keras.callbacks.BackupAndRestore's (DETR training before AtomicBackupAndRestore) ...
_KERAS_WEIGHTS = "latest.weights.h5"
_KERAS_METADATA = "training_metadata.json"
# ... and ConvLSTM training's TrainingBackup: a directory per epoch with the weights and a
# state.json holding the epoch, the history, the seconds and the run's configuration.
_EPOCH_DIR = re.compile(r"^epoch-(\d+)$")
_DIR_WEIGHTS = "training.weights.h5"
_DIR_STATE = "state.json"


@dataclasses.dataclass(frozen=True)
class Backup:
    """One complete backup: the epochs it finished, its weights file, its training state (None
    for a layout that recorded none) and what to delete to remove it (a file or a folder)."""

    epoch: int
    weights: str
    state: dict | None
    path: str


def _read_json(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _read_state(weights):
    import h5py

    try:
        with h5py.File(weights, "r") as f:
            text = f.attrs.get(STATE_ATTRIBUTE)
    except OSError:
        return None
    if text is None:
        return None
    try:
        state = json.loads(text)
    except (TypeError, ValueError):
        return None
    return state if isinstance(state, dict) else None


def _first_line(error):
    return next((line.strip() for line in str(error).splitlines() if line.strip()), "")


def _as_json(value):
    """``value`` as it reads back from JSON (tuples become lists), to compare with a record."""
    return json.loads(json.dumps(value))


class AtomicBackupAndRestore(keras.callbacks.Callback):
    """``keras.callbacks.BackupAndRestore`` whose backups survive a kill at any moment.

    After every epoch the model's weights, optimizer state included, are written to a temporary
    file in ``backup_dir``, flushed to disk and renamed to ``epoch-NNNNNN.weights.h5``
    (NNNNNN: epochs finished); then all but the newest ``keep`` backups are deleted. The file
    also holds the training state (its root attribute ``kzoo_training_state``, JSON): the
    epoch, ``config``, the metric ``history`` so far and the training ``seconds``. One
    ``rename`` commits the weights and the state together, so a run killed at any instant
    leaves a complete backup of its last finished epoch (keras' own callback writes its weights
    and its metadata file in place, so a kill while it writes can leave a damaged pair).

    When training begins, the newest backup is loaded and ``fit`` continues from the epoch
    after it (``initial_epoch``); leftover temporaries of killed runs are deleted. A backup
    whose recorded ``config`` differs from this one's is refused with a ``ValueError`` naming
    each difference, and one that does not fit the model (another architecture, no record) with
    a one-line ``ValueError`` instead of keras's list of every variable. When ``fit`` ends
    without an exception the backup directory is deleted (``delete_checkpoint``), as keras
    does.

    Backups written by earlier kzoo versions are read too: keras' layout (``latest.weights.h5``
    with ``training_metadata.json``, DETR runs) and ``epoch-NNNN/`` folders holding
    ``training.weights.h5`` and ``state.json`` (ConvLSTM runs); the first new backup replaces
    them.

    Args:
        backup_dir: Directory of the backups (created when needed).
        config: A JSON-able dict describing the run (arguments, architecture); a backup made
            with another one is not resumed. None: no check.
        keep: How many of the newest backups to keep (1).
        delete_checkpoint: Delete ``backup_dir`` when training ends normally.
        restore_on_train_begin: Restore the newest backup when ``fit`` begins. False for a
            caller that restores at a moment of its own choosing (:meth:`restore`), such as a
            training in stages, each ``fit`` with a newly compiled optimizer.
        option_names: ``{config key: name}`` used for the keys in the refusal message (a
            command's ``--flags``); default the keys themselves.

    Attributes:
        initial_epoch: The epoch ``fit`` resumes at (0 without a backup).
        history: ``{metric: [value per epoch]}`` of every finished epoch, resumed runs included;
            :attr:`tags` are recorded beside the metrics.
        seconds: Training time of every finished epoch, resumed runs included.
        tags: ``{name: JSON value}`` recorded in :attr:`history` with every epoch (say, the
            loss of the current stage).

    Example:

    ```python
    model.fit(data, epochs=10, callbacks=[AtomicBackupAndRestore("run/backup")])
    # killed, then the same call again: continues after the last finished epoch
    ```
    """

    def __init__(
        self,
        backup_dir,
        config=None,
        keep=1,
        delete_checkpoint=True,
        restore_on_train_begin=True,
        option_names=None,
    ):
        super().__init__()
        if not isinstance(backup_dir, str | os.PathLike) or not os.fspath(backup_dir):
            raise ValueError(f"backup_dir must be a directory path; got {backup_dir!r}.")
        for name, value in (
            ("delete_checkpoint", delete_checkpoint),
            ("restore_on_train_begin", restore_on_train_begin),
        ):
            if not isinstance(value, bool):
                raise ValueError(f"{name} must be True or False; got {value!r}.")
        if isinstance(keep, bool) or not isinstance(keep, int) or keep < 1:
            raise ValueError(f"keep must be an int >= 1; got {keep!r}.")
        if config is not None:
            if not isinstance(config, dict):
                raise ValueError(f"config must be a dict or None; got {type(config).__name__}.")
            try:
                config = _as_json(config)
            except (TypeError, ValueError) as e:
                raise ValueError(f"config must be JSON-serialisable: {e}") from None
        self.backup_dir = os.path.abspath(os.fspath(backup_dir))
        self.config = config
        self.keep = keep
        self.delete_checkpoint = delete_checkpoint
        self.restore_on_train_begin = restore_on_train_begin
        self.option_names = dict(option_names or {})
        self.initial_epoch = 0
        self.history = {}
        self.seconds = 0.0
        self.tags = {}
        self._started = None

    # ------------------------------------------------------------------ the files

    def backups(self):
        """The complete backups (:class:`Backup`), newest first; states are read lazily."""
        try:
            names = os.listdir(self.backup_dir)
        except FileNotFoundError:
            return []
        found = []
        for name in names:
            path = os.path.join(self.backup_dir, name)
            if match := _EPOCH_FILE.match(name):
                found.append(Backup(int(match.group(1)), path, None, path))
            elif (match := _EPOCH_DIR.match(name)) and os.path.isfile(
                os.path.join(path, _DIR_STATE)
            ):
                # The state is what counts (its configuration is checked before any loading).
                weights = os.path.join(path, _DIR_WEIGHTS)
                found.append(Backup(int(match.group(1)), weights, None, path))
        legacy = self._keras_backup()
        if legacy is not None:
            found.append(legacy)
        return sorted(found, key=lambda b: b.epoch, reverse=True)

    def _keras_backup(self):
        weights = os.path.join(self.backup_dir, _KERAS_WEIGHTS)
        metadata = os.path.join(self.backup_dir, _KERAS_METADATA)
        if not (os.path.isfile(weights) and os.path.isfile(metadata)):
            return None
        record = _read_json(metadata)
        epoch = record.get("epoch") if isinstance(record, dict) else None
        if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
            return None
        return Backup(epoch, weights, None, weights)

    def _with_state(self, backup):
        if backup.weights == backup.path:  # a file: this class's layout (or keras', no state)
            state = _read_state(backup.weights)
        else:
            state = _read_json(os.path.join(backup.path, _DIR_STATE))
        return dataclasses.replace(backup, state=state if isinstance(state, dict) else None)

    def _remove(self, backup):
        if os.path.isdir(backup.path):
            shutil.rmtree(backup.path, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                os.remove(backup.path)
        if backup.path.endswith(_KERAS_WEIGHTS):
            with contextlib.suppress(FileNotFoundError):
                os.remove(os.path.join(self.backup_dir, _KERAS_METADATA))

    def clear(self):
        """Delete every backup (the whole ``backup_dir``)."""
        shutil.rmtree(self.backup_dir, ignore_errors=True)

    # ------------------------------------------------------------------ checking and restoring

    def check_config(self, recorded):
        """Raise a ``ValueError`` naming each difference between ``recorded`` and ``config``."""
        if self.config is None or not isinstance(recorded, dict):
            return
        changed = [
            f"{self.option_names.get(key, key)} {recorded.get(key)} (now {self.config.get(key)})"
            for key in sorted(set(recorded) | set(self.config), key=self._key_order)
            if recorded.get(key) != self.config.get(key)
        ]
        if changed:
            raise ValueError(
                f"{self.backup_dir} holds a backup of an interrupted run with "
                f"{', '.join(changed)}; it cannot resume with different settings. Pass --fresh "
                "(fresh=True) to start over, or rerun with the interrupted run's arguments."
            )

    def _key_order(self, key):
        keys = list(self.config or {})
        return (keys.index(key) if key in keys else len(keys), key)

    def latest(self):
        """The newest complete :class:`Backup` with its state, or None; checks its config.

        Cheap (no model needed): call it before building anything to refuse a mismatched
        backup early. Deletes temporaries that killed runs left.
        """
        remove_orphaned_temporaries(self.backup_dir)
        backups = self.backups()
        if not backups:
            return None
        backup = self._with_state(backups[0])
        if backup.state is not None:
            self.check_config(backup.state.get("config"))
        return backup

    def restore(self, model=None):
        """Load the newest backup into ``model`` (default: the model being trained).

        Builds the optimizer first, so that its saved variables load too; restores
        :attr:`history` and :attr:`seconds`. Returns the epochs the backup finished (0, and
        nothing loaded, without one).
        """
        model = self.model if model is None else model
        backup = self.latest()
        self.initial_epoch = 0
        if backup is None:
            return 0
        if not model.built:
            raise ValueError("AtomicBackupAndRestore needs a built model to restore into.")
        if model.optimizer is not None and not model.optimizer.built:
            # Optimizer variables must exist for their saved values to load.
            model.optimizer.build(model.trainable_variables)
        try:
            model.load_weights(backup.weights)
        except ValueError as e:
            if "could not be loaded" not in str(e):
                raise
            # keras's list of every object that failed to load: say what it means instead.
            raise ValueError(
                f"The backup in {self.backup_dir} was written by a run with a different "
                "architecture than these arguments build, so it cannot be resumed. Pass --fresh "
                f"to start over, or rerun with the interrupted run's arguments. ({_first_line(e)})"
            ) from None
        state = backup.state or {}
        history = state.get("history")
        self.history = (
            {k: list(v) for k, v in history.items() if isinstance(v, list)}
            if isinstance(history, dict)
            else {}
        )
        seconds = state.get("seconds", 0.0)
        self.seconds = float(seconds) if isinstance(seconds, int | float) else 0.0
        self.initial_epoch = backup.epoch
        return backup.epoch

    # ------------------------------------------------------------------ callback hooks

    def on_train_begin(self, logs=None):
        self._started = time.time()
        if not self.restore_on_train_begin:
            return
        if not self.model.built:
            raise ValueError("AtomicBackupAndRestore needs a built model before fit().")
        epoch = self.restore()
        if epoch:
            # What keras' own BackupAndRestore sets: fit() starts at this epoch.
            self.model._initial_epoch = epoch

    def on_epoch_end(self, epoch, logs=None):
        finished = epoch + 1
        for key, value in (logs or {}).items():
            try:
                value = float(np.asarray(value))
            except (TypeError, ValueError):
                continue
            self.history.setdefault(key, []).append(value)
        for key, value in self.tags.items():
            self.history.setdefault(key, []).append(value)
        now = time.time()
        self.seconds += now - (self._started or now)
        self._started = now
        state = {
            "epoch": finished,
            "config": self.config,
            "history": self.history,
            "seconds": self.seconds,
        }
        path = os.path.join(self.backup_dir, f"epoch-{finished:06d}.weights.h5")
        save_weights_atomically(self.model, path, {STATE_ATTRIBUTE: json.dumps(state)})
        for old in self.backups()[self.keep :]:
            if old.path != path:
                self._remove(old)

    def on_train_end(self, logs=None):
        # A later fit() of the same model starts where it is told to, not at this resume point.
        self.model._initial_epoch = None
        if self.delete_checkpoint and os.path.isdir(self.backup_dir):
            self.clear()
