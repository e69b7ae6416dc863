"""kzoo.distribution."""

from kzoo.distribution.context_parallel import ContextParallel, zigzag_permutation
from kzoo.distribution.packing import balance_documents, check_packed_layout, pack_documents
from kzoo.distribution.runtime import initialize, list_devices
from kzoo.distribution.training import DistributedTrainer

__all__ = [
    "ContextParallel",
    "DistributedTrainer",
    "balance_documents",
    "check_packed_layout",
    "initialize",
    "list_devices",
    "pack_documents",
    "zigzag_permutation",
]
