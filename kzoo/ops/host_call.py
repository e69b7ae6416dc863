"""Run a numpy function on the host from inside any backend's compiled code.

Some steps of a model have no good tensor formulation (an exact assignment solver, checks that
must raise a clear error). :func:`host_call` runs such a numpy function eagerly when its inputs
are concrete, and through the backend's host-callback mechanism when they are traced:

- JAX: ``jax.pure_callback`` (:mod:`kzoo.backends.jax.host_call`),
- TensorFlow: ``tf.numpy_function`` (:mod:`kzoo.backends.tensorflow.host_call`),
- torch: keras runs torch eagerly, so the tensors are copied to numpy and back
  (:mod:`kzoo.backends.torch.host_call`),
- any other backend: an eager call (the portable fallback below).

The function's outputs carry no gradient; callers pass inputs through ``ops.stop_gradient``.
An exception the function raises reaches the caller unchanged when it ran eagerly; under
``jax.jit`` / ``tf.function`` the framework re-raises it as its own runtime error whose message
holds the original ``ValueError: ...`` text.
"""

import keras
import numpy as np

from kzoo.backends import dispatch

OP = "host_call"


def host_call_eager(fn, args, out_shapes, out_dtypes):
    """The fallback: inputs converted to numpy, outputs back to tensors (eager backends)."""
    outs = fn(*[np.asarray(keras.ops.convert_to_numpy(a)) for a in args])
    return tuple(
        keras.ops.convert_to_tensor(np.asarray(o, dtype=d)) for o, d in zip(outs, out_dtypes)
    )


dispatch.register(
    OP,
    dispatch.Implementation(
        name="eager",
        target="kzoo.ops.host_call:host_call_eager",
        description="numpy in, tensors out (eager backends only)",
    ),
    fallback=True,
)


def host_call(fn, args, out_shapes, out_dtypes):
    """Call ``fn(*numpy_args) -> tuple of numpy arrays`` on the host; return backend tensors.

    Args:
        fn: A numpy function returning a tuple of arrays.
        args: Tensors (or arrays) passed to ``fn`` as numpy arrays.
        out_shapes: The shape of each output; ``None`` entries are allowed where the backend
            traces with unknown dimensions (TensorFlow).
        out_dtypes: The dtype name of each output (``"int32"``, ``"float32"``).
    """
    return dispatch.select(OP, platform="any").load()(fn, args, out_shapes, out_dtypes)
