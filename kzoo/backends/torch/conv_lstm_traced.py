"""The ConvLSTM in graphs traced for export: a real loop over time, padding from traced sizes.

keras exports torch models with free dimensions through torch.onnx's TorchScript tracer, which
records one run of eager code. The eager loop of ``conv_lstm.py`` would be recorded unrolled for
the traced number of steps (keras traces with every free size set to 1), and an artifact that
declares the time axis free would then compute that many steps at every length. Here:

- the recurrence runs as a TorchScript function (``torch.jit.CompilationUnit``), which the
  tracer records as a call with its loop intact; torch.onnx turns it into an ONNX ``Loop`` whose
  trip count is the input's time size, so the artifact is right at every length. The function
  is generated per layer configuration, with the activations written in by name: TorchScript
  cannot call a Python activation function, so only the keras activations in ``ACTIVATIONS``
  have a scripted form;
- the "same" padding of a strided input convolution, which depends on the frame size, is
  computed from the traced sizes (tensors while tracing), so it is recorded as arithmetic on the
  input's shape rather than as the traced frame's constants.

Anything else (another activation, recurrent dropout in a traced training step) cannot be
recorded for every length: it runs the eager loop only when the exporter has fixed the time
axis (``kzoo.backends.common.export_state``), and raises a ValueError otherwise.
"""

import functools

import keras
import torch

from kzoo.backends.common import export_state

# TorchScript for each keras activation the exported loop knows (by function identity; aliases
# such as "swish" are the same functions). Each is the torch function keras 3.15's torch backend
# computes the activation with (``keras/src/backend/torch/nn.py``), defaults included.
ACTIVATIONS = {
    keras.activations.tanh: "torch.tanh({})",
    keras.activations.sigmoid: "torch.sigmoid({})",
    keras.activations.relu: "torch.relu({})",
    keras.activations.linear: "{}",
    keras.activations.relu6: "torch.nn.functional.relu6({})",
    keras.activations.softplus: "torch.nn.functional.softplus({})",
    keras.activations.softsign: "torch.nn.functional.softsign({})",
    keras.activations.silu: "torch.nn.functional.silu({})",
    keras.activations.hard_sigmoid: "torch.nn.functional.hardsigmoid({})",
    keras.activations.hard_silu: "torch.nn.functional.hardswish({})",
    keras.activations.elu: "torch.nn.functional.elu({})",
    keras.activations.selu: "torch.selu({})",
    keras.activations.gelu: "torch.nn.functional.gelu({})",
    keras.activations.exponential: "torch.exp({})",
}


def activation_names():
    """The keras names of the activations the exported loop knows."""
    return sorted(fn.__name__ for fn in ACTIVATIONS)


def _name(fn):
    return getattr(fn, "__name__", repr(fn))


def supports_tracing(shape, dtype, **kwargs):
    """Whether torch.onnx's tracer is recording (it sees sizes as tensors, so a selection cached
    for an eager call of the same shape is never reused here)."""
    return torch.jit.is_tracing()


def export_fixed_dims(config):
    """The dimensions a traced export must fix for a ConvLSTM of this configuration: the time
    axis when an activation has no scripted form, else none."""
    scripted = config["activation"] in ACTIVATIONS and (
        config["recurrent_activation"] in ACTIVATIONS
    )
    return () if scripted else ("time",)


def unrolling_error(reason):
    return ValueError(
        f"This ConvLSTM cannot be exported with a free time axis on torch: {reason}, so "
        "torch.onnx's tracer would unroll its loop for the traced number of frames and the "
        "artifact would compute the wrong answer at any other length. Export it with the time "
        "axis fixed, `kzoo.export.export_model(model, path, 'onnx', fixed_sizes={'time': T})` "
        "(the artifact then takes exactly T frames), or use activations the exported loop "
        f"knows: {', '.join(activation_names())}."
    )


def check_unrollable(config, recurrent_dropout):
    """Raise unless the running export fixed the time axis (the eager loop is then right)."""
    if "time" in export_state.fixed_dims():
        return
    if recurrent_dropout:
        reason = "recurrent dropout is drawn in a traced training step"
    else:
        unknown = [
            _name(fn)
            for fn in (config["activation"], config["recurrent_activation"])
            if fn not in ACTIVATIONS
        ]
        reason = f"its activation {', '.join(map(repr, unknown))} has no TorchScript form"
    raise unrolling_error(reason)


def same_pads(spatial, kernel_size, strides, dilation):
    """TF's "same" padding, ``[(before, after), ...]``, from sizes that may be traced tensors.

    Stride 1 pads by the kernel alone; a stride pads by the size modulo the stride, computed
    here with tensor arithmetic so that a traced graph keeps it as a function of its input.
    """
    pads = []
    for n, k, s, d in zip(spatial, kernel_size, strides, dilation):
        effective = (k - 1) * d + 1
        if s == 1:
            total = effective - 1
            pads.append((total // 2, total - total // 2))
            continue
        n = torch.as_tensor(n)
        out = torch.div(n + (s - 1), s, rounding_mode="floor")
        total = torch.clamp((out - 1) * s + effective - n, min=0)
        before = torch.div(total, 2, rounding_mode="floor")
        pads.append((before, total - before))
    return pads


def scripted_loop(config, pads, masked):
    """The TorchScript recurrence for this configuration, or None when an activation has no
    scripted form. Called as ``loop(z, h, c, rk[, mask])`` with channels-first ``z`` (B, T, 4F,
    ...) in loop order, ``mask`` (B, T, 1, ...) bool; returns ``(output, h, c)``."""
    act = ACTIVATIONS.get(config["activation"])
    rec_act = ACTIVATIONS.get(config["recurrent_activation"])
    if act is None or rec_act is None:
        return None
    return _compile(
        config["rank"], act, rec_act, tuple(pads), masked, bool(config["return_sequences"])
    )


@functools.cache
def _compile(rank, act, rec_act, pads, masked, return_sequences):
    ones = [1] * rank
    if all(a == b for a, b in pads):
        recurrent = f"torch.conv{rank}d(h, rk, None, {ones}, {[a for a, _ in pads]})"
    else:
        flat = [p for pair in reversed(pads) for p in pair]
        recurrent = (
            f"torch.conv{rank}d(torch.nn.functional.pad(h, {flat}), rk, None, {ones}, {[0] * rank})"
        )
    lines = [
        "def loop(z: Tensor, h: Tensor, c: Tensor, rk: Tensor"
        + (", mask: Tensor" if masked else "")
        + ") -> Tuple[Tensor, Tensor, Tensor]:",
        "    outputs: List[Tensor] = []",
        "    out = torch.zeros_like(h)" if masked else "    out = h",
        "    for t in range(z.size(1)):",
        f"        gates = z[:, t] + {recurrent}",
        "        i, f, g, o = gates.chunk(4, 1)",
        f"        c_new = {rec_act.format('f')} * c + {rec_act.format('i')} * {act.format('g')}",
        f"        h_new = {rec_act.format('o')} * {act.format('c_new')}",
    ]
    if masked:
        lines += [
            "        keep = mask[:, t]",
            "        out = torch.where(keep, h_new, out)",
            "        h = torch.where(keep, h_new, h)",
            "        c = torch.where(keep, c_new, c)",
        ]
    else:
        lines += ["        h = h_new", "        c = c_new", "        out = h_new"]
    if return_sequences:
        lines += ["        outputs.append(out)", "    return torch.stack(outputs, 1), h, c"]
    else:
        lines += ["    return out, h, c"]
    return torch.jit.CompilationUnit("\n".join(lines) + "\n").loop
