"""The ConvLSTM forward pass for the torch backend, with the state kept channels-first.

keras's torch convolution takes channels-last tensors, transposes them to channels-first, runs
``torch.nn.functional.conv*d`` and transposes back: once per convolution, so a ConvLSTM in
keras pays several layout transposes per timestep. Here the inputs are transposed once, the
input convolution of all timesteps runs as one call, the state stays in torch's layout
through the eager loop (one convolution per step for all four gates), and the outputs are
transposed back once. Same arguments and results as ``kzoo.backends.common.conv_lstm.conv_lstm_forward``.

Training runs the recurrence as one ``torch.autograd.Function`` (``_Recurrence``) when the
activations are tanh, sigmoid or relu (their derivatives follow from their outputs), there is no
time mask or recurrent dropout, and "same" padding of the state is symmetric (odd kernels):

- the forward loop records no autograd graph, and keeps only what the backward pass needs
  (the previous states, the gate activations, ``act(c)``);
- the backward loop takes one transposed convolution per step for the state's gradient and the
  gate math by hand; the recurrent kernel's gradient is ONE weight-gradient convolution over
  all timesteps stacked along the batch axis (T small ones under autograd) while steps are
  small, and is taken step by step with the state's gradient once a step holds
  ``PER_STEP_WEIGHT_GRAD_PIXELS`` batch x spatial positions (there the stacking copies and one
  large convolution cost more than T cache-sized ones);
- with a zero initial state the first step's recurrent convolution is skipped (its input is
  zero), forward and backward.

Anything else, and graphs traced for export, take the plain loop under autograd.
"""

import keras
import torch
import torch.nn.functional as tnn

from kzoo.backends.common.conv_lstm import same_padding
from kzoo.backends.torch import conv_lstm_traced

_CONV = {1: tnn.conv1d, 2: tnn.conv2d, 3: tnn.conv3d}

# Batch x spatial positions of one step from which the backward pass takes the recurrent
# kernel's gradient per step instead of in one convolution over all steps (see _Recurrence).
# Measured on the benchmark grid (2026-12-01): the one convolution wins up to 32x32 frames at
# batch 4 (4,096), loses at batch 16 of 32x32 and at 64x64 frames (16,384).
PER_STEP_WEIGHT_GRAD_PIXELS = 8192


def _value(variable):
    return variable.value if isinstance(variable, keras.Variable) else variable


def _torch_kernel(kernel, rank):
    # keras (k..., in, out) -> torch (out, in, k...)
    return kernel.permute(rank + 1, rank, *range(rank))


# Explicit, non-negative permutations: the ONNX exporter turns ``movedim(-1, ...)`` into a
# Transpose with a negative entry, which ONNX Runtime rejects.
def _to_channels_first(x, rank):
    n = x.dim()
    return x.permute(*range(n - rank - 1), n - 1, *range(n - rank - 1, n - 1))


def _to_channels_last(x, rank):
    n = x.dim()
    return x.permute(*range(n - rank - 1), *range(n - rank, n), n - rank - 1)


def _pad_for_same(x, kernel_size, strides, dilation):
    """Pad ``x`` (channels-first) as TF's "same"; returns (tensor, padding for the conv)."""
    rank = len(kernel_size)
    spatial = x.shape[-rank:]
    if torch.jit.is_tracing() and max(strides) > 1:
        # The padding depends on the frame size: kept as arithmetic on the traced sizes.
        pads = conv_lstm_traced.same_pads(spatial, kernel_size, strides, dilation)
        return tnn.pad(x, [p for pair in reversed(pads) for p in pair]), 0
    pads = [
        same_padding(n, k, s, d) if s > 1 else _stride_one_pads(k, d)
        for n, k, s, d in zip(spatial, kernel_size, strides, dilation)
    ]
    if all(a == b for a, b in pads):
        return x, [a for a, _ in pads]
    flat = []
    for before, after in reversed(pads):
        flat += [before, after]
    return tnn.pad(x, flat), 0


def _stride_one_pads(kernel, dilation):
    """(before, after) "same" padding of a stride-1 convolution: the same for every size."""
    total = (kernel - 1) * dilation
    return total // 2, total - total // 2


_FAST_ACTIVATIONS = {
    keras.activations.tanh: torch.tanh,
    keras.activations.sigmoid: torch.sigmoid,
    keras.activations.relu: torch.relu,
}


