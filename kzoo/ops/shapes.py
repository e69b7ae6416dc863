"""Index ranges whose length may be symbolic (a shape-polymorphic export's dimension).

``keras.ops.arange(n)`` is what a layer wants, but two exporters trip over it when ``n`` is a
JAX symbolic dimension: jax2onnx converts it to a range of unknown length that no longer matches
the input's axis (shapes then fail to broadcast), and a numpy ``arange`` would freeze the traced
size into the graph. A cumulative sum of ones of that length gives the same integers with the
input's symbolic size. Concrete sizes (and TensorFlow's size tensors) keep ``arange``.
"""

import keras
import numpy as np
from keras import ops


def arange(n, dtype="int32"):
    """``[0, 1, ..., n - 1]`` as ``dtype``, for an int, a size tensor or a symbolic size."""
    if isinstance(n, int):
        # A constant: jax2onnx's arange also fails for concrete sizes (keras passes
        # ``stop=None`` explicitly).
        return ops.convert_to_tensor(np.arange(n), dtype=dtype)
    if keras.ops.is_tensor(n):
        return ops.arange(n, dtype=dtype)
    return ops.cumsum(ops.ones((n,), dtype=dtype)) - 1


def positions_along(x, axis):
    """``arange(x.shape[axis])`` as int32 (see ``arange``)."""
    return arange(ops.shape(x)[axis])


def ceil_divide(x, divisor):
    """``ceil(x / divisor)`` for a non-negative integer tensor ``x`` and a positive int divisor.

    Computed in float32 (exact for values below 2**24): integer floor division lowers to a
    remainder op, and jax2onnx cannot type a remainder whose shape holds a symbolic batch.
    """
    quotient = ops.ceil(ops.cast(x, "float32") / float(divisor))
    return ops.cast(quotient, x.dtype)
