"""Export from torch: ONNX through keras (``torch.onnx``), with eager dimensions fixed in size.

With free dimensions keras exports torch models with the TorchScript tracer, which records one
run: a Python loop over a free dimension is unrolled for the traced size, and an artifact
declaring that axis free would silently compute only the traced number of steps; padding
computed in Python from a frame size is recorded as a constant likewise. kzoo's ConvLSTMs
record a real loop (a TorchScript function, exported as an ONNX ``Loop``) and their padding as
arithmetic on the traced sizes, so their dimensions stay free. What remains eager
(``Signature.eager_dims``): the time axis of keras's own recurrent layers (and the frame size
of its strided "same" ConvLSTMs), and that of a kzoo ConvLSTM whose activation has no
TorchScript form. Those dimensions must be given a size; ONNX Runtime then rejects inputs of
any other size.
"""

from kzoo.backends.common.export import export_with_keras


def fixed_dims(signature, format):
    return signature.eager_dims


def export_artifact(serving, path, format, signature, fixed, verbose=False):
    missing = [d for d in fixed_dims(signature, format) if d not in fixed]
    if missing:
        raise ValueError(
            f"On the torch backend the ONNX export fixes the {', '.join(map(repr, missing))} "
            "dimension(s) of this model (torch.onnx's tracer records the Python loops of keras's "
            "recurrent layers, or of a kzoo ConvLSTM whose activation has no TorchScript form, "
            "and padding computed from them, as constants): pass "
            f"`fixed_sizes={{{', '.join(f'{d!r}: N' for d in missing)}}}` (the CLI uses its "
            "sample's sizes)."
        )
    return export_with_keras(serving, path, format, signature, fixed, verbose=verbose)
