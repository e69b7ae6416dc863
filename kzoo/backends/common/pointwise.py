"""A 1x1 convolution (channels last) as one matrix product over the flattened feature map."""

from keras import ops


def pointwise_conv(x, kernel):
    """``x @ kernel`` over the last axis of ``x``, computed on ``x`` flattened to 2-D.

    The same numbers as ``ops.matmul(x, kernel)`` on the N-D map, but JAX's gradient for the
    kernel is then one plain ``x^T g`` product: on the N-D map XLA on the CPU fed it through
    transposed copies of the input and of the output gradient (recomputed inside the copy),
    which took 30 % of the DETR backbone's backward pass.

    Args:
        x: ``(..., C)`` feature map.
        kernel: ``(C, F)`` matrix (a 1x1 convolution's kernel without its two unit axes).

    Returns:
        ``(..., F)``.
    """
    shape = ops.shape(x)
    if not all(isinstance(n, int) for n in shape):
        # Sizes unknown until run (export with a dynamic batch or image size): the plain product,
        # since converters such as jax2onnx cannot map a flattened symbolic size back to axes.
        return ops.matmul(x, kernel)
    y = ops.matmul(ops.reshape(x, (-1, shape[-1])), kernel)
    return ops.reshape(y, (*shape[:-1], kernel.shape[-1]))
