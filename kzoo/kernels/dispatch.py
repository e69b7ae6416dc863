"""A small dispatch table sending an op to the best implementation for this call.

Each op (``"layer_norm"``, ...) has implementations registered with the backend and device
platforms they run on, the dtypes they accept and an optional shape check. ``select`` returns the
first registered implementation (highest priority first) whose conditions hold, and otherwise
the op's portable fallback. Implementations are named by a dotted path and imported only when
first used, so that triton or Pallas are never imported by ``import kzoo``.

``KZOO_KERNELS=off`` forces the portable fallback everywhere.
"""

import dataclasses
import importlib
import os
from collections.abc import Callable


@dataclasses.dataclass(frozen=True)
class Implementation:
    """One way to compute an op.

    Args:
        name: Short name shown by ``kzoo info`` (e.g. ``"triton"``).
        target: ``"module:function"`` path of the callable, imported lazily.
        backends: Keras backends it runs on; ``None`` for all.
        platforms: Device platforms (``"cpu"``, ``"gpu"``, ``"tpu"``); ``None`` for all.
        dtypes: Accepted input dtype names; ``None`` for all.
        supports: Optional ``f(shape, dtype, **kwargs) -> bool`` for other limits.
        priority: Higher is tried first.
        description: One line for ``kzoo info``.
    """

    name: str
    target: str
    backends: tuple | None = None
    platforms: tuple | None = None
    dtypes: tuple | None = None
    supports: Callable | None = None
    priority: int = 0
    description: str = ""

    def accepts(self, backend, platform, dtype=None, shape=None, **kwargs):
        if self.backends is not None and backend not in self.backends:
            return False
        if self.platforms is not None and platform not in self.platforms:
            return False
        if dtype is not None and self.dtypes is not None and str(dtype) not in self.dtypes:
            return False
        if self.supports is not None and shape is not None:
            return bool(self.supports(shape, dtype, **kwargs))
        return True

    def load(self):
        module, _, attr = self.target.partition(":")
        return getattr(importlib.import_module(module), attr)


_REGISTRY: dict[str, list[Implementation]] = {}
_FALLBACKS: dict[str, Implementation] = {}


def register(op, implementation, fallback=False):
    """Register ``implementation`` for ``op``; ``fallback=True`` makes it the portable default."""
    if fallback:
        _FALLBACKS[op] = implementation
        return implementation
    impls = _REGISTRY.setdefault(op, [])
    impls[:] = [i for i in impls if i.name != implementation.name]
    impls.append(implementation)
    impls.sort(key=lambda i: -i.priority)
    return implementation


def kernels_enabled():
    return os.environ.get("KZOO_KERNELS", "on").strip().lower() not in ("off", "0", "false", "no")


def ops():
    """Names of the ops that have a dispatch entry."""
    return sorted(set(_REGISTRY) | set(_FALLBACKS))


def candidates(op):
    if op not in _FALLBACKS and op not in _REGISTRY:
        raise ValueError(f"Unknown kzoo op {op!r}; known ops: {', '.join(ops()) or 'none'}.")
    return list(_REGISTRY.get(op, [])) + ([_FALLBACKS[op]] if op in _FALLBACKS else [])


def select(op, backend=None, platform=None, dtype=None, shape=None, **kwargs):
    """The implementation ``op`` gets for these conditions (the fallback when none fits)."""
    from kzoo import backend as kb

    backend = backend or kb.backend_name()
    platform = platform or kb.platform()
    if kernels_enabled():
        for impl in _REGISTRY.get(op, []):
            if impl.accepts(backend, platform, dtype=dtype, shape=shape, **kwargs):
                return impl
    if op not in _FALLBACKS:
        raise ValueError(f"kzoo op {op!r} has no implementation for backend {backend!r}.")
    return _FALLBACKS[op]


def describe(backend=None, platform=None):
    """``{op: (implementation name, description)}`` for this machine, as ``kzoo info`` shows."""
    table = {}
    for op in ops():
        impl = select(op, backend=backend, platform=platform)
        table[op] = (impl.name, impl.description)
    return table
