"""keras's ``model.export`` with kzoo's input signature: the portable artifact writer.

``kzoo/export/writers.py`` registers it as the fallback of op ``export_artifact``; each
backend's writer (``kzoo/backends/{jax,tensorflow,torch}/export.py``) hands over to it after
its own preparation, so it lives here, below both.
"""

KERAS_FORMATS = {"saved_model": "tf_saved_model", "onnx": "onnx", "litert": "litert"}


def export_with_keras(serving, path, format, signature, fixed, verbose=False, **kwargs):
    """``serving.export`` with the signature's specs (fixed dimensions filled in)."""
    serving.export(
        path,
        format=KERAS_FORMATS[format],
        input_signature=[signature.map(lambda s: s.keras_spec(fixed))],
        verbose=verbose,
        **kwargs,
    )
