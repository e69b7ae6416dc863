"""The ConvLSTM forward pass for the torch backend, with the state kept channels-first.

keras's torch convolution takes channels-last tensors, transposes them to channels-first, runs
``torch.nn.functional.conv*d`` and transposes back: once per convolution, so a ConvLSTM in
keras pays several layout transposes per timestep. Here the inputs are transposed once, the
input convolution of all timesteps runs as one call, the state stays in torch's layout
through the eager loop (one convolution per step for all four gates), and the outputs are
transposed back once. Same arguments and results as ``conv_lstm_portable.conv_lstm_forward``.
"""

import keras
import torch
import torch.nn.functional as tnn

from kzoo.layers.conv_lstm import same_padding

_CONV = {1: tnn.conv1d, 2: tnn.conv2d, 3: tnn.conv3d}


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
    pads = [same_padding(n, k, s, d) for n, k, s, d in zip(spatial, kernel_size, strides, dilation)]
    if all(a == b for a, b in pads):
        return x, [a for a, _ in pads]
    flat = []
    for before, after in reversed(pads):
        flat += [before, after]
    return tnn.pad(x, flat), 0


_FAST_ACTIVATIONS = {
    keras.activations.tanh: torch.tanh,
    keras.activations.sigmoid: torch.sigmoid,
    keras.activations.relu: torch.relu,
}


def _activation(fn):
    return _FAST_ACTIVATIONS.get(fn, fn)


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
    pads = [same_padding(n, k, 1, 1) for n, k in zip(state_shape[2:], config["kernel_size"])]
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

    if mask is not None:
        mask = mask.reshape((batch, steps) + (1,) * (rank + 1))
        prev = torch.zeros_like(h)
    order = range(steps - 1, -1, -1) if config["go_backwards"] else range(steps)
    outputs = []
    for t in order:
        if rec_masks is None:
            gates = z[:, t] + recurrent_conv(h, rk)
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
