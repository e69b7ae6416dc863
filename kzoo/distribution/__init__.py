"""kzoo.distribution."""

from kzoo.distribution.context_parallel import ContextParallel, zigzag_permutation

__all__ = ["ContextParallel", "zigzag_permutation"]
