"""How an artifact is written: keras's ``model.export``, per backend through the dispatch.

The dispatch op ``export_artifact`` maps ``(serving model, path, format, signature, fixed
sizes, verbose)`` to a written artifact. The portable writer below hands keras the signature's
specs; each backend package registers what its converter needs on top
(``kzoo/backends/{jax,tensorflow,torch}/export.py``).
"""

from kzoo.backends import dispatch

OP = "export_artifact"
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


dispatch.register(
    OP,
    dispatch.Implementation(
        name="keras",
        target="kzoo.export.writers:export_with_keras",
        description="keras's model.export with kzoo's input signature",
    ),
    fallback=True,
)


def writer():
    """The writer for this backend."""
    return dispatch.select(OP).load()
