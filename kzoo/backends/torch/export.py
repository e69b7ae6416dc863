"""Export from torch: ONNX through keras (``torch.onnx``), with traced loops fixed in size.

With free dimensions keras exports torch models with the TorchScript tracer, which records one
run: a Python loop over a free dimension (the time axis of a ConvLSTM, which runs eagerly on
torch) is unrolled for the traced size, and an artifact declaring that axis free would silently
compute only the traced number of steps. Those dimensions (``Signature.traced_loops``) must be
given a size; ONNX Runtime then rejects inputs of any other size.
"""

from kzoo.export.writers import export_with_keras


def export_artifact(serving, path, format, signature, fixed, verbose=False):
    missing = [d for d in signature.traced_loops if d not in fixed]
    if missing:
        raise ValueError(
            f"On the torch backend the ONNX export fixes the {', '.join(map(repr, missing))} "
            "dimension(s) (torch.onnx's tracer unrolls the Python loop over them): pass "
            f"`fixed_sizes={{{missing[0]!r}: N}}` (the CLI uses its sample's size)."
        )
    return export_with_keras(serving, path, format, signature, fixed, verbose=verbose)
