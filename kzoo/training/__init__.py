"""What kzoo's model trainings share: resumable backups, checkpoints, time limits, NaN stops.

See :mod:`kzoo.training.callbacks`. A model's own training (its data, losses, engine) lives in
its folder: ``kzoo.models.detr.training``, ``kzoo.models.conv_lstm.training``.
"""

from kzoo.training.callbacks import (
    AtomicBackupAndRestore,
    AtomicCheckpoint,
    StopOnNaN,
    TimeLimit,
    TrainingDiverged,
    save_weights_atomically,
)

__all__ = [
    "AtomicBackupAndRestore",
    "AtomicCheckpoint",
    "StopOnNaN",
    "TimeLimit",
    "TrainingDiverged",
    "save_weights_atomically",
]
