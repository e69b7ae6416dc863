"""The ConvLSTM forward pass for JAX: the portable code with the time loop unrolled.

XLA on the CPU runs a convolution inside a ``while`` loop (what ``lax.scan`` compiles to) tens
of times slower than the same convolution outside one: ten steps of a 5x5, 32 -> 128-channel
recurrent convolution on a (5, 32, 32, 32) state took 26.6 s forward and backward under
``lax.scan`` and 0.79 s unrolled (``scan(unroll=2)`` and ``unroll=5`` were as slow as the
plain scan: any loop left in the program is enough). Under ``jit`` every shape is known when
the step is traced, so the loop is unrolled into straight-line code; only sequences longer than
``MAX_UNROLLED_STEPS`` (where compile time would grow too much) keep the scan.
"""

import jax.numpy as jnp
from keras import ops

from kzoo.layers import conv_lstm_portable as portable

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
