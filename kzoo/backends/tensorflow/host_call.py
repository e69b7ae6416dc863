"""``host_call`` on TensorFlow: direct call when eager, ``tf.numpy_function`` in graphs."""

import numpy as np
import tensorflow as tf


def can_call_host():
    """False inside a function XLA compiles (``jit_compile=True``): it has no host callbacks."""
    if tf.executing_eagerly():
        return True
    from tensorflow.python.framework import ops as tf_ops
    from tensorflow.python.ops import control_flow_util

    return not control_flow_util.GraphOrParentsInXlaContext(tf_ops.get_default_graph())


def host_call(fn, args, out_shapes, out_dtypes):
    args = [tf.convert_to_tensor(a) for a in args]
    if tf.executing_eagerly():
        outs = fn(*[a.numpy() for a in args])
        return tuple(tf.constant(np.asarray(o, dtype=d)) for o, d in zip(outs, out_dtypes))

    def wrapped(*arrays):
        outs = fn(*arrays)
        return tuple(np.asarray(o, dtype=d) for o, d in zip(outs, out_dtypes))

    outs = tf.numpy_function(wrapped, args, [tf.as_dtype(d) for d in out_dtypes], stateful=False)
    for o, s in zip(outs, out_shapes):
        o.set_shape(s)
    return tuple(outs)
