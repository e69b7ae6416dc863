"""torch's dense product: the bias added inside the matrix product (``torch.addmm``, as
``torch.nn.Linear`` runs it) instead of in a second pass over the output, as keras's two ops do
(at DETR-DC5's 1,200 encoder tokens, a pass over every projection's output)."""

import torch
from keras import ops

from kzoo.backends.common.dense import dense_portable


def dense(x, kernel, bias=None):
    x, kernel = ops.convert_to_tensor(x), ops.convert_to_tensor(kernel)
    if bias is None or x.dtype != kernel.dtype:
        return dense_portable(x, kernel, bias)
    bias = ops.convert_to_tensor(bias)
    if bias.dtype != x.dtype:
        return dense_portable(x, kernel, bias)
    flat = torch.addmm(bias, x.reshape(-1, x.shape[-1]), kernel)
    return flat.reshape(*x.shape[:-1], kernel.shape[-1])
