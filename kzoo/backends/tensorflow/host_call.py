"""``host_call`` on TensorFlow: direct call when eager, ``tf.numpy_function`` in graphs."""

import numpy as np
import tensorflow as tf


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
