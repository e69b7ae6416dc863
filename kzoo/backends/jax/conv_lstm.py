"""When JAX runs the ConvLSTM with the input convolution inside the loop.

A shape-polymorphic export (``jax2onnx``, or ``jax2tf`` with symbolic dimensions) traces the
layer with symbolic batch and time sizes. The hoisted input convolution merges those two axes
into one (a reshape to their product), which jax2onnx cannot express in ONNX (it maps each
reshaped dimension to one input axis). Those traces take the portable per-step loop, which
reshapes nothing symbolic; jitted calls (concrete sizes) keep the hoisted convolution.
"""


def _symbolic(dim):
    return dim is not None and not isinstance(dim, int)


def supports_symbolic_batch_or_time(shape, dtype, **kwargs):
    """Whether the batch or time size of a ``(batch, time, ...)`` shape is symbolic."""
    return len(shape) > 1 and (_symbolic(shape[0]) or _symbolic(shape[1]))
