"""torch's conv + frozen batch norm for DETR's NCHW backbone.

One ``F.conv2d`` with the frozen norm's shift as the bias (keras's ``ops.conv`` has no bias, so
the portable path pays a separate pass to add it). At inference (grad disabled) the folded
kernel, in torch's OIHW layout and contiguous, is kept between calls: re-folding and re-laying
out ResNet-50's 23 M weights on every call cost about 15% of a forward pass on the CPU. The
cached kernel is rebuilt whenever one of its source tensors changes (another tensor object, or
an in-place update, which bumps the tensor's version counter); a trace (``torch.export``, ONNX)
neither reads nor fills the cache.

At inference on the CPU, the ReLU and the residual sum that follow a convolution run inside it
(oneDNN's post-ops, through ``torch.ops.mkldnn._convolution_pointwise``, the op torch's own
compiler emits for the same pattern): one pass over each feature map instead of three. The
post-ops add and clamp in the order the separate ops do, so the result is the same to the bit.
"""

import weakref

import torch
import torch.nn.functional as F

from kzoo.backends.common.detr_backbone import conv_bn_portable

_CACHE = weakref.WeakKeyDictionary()


def _sources(conv, bn):
    return (
        conv.kernel.value,
        bn.gamma.value,
        bn.beta.value,
        bn.moving_mean.value,
        bn.moving_variance.value,
    )


def _fold(conv, bn, dtype, memory_format=torch.contiguous_format):
    scale, shift = bn.scale_and_shift(dtype)
    kernel = conv.kernel.value.to(dtype) * scale
    return kernel.permute(3, 2, 0, 1).contiguous(memory_format=memory_format), shift


def _same(key, other):
    return (
        len(key) == len(other)
        and all(a is b and va == vb for (a, va), (b, vb) in zip(key[:-1], other[:-1]))
        and key[-1] == other[-1]
    )


def _fused_op():
    """oneDNN's convolution with post-ops, or None where this torch build lacks it."""
    mkldnn = getattr(torch.ops, "mkldnn", None)
    if not torch.backends.mkldnn.is_available() or mkldnn is None:
        return None
    try:
        return mkldnn._convolution_pointwise
    except (AttributeError, RuntimeError):
        return None


_FUSED = _fused_op()


def _tracing(x):
    # An exported graph (torch.export, ONNX, TorchScript) must hold portable ops, not oneDNN's;
    # export traces with tensor subclasses (fake and functional tensors).
    return (
        type(x) is not torch.Tensor
        or torch.compiler.is_compiling()
        or torch.jit.is_tracing()
        or torch.jit.is_scripting()
    )


def _fusable(x, residual):
    return (
        _FUSED is not None
        and not torch.is_grad_enabled()
        and not _tracing(x)
        and x.device.type == "cpu"
        and x.dtype == torch.float32
        and (residual is None or (isinstance(residual, torch.Tensor) and residual.dtype == x.dtype))
    )


def conv_bn(conv, bn, x, stride, pad, data_format, *, residual=None, relu=False):
    if data_format != "channels_first" or not isinstance(x, torch.Tensor) or x.is_meta:
        return conv_bn_portable(conv, bn, x, stride, pad, data_format, residual=residual, relu=relu)
    # The convolution's output (and the fused sum's operand) is laid out as its input is, and
    # the cached kernel is kept in that layout too: oneDNN would otherwise re-lay out the kernel
    # on every call (channels last from the NHWC images).
    memory_format = _memory_format(x)
    if torch.is_grad_enabled() or _tracing(x):
        # A traced fold holds the tracer's tensors: kept, it would poison later eager calls.
        kernel, shift = _fold(conv, bn, x.dtype)
    else:
        sources = _sources(conv, bn)
        # The tensors themselves are held (not their ids), so identity cannot be recycled.
        key = tuple((t, t._version) for t in sources) + ((x.dtype, x.device, memory_format),)
        entry = _CACHE.get(conv)
        if entry is None or not _same(entry[0], key):
            entry = (key, *_fold(conv, bn, x.dtype, memory_format))
            _CACHE[conv] = entry
        _, kernel, shift = entry
    dilation = tuple(conv.dilation_rate)
    if (relu or residual is not None) and _fusable(x, residual):
        args = ([pad, pad], [stride, stride], list(dilation), 1)
        if residual is None:
            return _FUSED(x, kernel, shift, *args, "relu", [], "")
        unary = "relu" if relu else None
        residual = residual.contiguous(memory_format=memory_format)
        return _FUSED.binary(x, residual, kernel, shift, *args, "add", 1.0, unary, [], "")
    y = F.conv2d(x, kernel, shift, stride=stride, padding=pad, dilation=dilation)
    if residual is not None:
        y = y + residual
    return F.relu(y) if relu else y


def _memory_format(x):
    if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format
