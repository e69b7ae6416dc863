"""scripts/profile/xplane_ops.py: self times of nested trace events, and a real trace on this
backend."""

import keras
import numpy as np
import pytest

from tests.scripts.support import load

xplane_ops = load("profile/xplane_ops.py")


def test_self_time_takes_out_nested_events_once():
    # outer [0, 100) holds a [10, 40) (which holds b [15, 25)) and c [50, 70); d [100, 130)
    # starts where outer ends and is not its child.
    events = [("outer", 0, 100), ("a", 10, 30), ("b", 15, 10), ("c", 50, 20), ("d", 100, 30)]
    got = dict(xplane_ops._events_self_time(events))
    assert got == {"outer": 50, "a": 20, "b": 10, "c": 20, "d": 30}
    assert sum(got.values()) == 130  # every instant counted once


@pytest.mark.backends("tensorflow", "jax")  # torch traces with torch.profiler, not XSpace
def test_a_real_trace_names_the_ops_that_ran():
    backend = keras.backend.backend()
    a = np.random.default_rng(0).random((256, 256)).astype("float32")
    if backend == "jax":
        import jax

        f = jax.jit(lambda x: jax.numpy.tanh(x @ x))
        f(a).block_until_ready()
        ops, wall_ms = xplane_ops.profile_steps("jax", lambda: f(a).block_until_ready(), 3)
        assert any("fusion" in op or "dot" in op for op in ops), list(ops)
    else:
        import tensorflow as tf

        f = tf.function(lambda x: tf.tanh(tf.matmul(x, x)))
        f(a)
        ops, wall_ms = xplane_ops.profile_steps("tensorflow", lambda: f(a), 3)
        assert any("MatMul" in op for op in ops) and ops["Tanh"] > 0, list(ops)
    assert sum(ops.values()) > 0 and wall_ms > 0
    assert not any("::" in op or op.startswith(("Eager", "$")) for op in ops), list(ops)


def test_op_names_from_runtime_events():
    assert xplane_ops.tensorflow_op_type("seq/lstm/Conv2D:_MklConv2D#id=4#") == "_MklConv2D"
    assert xplane_ops.tensorflow_op_type("EagerLocalExecute: _EagerConst") is None
    assert xplane_ops.tensorflow_op_type("KernelAndDeviceFunc::Run") is None
    assert xplane_ops.xla_op_kind("convolution.21") == "convolution"
    assert xplane_ops.xla_op_kind("loop_multiply_fusion.3") == "loop_multiply_fusion"
    assert xplane_ops.xla_op_kind("ThunkExecutor::Execute (wait for completion)") is None
    assert xplane_ops.xla_op_kind("$profiler.py:271 stop_trace") is None
