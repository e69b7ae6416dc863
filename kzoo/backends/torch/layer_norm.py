"""Layer and RMS norm over trailing axes on torch: ``F.layer_norm`` / ``F.rms_norm`` directly.

keras hands torch tensors to ``F.layer_norm`` / ``F.rms_norm`` for trailing axes, which is both
right and fastest there; other axes (where keras's torch path is wrong) take the portable
composition. These call torch's functions without going through ``keras.ops``, so that a kzoo
layer costs no more per call than keras's (float16/bfloat16 are computed in float32 and cast
back, as keras does). The fused residual forms add first, then normalise.

The normalised shape is passed as plain ints (the weights' shape, fixed when the layer is
built): the input's sizes would be recorded by ``torch.onnx``'s tracer as values it cannot
export. That exporter has no ``aten::rms_norm`` either: a traced graph gets the RMS norm
spelled out in elementary ops.
"""

import torch
import torch.nn.functional as F

_HALF = (torch.float16, torch.bfloat16)


def supports(shape, dtype, axes=(), rms_scaling=False, params_match=False, **kwargs):
    """Trailing axes, and gamma/beta shaped like them (``F.layer_norm``'s normalized_shape)."""
    ndim = len(shape)
    return not rms_scaling and params_match and tuple(axes) == tuple(range(ndim - len(axes), ndim))


def _compute(x, params):
    """``x`` and ``params`` in the dtype keras computes in (at least float32), and the out dtype."""
    dtype = x.dtype
    if dtype is torch.float32 or dtype is torch.float64:
        compute = dtype
    else:
        compute = torch.float32
        x = x.to(compute)
        dtype = dtype if dtype in _HALF else torch.float32
    return x, [p if p is None or p.dtype is compute else p.to(compute) for p in params], dtype


def _normalized_shape(x, axes):
    return [int(d) for d in x.shape[x.ndim - len(axes) :]]


def layer_norm(x, gamma, beta, axes, epsilon, rms_scaling=False):
    xc, (gamma, beta), dtype = _compute(x, (gamma, beta))
    y = F.layer_norm(xc, _normalized_shape(x, axes), gamma, beta, epsilon)
    return y if y.dtype is dtype else y.to(dtype)


def rms_norm(x, gamma, axes, epsilon):
    xc, (gamma,), dtype = _compute(x, (gamma,))
    if torch.jit.is_tracing():
        # torch.onnx's TorchScript exporter has no symbolic for aten::rms_norm (torch 2.13,
        # opset 20): the traced graph gets the same computation spelled out.
        dims = list(range(x.ndim - len(axes), x.ndim))
        y = xc * torch.rsqrt(xc.pow(2).mean(dim=dims, keepdim=True) + epsilon)
        y = y if gamma is None else y * gamma
    else:
        y = F.rms_norm(xc, _normalized_shape(x, axes), gamma, epsilon)
    return y if y.dtype is dtype else y.to(dtype)


def add_layer_norm(x, residual, gamma, beta, axes, epsilon):
    z = x + residual
    return layer_norm(z, gamma, beta, axes, epsilon), z


def add_rms_norm(x, residual, gamma, axes, epsilon):
    z = x + residual
    return rms_norm(z, gamma, axes, epsilon), z
