"""Run a numpy function on the host from inside any backend's compiled code.

Some steps of a model have no good tensor formulation (an exact assignment solver, checks that
must raise a clear error). :func:`host_call` runs such a numpy function eagerly when its inputs
are concrete, and through the backend's host-callback mechanism when they are traced:

- JAX: ``jax.pure_callback`` (:mod:`kzoo.ops.host_call_jax`),
- TensorFlow: ``tf.numpy_function`` (:mod:`kzoo.ops.host_call_tensorflow`),
- torch: keras runs torch eagerly, so the tensors are copied to numpy and back
  (:mod:`kzoo.ops.host_call_torch`).

The function's outputs carry no gradient; callers pass inputs through ``ops.stop_gradient``.
An exception the function raises reaches the caller unchanged when it ran eagerly; under
``jax.jit`` / ``tf.function`` the framework re-raises it as its own runtime error whose message
holds the original ``ValueError: ...`` text.
"""

import importlib
import sys

import keras
import numpy as np

_BACKEND_MODULES = {
    "jax": "kzoo.ops.host_call_jax",
    "tensorflow": "kzoo.ops.host_call_tensorflow",
    "torch": "kzoo.ops.host_call_torch",
}


def host_call(fn, args, out_shapes, out_dtypes):
    """Call ``fn(*numpy_args) -> tuple of numpy arrays`` on the host; return backend tensors.

    Args:
        fn: A numpy function returning a tuple of arrays.
        args: Tensors (or arrays) passed to ``fn`` as numpy arrays.
        out_shapes: The shape of each output; ``None`` entries are allowed where the backend
            traces with unknown dimensions (TensorFlow).
        out_dtypes: The dtype name of each output (``"int32"``, ``"float32"``).
    """
    name = _BACKEND_MODULES.get(keras.backend.backend())
    if name is None:
        outs = fn(*[np.asarray(keras.ops.convert_to_numpy(a)) for a in args])
        return tuple(
            keras.ops.convert_to_tensor(np.asarray(o, dtype=d)) for o, d in zip(outs, out_dtypes)
        )
    # sys.modules first: autograph would otherwise try (and warn) to convert import_module.
    module = sys.modules.get(name) or importlib.import_module(name)
    return module.host_call(fn, args, out_shapes, out_dtypes)
