"""The ConvLSTM forward pass for JAX: the time loop unrolled, and a loop for exports.

XLA on the CPU runs a convolution inside a ``while`` loop (what ``lax.scan`` compiles to) tens
of times slower than the same convolution outside one: ten steps of a 5x5, 32 -> 128-channel
recurrent convolution on a (5, 32, 32, 32) state took 26.6 s forward and backward under
``lax.scan`` and 0.79 s unrolled (``scan(unroll=2)`` and ``unroll=5`` were as slow as the
plain scan: any loop left in the program is enough). Under ``jit`` every shape is known when
the step is traced, so the loop is unrolled into straight-line code; only sequences longer than
``MAX_UNROLLED_STEPS`` (where compile time would grow too much) keep the scan.

A shape-polymorphic export (``jax2onnx``, or ``jax2tf`` with symbolic dimensions) traces the
layer with symbolic batch and time sizes. The hoisted input convolution merges those two axes
into one (a reshape to their product), which jax2onnx cannot express in ONNX (it maps each
reshaped dimension to one input axis). Those traces take the portable per-step loop
(``supports_symbolic_batch_or_time`` selects it), which reshapes nothing symbolic.
"""

import jax.numpy as jnp
from keras import ops

from kzoo.backends.common import conv_lstm as portable

MAX_UNROLLED_STEPS = 64


def unrolled_scan(f, init, xs):
    """``keras.ops.scan(f, init, xs)`` as a Python loop when the length is static and short."""
    first = xs[0] if isinstance(xs, tuple) else xs
    steps = first.shape[0]
    if not isinstance(steps, int) or steps > MAX_UNROLLED_STEPS:
        return ops.scan(f, init, xs)
    carry, outputs = init, []
    for t in range(steps):
        step_xs = tuple(x[t] for x in xs) if isinstance(xs, tuple) else xs[t]
        carry, y = f(carry, step_xs)
        outputs.append(y)
    stacked = tuple(jnp.stack(parts) for parts in zip(*outputs))
    return carry, stacked


def conv_lstm_forward(inputs, kernel, recurrent_kernel, bias, **kwargs):
    return portable.conv_lstm_forward(
        inputs, kernel, recurrent_kernel, bias, scan=unrolled_scan, **kwargs
    )


def _symbolic(dim):
    return dim is not None and not isinstance(dim, int)


def supports_symbolic_batch_or_time(shape, dtype, **kwargs):
    """Whether the batch or time size of a ``(batch, time, ...)`` shape is symbolic."""
    return len(shape) > 1 and (_symbolic(shape[0]) or _symbolic(shape[1]))