def _activation(fn):
    return _FAST_ACTIVATIONS.get(fn, fn)


def _backprop(fn, grad, y, out=None):
    """``grad * act'(x)`` from ``y = act(x)``, for the activations in ``_FAST_ACTIVATIONS``.

    torch's own fused backward kernels (one pass each, where the spelled-out derivative took
    three), written into ``out`` when given: the gate gradients go straight into their slice
    of the time-major gradient buffer.
    """
    if fn is torch.tanh:
        op, extra = torch.ops.aten.tanh_backward, ()
    elif fn is torch.sigmoid:
        op, extra = torch.ops.aten.sigmoid_backward, ()
    else:  # relu: the output is positive exactly where the input is
        op, extra = torch.ops.aten.threshold_backward, (0,)
    if out is None:
        return op.default(grad, y, *extra)
    return op.grad_input(grad, y, *extra, grad_input=out)


def _conv_backward(grad_out, inputs, weight, padding, mask):
    """(input gradient, weight gradient) of a stride-1 ``conv`` with symmetric ``padding``."""
    rank = weight.dim() - 2
    return torch.ops.aten.convolution_backward(
        grad_out,
        inputs,
        weight,
        None,
        (1,) * rank,
        padding,
        (1,) * rank,
        False,
        (0,) * rank,
        1,
        mask,
    )[:2]


class _Recurrence(torch.autograd.Function):
    """The ConvLSTM time loop with a hand-written backward pass (see the module docstring).

    Inputs (channels-first): ``z`` (B, T, 4F, ...) the input projection in loop order,
    ``h0``/``c0`` (B, F, ...), or both None for a zero initial state, ``rk`` (4F, F, k...) the
    recurrent kernel. Outputs: the per-step outputs (B, T, F, ...) with ``return_sequences``,
    else the last one, then the final ``h`` and ``c``.
    """

    @staticmethod
    def forward(ctx, z, h0, c0, rk, act, rec_act, padding, return_sequences):
        conv = _CONV[rk.dim() - 2]
        zero_start = h0 is None
        if zero_start:
            h0 = z.new_zeros(z[:, 0, : rk.shape[1]].shape)
            c0 = torch.zeros_like(h0)
        h, c = h0, c0
        prev_h, prev_c, gate_acts, act_cs, outputs = [], [], [], [], []
        for t in range(z.shape[1]):
            gates = z[:, t]
            if t or not zero_start:
                gates = gates + conv(h, rk, None, 1, padding)
            a_i, a_f, a_g, a_o = gates.chunk(4, dim=1)
            i, f, g, o = rec_act(a_i), rec_act(a_f), act(a_g), rec_act(a_o)
            prev_h.append(h)
            prev_c.append(c)
            c = f * c + i * g
            act_c = act(c)
            h = o * act_c
            gate_acts.append((i, f, g, o))
            act_cs.append(act_c)
            outputs.append(h)
        ctx.save_for_backward(rk)
        # The per-step tensors are intermediates (no input or output of the Function), kept as
        # lists: stacking them would copy every state and gate once more (at 64x64 frames the
        # copies cost as much as the recurrent convolutions).
        ctx.steps = (prev_h, prev_c, gate_acts, act_cs)
        ctx.config = (act, rec_act, padding, return_sequences, zero_start)
        output = torch.stack(outputs, 1) if return_sequences else h
        return output, h, c

    @staticmethod
    def backward(ctx, d_out, d_h, d_c):
        (rk,) = ctx.saved_tensors
        prev_h, prev_c, gate_acts, act_cs = ctx.steps
        del ctx.steps
        act, rec_act, padding, return_sequences, zero_start = ctx.config
        steps = len(prev_h)
        dh = torch.zeros_like(prev_h[0]) if d_h is None else d_h
        dc = torch.zeros_like(prev_c[0]) if d_c is None else d_c
        want_rk = ctx.needs_input_grad[3]
        # Large steps take the recurrent kernel's gradient step by step (as autograd would):
        # one convolution over all timesteps needs the gate gradients and states copied into
        # time x batch tensors and runs slower than T cache-sized ones once a step holds
        # thousands of pixels.
        per_step_rk = want_rk and prev_h[0][:, :1].numel() >= PER_STEP_WEIGHT_GRAD_PIXELS
        d_rk = torch.zeros_like(rk) if per_step_rk else None
        if d_out is not None and not return_sequences:
            dh = dh + d_out
        # Time-major (T, B, 4F, ...): each step's gate gradients are one contiguous block, which
        # the convolution backward reads in place, and all steps together are the time x batch
        # input of the batched weight gradient without a copy.
        d_gates = prev_h[0].new_empty((steps, dh.shape[0], rk.shape[0]) + tuple(dh.shape[2:]))
        width = rk.shape[1]
        for t in range(steps - 1, -1, -1):
            if d_out is not None and return_sequences:
                dh = dh + d_out[:, t]
            i, f, g, o = gate_acts[t]
            act_c = act_cs[t]
            dc = dc + _backprop(act, dh * o, act_c)
            d_i, d_f, d_g, d_o = d_gates[t].split(width, dim=1)
            _backprop(rec_act, dc * g, i, out=d_i)
            _backprop(rec_act, dc * prev_c[t], f, out=d_f)
            _backprop(act, dc * i, g, out=d_g)
            _backprop(rec_act, dh * act_c, o, out=d_o)
            dc = dc * f
            if t or not zero_start:
                mask = [True, per_step_rk, False]
                dh, d_rk_t = _conv_backward(d_gates[t], prev_h[t], rk, padding, mask)
                if per_step_rk:
                    d_rk += d_rk_t
        first = 1 if zero_start else 0
        if want_rk and not per_step_rk:
            if steps > first:
                # All timesteps' weight gradients as one convolution over time x batch.
                grads = d_gates[first:].flatten(0, 1)
                states = torch.cat(prev_h[first:], 0)
                d_rk = _conv_backward(grads, states, rk, padding, [False, True, False])[1]
            else:
                d_rk = torch.zeros_like(rk)
        d_z = d_gates.transpose(0, 1)
        if zero_start:
            return d_z, None, None, d_rk, None, None, None, None
        return d_z, dh, dc, d_rk, None, None, None, None


