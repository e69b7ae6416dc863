"""Deprecated: ``kzoo.models.detr.train_callbacks`` is now ``kzoo.training.callbacks``.

Kept for one release: it re-exports the public names it held and warns once, when first
imported.
"""

import warnings

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

warnings.warn(
    "kzoo.models.detr.train_callbacks is deprecated; import the callbacks from "
    "kzoo.training (kzoo.training.callbacks).",
    DeprecationWarning,
    stacklevel=2,
)
