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
holds the original ``ValueError: ...`` text. Code that runs compiled steps (``fit``,
``predict``...) inside :func:`original_host_errors` (or a model using :class:`HostErrorsMixin`)
gets the function's own exception back instead.

:func:`host_check` runs a check that raises on bad input; inside code compiled for a device
that cannot call the host (TensorFlow under XLA) the check is skipped, so compiled models keep
working there.
"""

import contextlib
import threading

import keras
import numpy as np

from kzoo.backends import dispatch

OP = "host_call"
CAN_CALL_OP = "host_callable"


def host_call_eager(fn, args, out_shapes, out_dtypes):
    """The fallback: inputs converted to numpy, outputs back to tensors (eager backends)."""
    outs = fn(*[np.asarray(keras.ops.convert_to_numpy(a)) for a in args])
    return tuple(
        keras.ops.convert_to_tensor(np.asarray(o, dtype=d)) for o, d in zip(outs, out_dtypes)
    )


def always_callable():
    return True


dispatch.register(
    OP,
    dispatch.Implementation(
        name="eager",
        target="kzoo.ops.host_call:host_call_eager",
        description="numpy in, tensors out (eager backends only)",
    ),
    fallback=True,
)
dispatch.register(
    CAN_CALL_OP,
    dispatch.Implementation(
        name="always",
        target="kzoo.ops.host_call:always_callable",
        description="the host can always be called",
    ),
    fallback=True,
)


# Exceptions raised by host functions, kept until original_host_errors() hands them back. The
# frameworks run callbacks on their own threads, hence a lock rather than thread-local state.
_raised = []
_raised_lock = threading.Lock()


def _recording(fn):
    def wrapped(*arrays):
        try:
            return fn(*arrays)
        except Exception as e:
            with _raised_lock:
                del _raised[:-7]  # a few are enough; keep memory bounded
                _raised.append(e)
            raise

    return wrapped


@contextlib.contextmanager
def original_host_errors():
    """Re-raise an exception a host function raised inside compiled code as itself.

    Under ``jax.jit`` or ``tf.function`` a ``ValueError`` raised on the host reaches Python as
    the framework's runtime error wrapping a traceback. Inside this context, when a compiled
    call fails and a host function raised just before, that exception is raised instead.
    """
    with _raised_lock:
        _raised.clear()
    try:
        yield
    except Exception as e:
        with _raised_lock:
            original = _raised[-1] if _raised else None
            _raised.clear()
        if original is not None and original is not e and str(original) in str(e):
            raise original.with_traceback(None) from None
        raise


class HostErrorsMixin:
    """Model mixin: ``fit``, ``evaluate``, ``predict`` and the ``*_on_batch`` methods raise the
    exception a host function (:func:`host_call`, :func:`host_check`) raised, not the
    framework's wrapper around it, and leave the model usable after an exception.

    keras's JAX trainer detaches the variables' values while it loops (they travel as the
    compiled step's state) and reattaches them only when the loop ends; an exception in between
    (a bad batch, an interrupt) would leave every variable without a value. The values are
    reattached here: the state after the last finished step, else the values from before the
    call. (A step that failed after the device took its state cannot give it back; then the
    variables stay detached and the model must be reloaded.)

    Example:

    ```python
    class MyModel(HostErrorsMixin, keras.Model):
        ...
    ```
    """

    def _guarded(self, method, *args, **kwargs):
        snapshot = [(v, v._value) for v in _state_variables(self)]
        try:
            with original_host_errors():
                return method(*args, **kwargs)
        except BaseException:
            _reattach(self, snapshot)
            raise

    def fit(self, *args, **kwargs):
        return self._guarded(super().fit, *args, **kwargs)

    def evaluate(self, *args, **kwargs):
        return self._guarded(super().evaluate, *args, **kwargs)

    def predict(self, *args, **kwargs):
        return self._guarded(super().predict, *args, **kwargs)

    def train_on_batch(self, *args, **kwargs):
        return self._guarded(super().train_on_batch, *args, **kwargs)

    def test_on_batch(self, *args, **kwargs):
        return self._guarded(super().test_on_batch, *args, **kwargs)

    def predict_on_batch(self, *args, **kwargs):
        return self._guarded(super().predict_on_batch, *args, **kwargs)


def _state_variables(model):
    found, seen = [], set()
    groups = [model.variables, getattr(model, "metrics_variables", [])]
    optimizer = getattr(model, "optimizer", None)
    if optimizer is not None and getattr(optimizer, "built", False):
        groups.append(optimizer.variables)
    for group in groups:
        for v in group:
            if id(v) not in seen:
                seen.add(id(v))
                found.append(v)
    return found


def _usable(value):
    deleted = getattr(value, "is_deleted", None)
    return value is not None and not (callable(deleted) and deleted())


def _reattach(model, snapshot):
    # Only keras's JAX trainer has a detached state to give back (duck-typed, not by backend).
    sync = getattr(model, "jax_state_sync", None)
    if sync is not None and getattr(model, "_jax_state", None):
        try:
            sync()
        except Exception:
            pass  # its arrays went to the failed step; the snapshot below is the fallback
    for variable, value in snapshot:
        if not _usable(variable._value) and _usable(value):
            variable._value = value


_checks_off = threading.local()


@contextlib.contextmanager
def without_host_checks():
    """Trace graphs without :func:`host_check` calls (exported artifacts run without Python)."""
    previous = getattr(_checks_off, "on", False)
    _checks_off.on = True
    try:
        yield
    finally:
        _checks_off.on = previous


def host_check(fn, args):
    """Run ``fn(*numpy_args)``, which raises on bad input, on the host; return a scalar token.

    The token is a float32 ``1.0``; multiply something the computation needs by it, or
    compilers that see an unused result (``jax.jit``) drop the check. Where compiled code cannot
    call the host (TensorFlow under XLA, graphs traced inside :func:`without_host_checks` for
    export) the check is skipped and the token is a constant.

    ``args`` may be a function returning the list; it is then called only when the check runs,
    so skipped checks leave no trace of their inputs in the graph (jax2onnx cannot convert some
    shape arithmetic a summary needs).
    """
    if (
        getattr(_checks_off, "on", False)
        or not dispatch.select(CAN_CALL_OP, platform="any").load()()
    ):
        return keras.ops.ones((), dtype="float32")
    if callable(args):
        args = args()

    def check(*arrays):
        fn(*arrays)
        return (np.ones((), np.float32),)

    (token,) = host_call(check, args, [()], ["float32"])
    return token


def host_call(fn, args, out_shapes, out_dtypes):
    """Call ``fn(*numpy_args) -> tuple of numpy arrays`` on the host; return backend tensors.

    Args:
        fn: A numpy function returning a tuple of arrays.
        args: Tensors (or arrays) passed to ``fn`` as numpy arrays.
        out_shapes: The shape of each output; ``None`` entries are allowed where the backend
            traces with unknown dimensions (TensorFlow).
        out_dtypes: The dtype name of each output (``"int32"``, ``"float32"``).
    """
    impl = dispatch.select(OP, platform="any").load()
    return impl(_recording(fn), args, out_shapes, out_dtypes)
