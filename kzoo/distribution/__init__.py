"""kzoo.distribution."""

from kzoo.distribution.context_parallel import ContextParallel, zigzag_permutation
from kzoo.distribution.packing import balance_documents, check_packed_layout, pack_documents

__all__ = [
    "ContextParallel",
    "balance_documents",
    "check_packed_layout",
    "pack_documents",
    "zigzag_permutation",
]
