"""The one table that sends an op to the implementation that fits this call.

Each op (``"layer_norm"``, ``"conv_lstm_forward"``, ...) has a portable fallback, registered by
the module that defines the op, and backend-specific implementations, registered by the
backend packages ``kzoo.backends.{jax,tensorflow,torch}`` with the backend, device platforms,
dtypes and shapes they accept. ``select`` returns the first registered implementation (highest
priority first) whose conditions hold, else the fallback. Implementations are named by a dotted
path and imported only when first selected, so that ``import kzoo`` imports no framework and
triton or Pallas are imported only where they run.

``KZOO_KERNELS=off`` turns the optional implementations off (fast paths and GPU kernels), so
that every op runs its portable fallback; implementations a backend cannot do without
(``optional=False``: the host callback, the context-parallel ring) stay on.

Selections are cached per set of conditions: ops call ``select`` on every forward pass, and a
layer must cost no more than keras's own (see ``docs/normalization.md``).
"""

import dataclasses
import functools
import importlib
import os
from collections.abc import Callable


@dataclasses.dataclass(frozen=True)
class Implementation:
    """One way to compute an op.

    Args:
        name: Short name shown by ``kzoo info`` (e.g. ``"triton"``).
        target: ``"module:function"`` path of the callable, imported on first use.
        backends: Keras backends it runs on; ``None`` for all.
        platforms: Device platforms (``"cpu"``, ``"gpu"``, ``"tpu"``); ``None`` for all.
        dtypes: Accepted input dtype names; ``None`` for all.
        supports: Optional ``f(shape, dtype, **kwargs) -> bool`` for other limits, or its
            ``"module:function"`` path (imported on first use).
        priority: Higher is tried first.
        description: One line for ``kzoo info``.
        optional: ``False`` for implementations the backend needs to compute the op at all
            (``KZOO_KERNELS=off`` leaves those on).
    """

    name: str
    target: str
    backends: tuple | None = None
    platforms: tuple | None = None
    dtypes: tuple | None = None
    supports: Callable | str | None = None
    priority: int = 0
    description: str = ""
    optional: bool = True

    def accepts(self, backend, platform, dtype=None, shape=None, **kwargs):
        if self.backends is not None and backend not in self.backends:
            return False
        if self.platforms is not None and platform() not in self.platforms:
            return False
        if dtype is not None and self.dtypes is not None and str(dtype) not in self.dtypes:
            return False
        if self.supports is not None and shape is not None:
            return bool(_resolve(self.supports)(shape, dtype, **kwargs))
        return True

    def load(self):
        """The callable this implementation names (imported once)."""
        return _resolve(self.target)


@functools.cache
def _import_target(target):
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)


def _resolve(target):
    return _import_target(target) if isinstance(target, str) else target


_REGISTRY: dict[str, list[Implementation]] = {}
_FALLBACKS: dict[str, Implementation] = {}
_SELECTED: dict[tuple, Implementation] = {}
# Callers' own caches of selections (see ``new_cache``), emptied with ``_SELECTED``.
_CACHES: list[dict] = [_SELECTED]


def new_cache():
    """A dict for a caller's own per-call-site cache of selections, emptied on every register.

    An op that looks up ``(implementation, validated arguments)`` by the shapes and dtypes of
    its inputs keeps them here, so that a later registration is never shadowed by a stale entry.
    """
    cache = {}
    _CACHES.append(cache)
    return cache


def register(op, implementation, fallback=False):
    """Register ``implementation`` for ``op``; ``fallback=True`` makes it the portable default."""
    if not isinstance(implementation, Implementation):
        raise ValueError(
            f"register() takes a kzoo.backends.Implementation; got {type(implementation).__name__}."
        )
    for cache in _CACHES:
        cache.clear()
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
    """Every implementation of ``op``, in the order ``select`` tries them (fallback last)."""
    if op not in _FALLBACKS and op not in _REGISTRY:
        raise ValueError(f"Unknown kzoo op {op!r}; known ops: {', '.join(ops()) or 'none'}.")
    return list(_REGISTRY.get(op, [])) + ([_FALLBACKS[op]] if op in _FALLBACKS else [])


def _select_uncached(op, backend, platform, enabled, dtype, shape, kwargs):
    for impl in _REGISTRY.get(op, []):
        if (enabled or not impl.optional) and impl.accepts(
            backend, platform, dtype=dtype, shape=shape, **kwargs
        ):
            return impl
    if op not in _FALLBACKS:
        if op not in _REGISTRY:
            candidates(op)  # raises the unknown-op error
        return None
    return _FALLBACKS[op]


def find(op, backend=None, platform=None, dtype=None, shape=None, **kwargs):
    """The implementation ``op`` gets for these conditions, or ``None`` when no entry fits.

    ``backend`` defaults to keras's, ``platform`` to the device platform keras computes on
    (looked up only when an entry names platforms).
    """
    backend = backend or _backend_name()
    enabled = kernels_enabled()
    try:
        key = (op, backend, platform, enabled, dtype, shape, tuple(sorted(kwargs.items())))
        hash(key)
    except TypeError:
        key = None
    if key is not None and key in _SELECTED:
        return _SELECTED[key]
    if platform is None:

        def platform_of():
            return current_platform(backend)

    else:

        def platform_of():
            return platform

    impl = _select_uncached(op, backend, platform_of, enabled, dtype, shape, kwargs)
    if key is not None:
        _SELECTED[key] = impl
    return impl


def _backend_name():
    import keras

    return keras.backend.backend()


@functools.cache
def current_platform(backend):
    """The platform ``backend`` computes on here (``"cpu"``, ``"gpu"``, ``"tpu"``), asked once of
    the backend's ``device_platform`` implementation: the devices a process sees do not change
    while it runs."""
    return select("device_platform", backend=backend, platform="any").load()()


def select(op, backend=None, platform=None, dtype=None, shape=None, **kwargs):
    """The implementation ``op`` gets for these conditions (the fallback when none fits)."""
    impl = find(op, backend=backend, platform=platform, dtype=dtype, shape=shape, **kwargs)
    if impl is None:
        backend = backend or _backend_name()
        raise ValueError(f"kzoo op {op!r} has no implementation for backend {backend!r}.")
    return impl


def describe(backend=None, platform=None):
    """``{op: (implementation name, description)}`` for this machine, as ``kzoo info`` shows."""
    table = {}
    for op in ops():
        impl = find(op, backend=backend, platform=platform)
        table[op] = (impl.name, impl.description) if impl else ("-", "no implementation")
    return table
