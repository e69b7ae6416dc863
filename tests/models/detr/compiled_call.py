"""Calling a layer through a compiled keras model in the DETR architecture tests.

Eager JAX compiles every op for every new shape, which made a single call of the small backbone
take half a minute on the shared CI machine; ``predict_on_batch`` compiles the whole call once
(jit on JAX, tf.function on TensorFlow, eager on torch).
"""

import keras
import numpy as np


def run(layer, *inputs):
    """``layer(*inputs)`` as numpy, with every input given as a (concrete) numpy array."""
    tensors = [keras.Input(batch_shape=x.shape, dtype=str(x.dtype)) for x in inputs]
    outputs = layer(*tensors)
    if len(inputs) == 1:
        out = keras.Model(tensors[0], outputs).predict_on_batch(inputs[0])
    else:
        out = keras.Model(tensors, outputs).predict_on_batch(list(inputs))
    return keras.tree.map_structure(np.asarray, out)
