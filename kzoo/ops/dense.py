"""A dense layer's product ``x @ kernel + bias``, sent through the dispatch.

keras's ``Dense`` computes it as two ops: the product, then the bias added in a second pass
over the output. On torch, ``kzoo/backends/torch/dense.py`` adds the bias inside the product
(``torch.addmm``, what ``torch.nn.Linear`` runs). Elsewhere, and with ``KZOO_KERNELS=off``,
keras's two ops run (``kzoo/backends/common/dense.py``); XLA fuses them on its own.
"""

from kzoo.backends import dispatch

OP = "dense"

dispatch.register(
    OP,
    dispatch.Implementation(
        name="keras",
        target="kzoo.backends.common.dense:dense_portable",
        description="keras.ops.matmul, then the bias added",
    ),
    fallback=True,
)


def dense(x, kernel, bias=None):
    """``x @ kernel + bias`` over ``x``'s last axis.

    Args:
        x: ``(..., in_features)`` tensor.
        kernel: ``(in_features, out_features)``, as keras's ``Dense`` holds it.
        bias: Optional ``(out_features,)``.

    Returns:
        ``(..., out_features)``.

    Example:

    ```python
    y = dense(np.ones((2, 5, 4), "float32"), np.ones((4, 3), "float32"), np.zeros(3, "float32"))
    ```
    """
    return dispatch.select(OP).load()(x, kernel, bias)
