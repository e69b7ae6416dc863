"""Running a context-parallel program over a mesh: the shape checks, ``shard_map``, and the
cache that makes eager calls compile once.

Outside a traced function (a layer called in a notebook) jax runs a ``shard_map`` by tracing
it afresh and dispatching its operations one by one on every call; ``run`` jits the program
instead and keeps it per configuration (``eager_cache_info``). Inside a traced function
(keras's ``fit``/``predict`` steps, ``jax.jit``, ``jax.grad``) the attention is traced into
the caller's program.
"""

import collections
import functools
import threading

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from kzoo.backends.common.ring_schedule import validate_ring_shapes
from kzoo.backends.jax.attention_blocks import _key_ids


def check_shapes(query, key, value, key_mask, mesh, sequence_axis, batch_axis, causal):
    """The ``ValueError`` checks, from shapes only: run before any tracing or device work."""
    num_shards = mesh.shape[sequence_axis]
    batch_shards = mesh.shape[batch_axis] if batch_axis is not None else 1
    validate_ring_shapes(query, key, value, key_mask, causal, num_shards, batch_shards)
    return num_shards


def prepare(query, key, value, key_mask, segment_ids, mesh, sequence_axis, batch_axis, causal):
    num_shards = check_shapes(query, key, value, key_mask, mesh, sequence_axis, batch_axis, causal)
    b, tq, h, d = query.shape
    tk, hk = key.shape[1], key.shape[2]
    q_ids, k_ids = _key_ids(segment_ids, key_mask, b, tq, tk)
    q = jnp.reshape(query, (b, tq, hk, h // hk, d))
    return num_shards, q, q_ids, k_ids


def over_mesh(fn, mesh, sequence_axis, batch_axis):
    spec5 = P(batch_axis, sequence_axis, None, None, None)
    spec4 = P(batch_axis, sequence_axis, None, None)
    spec2 = P(batch_axis, sequence_axis)
    return jax.shard_map(
        fn,
        mesh=mesh,
        in_specs=(spec5, spec4, spec4, spec2, spec2),
        out_specs=spec5,
        check_vma=False,
    )


# ---------------------------------------------------------------------------------------------
# Eager calls. Outside a traced function, jax runs a shard_map by tracing it afresh and
# dispatching its operations one by one on every call (measured: 35 s a call for 32 tokens on
# 8 CPU devices). An eager call therefore goes through a jitted program, kept here per
# configuration: everything that changes the traced program is in the key (the program, the
# mesh - its devices and axis names -, axes, masks and schedule options, and every input's
# shape and dtype), so a changed mesh or option never reuses an entry. The cache is bounded
# (least recently used first out): it holds meshes and compiled executables. Calls inside a
# traced function (keras's jitted ``fit``/``predict`` steps, ``jax.jit``, ``jax.grad``) trace the
# program into that function as before.

EAGER_CACHE_SIZE = 32
_EAGER = collections.OrderedDict()
_EAGER_STATS = {"hits": 0, "misses": 0}
_EAGER_LOCK = threading.Lock()


def _signature(x):
    if x is None:
        return None
    return tuple(x.shape), str(jnp.dtype(x.dtype))


def run(program, arrays, options):
    """``program(*arrays, **options)``: traced in place under a trace, else jitted and cached."""
    if any(isinstance(x, jax.core.Tracer) for x in arrays):
        return program(*arrays, **options)
    key = (program.__name__, tuple(sorted(options.items())), tuple(map(_signature, arrays)))
    with _EAGER_LOCK:
        fn = _EAGER.get(key)
        if fn is not None:
            _EAGER.move_to_end(key)
            _EAGER_STATS["hits"] += 1
        else:
            _EAGER_STATS["misses"] += 1
            fn = _EAGER[key] = jax.jit(functools.partial(program, **options))
            while len(_EAGER) > max(EAGER_CACHE_SIZE, 1):
                _EAGER.popitem(last=False)
    return fn(*arrays)


def eager_cache_info():
    """``{"hits", "misses", "size", "maxsize"}`` of the cache of eagerly called programs."""
    with _EAGER_LOCK:
        return {**_EAGER_STATS, "size": len(_EAGER), "maxsize": EAGER_CACHE_SIZE}


def clear_eager_cache():
    """Drop every cached eager program (and the meshes and executables it holds)."""
    with _EAGER_LOCK:
        _EAGER.clear()
