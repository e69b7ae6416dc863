"""Export from torch: ONNX through keras (``torch.onnx``), with eager dimensions fixed in size.

With free dimensions keras exports torch models with the TorchScript tracer, which records one
run: a Python loop over a free dimension (the time axis of a ConvLSTM, which runs eagerly on
torch) is unrolled for the traced size, and an artifact declaring that axis free would silently
compute only the traced number of steps; padding computed in Python from a frame size is
recorded as a constant likewise. Those dimensions (``Signature.eager_dims``) must be given a
size; ONNX Runtime then rejects inputs of any other size.
"""

from kzoo.export.writers import export_with_keras


def fixed_dims(signature, format):
    return signature.eager_dims


def export_artifact(serving, path, format, signature, fixed, verbose=False):
    missing = [d for d in fixed_dims(signature, format) if d not in fixed]
    if missing:
        raise ValueError(
            f"On the torch backend the ONNX export fixes the {', '.join(map(repr, missing))} "
            "dimension(s) (torch.onnx's tracer records Python loops and padding computed from "
            "them as constants): pass "
            f"`fixed_sizes={{{', '.join(f'{d!r}: N' for d in missing)}}}` (the CLI uses its "
            "sample's sizes)."
        )
    return export_with_keras(serving, path, format, signature, fixed, verbose=verbose)
