"""The portable dense product: ``x @ kernel + bias`` in keras.ops, as keras's ``Dense`` computes
it (the fallback of op ``dense``, ``kzoo/ops/dense.py``)."""

from keras import ops


def dense_portable(x, kernel, bias=None):
    y = ops.matmul(x, kernel)
    return y if bias is None else ops.add(y, bias)
