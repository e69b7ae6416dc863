"""One home for backend-specific code, chosen through one dispatch.

Layout (as keras's ``keras/src/backend/<name>/`` behind ``keras/src/ops/``)::

    kzoo/backends/
        dispatch.py      the table: register(), select(), find(), describe()
        environment.py   which backend, platform and devices (checked before keras loads)
        jax/             JAX and XLA implementations (Pallas kernels, the context-parallel ring)
        tensorflow/      TensorFlow implementations
        torch/           torch implementations (Triton kernels)

Each backend package's ``__init__`` registers its implementations by dotted path only, so
importing this package imports no framework; an implementation's module is imported the first
time the dispatch selects it. An op's portable fallback is registered by the module that
defines the op (``kzoo.ops.layer_norm``, ``kzoo.layers.conv_lstm``, ...).
"""

from kzoo.backends import dispatch, environment
from kzoo.backends import jax as _jax  # noqa: F401  (registers the JAX implementations)
from kzoo.backends import tensorflow as _tensorflow  # noqa: F401
from kzoo.backends import torch as _torch  # noqa: F401
from kzoo.backends.dispatch import (
    Implementation,
    candidates,
    describe,
    find,
    kernels_enabled,
    ops,
    register,
    select,
)

__all__ = [
    "Implementation",
    "candidates",
    "describe",
    "dispatch",
    "environment",
    "find",
    "kernels_enabled",
    "ops",
    "register",
    "select",
]
