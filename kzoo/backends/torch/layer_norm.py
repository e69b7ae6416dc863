"""Layer norm over trailing axes on torch: ``F.layer_norm`` (Welford statistics, one kernel).

keras hands torch tensors to ``F.layer_norm`` for trailing axes, which is both right and
fastest there; other axes (where keras's torch path is wrong) take the portable composition.
The normalised shape is passed as plain ints (it is the weights' shape, fixed when the layer
is built): keras passes the input's sizes, which ``torch.onnx``'s tracer records as values it
cannot export.
"""

import torch
import torch.nn.functional as tnn


def supports(shape, dtype, axes=(), rms_scaling=False, params_match=False, **kwargs):
    """Trailing axes, and gamma/beta shaped like them (``F.layer_norm``'s normalized_shape)."""
    ndim = len(shape)
    return not rms_scaling and params_match and tuple(axes) == tuple(range(ndim - len(axes), ndim))


def layer_norm(x, gamma, beta, axes, epsilon, rms_scaling=False):
    # As keras: statistics in at least float32, the result in the input's dtype.
    original = x.dtype
    if x.dtype in (torch.float16, torch.bfloat16):
        x = x.float()
    normalized_shape = [int(x.shape[a]) for a in axes]
    gamma = None if gamma is None else gamma.to(x.dtype)
    beta = None if beta is None else beta.to(x.dtype)
    return tnn.layer_norm(x, normalized_shape, gamma, beta, epsilon).to(original)