def conv_lstm_forward(
    inputs,
    kernel,
    recurrent_kernel,
    bias,
    initial_state=None,
    mask=None,
    input_masks=None,
    recurrent_mask_fn=None,
    config=None,
):
    """Run a ConvLSTM over ``inputs`` (a torch tensor); returns ``(output, h, c)``."""
    rank, filters = config["rank"], config["filters"]
    channels_last = config["data_format"] == "channels_last"
    conv = _CONV[rank]
    act = _activation(config["activation"])
    rec_act = _activation(config["recurrent_activation"])
    strides, dilation = config["strides"], config["dilation_rate"]

    x = inputs
    if channels_last:
        x = _to_channels_first(x, rank)
    batch, steps = x.shape[0], x.shape[1]
    w = _torch_kernel(_value(kernel), rank)
    b = None if bias is None else _value(bias)

    def input_conv(seq, weight, bias_):
        merged = seq.reshape((batch * steps,) + tuple(seq.shape[2:]))
        padding = 0
        if config["padding"] == "same":
            merged, padding = _pad_for_same(merged, config["kernel_size"], strides, dilation)
        return conv(merged, weight, bias_, stride=strides, padding=padding, dilation=dilation)

    if input_masks is None:
        z = input_conv(x, w, b)
    else:
        ws = w.chunk(4, dim=0)
        bs = (None,) * 4 if b is None else b.chunk(4)
        parts = []
        for m, wg, bg in zip(input_masks, ws, bs):
            m = _to_channels_first(m, rank) if channels_last else m
            parts.append(input_conv(x * m.unsqueeze(1), wg, bg))
        z = torch.cat(parts, dim=1)
    z = z.reshape((batch, steps) + tuple(z.shape[1:]))

    state_shape = (batch, filters) + tuple(z.shape[3:])
    if initial_state is None:
        h = z.new_zeros(state_shape)
        c = z.new_zeros(state_shape)
    else:
        h, c = initial_state
        if channels_last:
            h, c = _to_channels_first(h, rank), _to_channels_first(c, rank)
    h_layer = _to_channels_last(h, rank) if channels_last else h

    rk = _torch_kernel(_value(recurrent_kernel), rank)
    ones = (1,) * rank
    pads = [_stride_one_pads(k, 1) for k in config["kernel_size"]]
    symmetric = all(a == b for a, b in pads)
    flat_pad = [p for pair in reversed(pads) for p in pair]

    def recurrent_conv(state, weight):
        if symmetric:
            return conv(state, weight, None, stride=ones, padding=[a for a, _ in pads])
        return conv(tnn.pad(state, flat_pad), weight, None, stride=ones, padding=0)

    rec_masks = None if recurrent_mask_fn is None else recurrent_mask_fn(h_layer)
    if rec_masks is not None:
        rec_masks = [_to_channels_first(m, rank) if channels_last else m for m in rec_masks]
        rec_ws = rk.chunk(4, dim=0)

    if torch.jit.is_tracing():
        traced = _traced_recurrence(z, h, c, rk, pads, mask, rec_masks, config)
        if traced is not None:
            output, h, c = traced
            if channels_last:
                output = _to_channels_last(output, rank)
                h, c = _to_channels_last(h, rank), _to_channels_last(c, rank)
            return output, h, c

    fast_math = act in _FAST_ACTIVATIONS.values() and rec_act in _FAST_ACTIVATIONS.values()
    if (
        torch.is_grad_enabled()
        # Exporters (torch.onnx's tracer, torch.export) record the plain loop, not a Function.
        and not torch.jit.is_tracing()
        and not torch.compiler.is_compiling()
        and fast_math
        and symmetric
        and mask is None
        and rec_masks is None
    ):
        z_loop = z.flip(1) if config["go_backwards"] else z
        start = (None, None) if initial_state is None else (h, c)
        output, h, c = _Recurrence.apply(
            z_loop, *start, rk, act, rec_act, [a for a, _ in pads], config["return_sequences"]
        )
        if channels_last:
            output = _to_channels_last(output, rank)
            h, c = _to_channels_last(h, rank), _to_channels_last(c, rank)
        return output, h, c

    zero_start = initial_state is None
    if mask is not None:
        mask = mask.reshape((batch, steps) + (1,) * (rank + 1))
        prev = torch.zeros_like(h)
    order = range(steps - 1, -1, -1) if config["go_backwards"] else range(steps)
    outputs = []
    for n, t in enumerate(order):
        if rec_masks is None:
            # A zero initial state makes the first recurrent convolution zero: skip it.
            gates = z[:, t] if (n == 0 and zero_start) else z[:, t] + recurrent_conv(h, rk)
        else:
            gates = z[:, t] + torch.cat(
                [recurrent_conv(h * m, wg) for m, wg in zip(rec_masks, rec_ws)], dim=1
            )
        i, f, g, o = gates.chunk(4, dim=1)
        c_new = rec_act(f) * c + rec_act(i) * act(g)
        h_new = rec_act(o) * act(c_new)
        if mask is None:
            h, c = h_new, c_new
            out = h_new
        else:
            keep = mask[:, t]
            out = torch.where(keep, h_new, prev)
            h = torch.where(keep, h_new, h)
            c = torch.where(keep, c_new, c)
            prev = out
        if config["return_sequences"]:
            outputs.append(out)

    if config["return_sequences"]:
        output = torch.stack(outputs, dim=1)
    else:
        output = out
    if channels_last:
        output = _to_channels_last(output, rank)
        h, c = _to_channels_last(h, rank), _to_channels_last(c, rank)
    return output, h, c


def _traced_recurrence(z, h, c, rk, pads, mask, rec_masks, config):
    """The loop as a TorchScript function while torch.onnx's tracer records (see
    ``conv_lstm_traced``); None where the eager loop may run (the exporter fixed the time
    axis), a ValueError where it may not."""
    loop = None
    if rec_masks is None:
        loop = conv_lstm_traced.scripted_loop(config, pads, masked=mask is not None)
    if loop is None:
        conv_lstm_traced.check_unrollable(config, recurrent_dropout=rec_masks is not None)
        return None
    rank = config["rank"]
    if mask is not None:
        mask = mask.reshape(tuple(mask.shape[:2]) + (1,) * (rank + 1))
    if config["go_backwards"]:
        z = z.flip(1)
        mask = None if mask is None else mask.flip(1)
    return loop(z, h, c, rk) if mask is None else loop(z, h, c, rk, mask)
