"""Deprecated: ``kzoo.models.detr.train_callbacks`` is now ``kzoo.training.callbacks``.

Kept for one release: it gathers the public names it held; ``kzoo._deprecated`` warns once when
it is imported by its old path.
"""

from kzoo.training.callbacks import (
    TEMPORARY,
    AtomicBackupAndRestore,
    AtomicCheckpoint,
    TimeLimit,
    remove_orphaned_temporaries,
    save_weights_atomically,
)

__all__ = [
    "AtomicBackupAndRestore",
    "AtomicCheckpoint",
    "TEMPORARY",
    "TimeLimit",
    "remove_orphaned_temporaries",
    "save_weights_atomically",
]
