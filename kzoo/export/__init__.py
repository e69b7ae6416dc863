"""Export kzoo models to SavedModel, ONNX and LiteRT, and check them in the runtime that serves them.

``export_model(model, path, format)`` writes one artifact atomically (a failed export leaves
nothing, and an existing destination is replaced only with ``overwrite=True``, and only when it
is an artifact of the same format: a folder of a user's files needs ``force=True``); ``load(path,
format)`` opens it in its runtime (``kzoo.export.runtimes``); ``max_differences(model,
artifact, inputs)`` compares the artifact with the keras model on the same inputs.

Formats and where they come from (keras 3.15's ``model.export`` underneath):

=============== ============================ ==============================================
format          backends                     written by
=============== ============================ ==============================================
``saved_model`` tensorflow, jax              ``tf.saved_model`` (JAX through ``jax2tf``)
``onnx``        tensorflow, jax, torch       ``tf2onnx``, ``jax2onnx``, ``torch.onnx``
``litert``      tensorflow                   the TF Lite converter (builtin ops only)
=============== ============================ ==============================================

Every artifact takes named inputs whose batch dimension is free, plus the model's other free
dimensions (``kzoo.export.signatures``); on torch, dimensions a traced Python loop runs over
(the time axis of keras's own recurrent layers, or of a kzoo ConvLSTM whose activation has no
TorchScript form) are fixed to a given size (``fixed_sizes``), since ``torch.onnx``'s tracer
unrolls the loop; kzoo's ConvLSTMs otherwise export a real ``Loop``. Outputs are named: a
model returning one tensor gives ``output_0``, a model returning a dict gives its keys.

kzoo's models inherit ``ExportMixin``: their ``model.export(path, format=...)`` (keras's
signature) writes through ``export_model``.

See ``docs/export.md`` for the model x backend x format table and the tolerances.
"""

from kzoo.export import runtimes, signatures, writers
from kzoo.export.exporter import (
    BACKEND_FORMATS,
    FORMATS,
    TOLERANCES,
    check_destination,
    check_format,
    export_model,
    is_artifact,
    keras_outputs,
    max_differences,
    named_outputs,
    supported_formats,
)
from kzoo.export.mixin import ExportMixin
from kzoo.export.runtimes import load
from kzoo.export.signatures import InputSpec, Signature, image_signature, signature_for
from kzoo.export.writers import KERAS_FORMATS, KERAS_TO_KZOO, fixed_dims

__all__ = [
    "BACKEND_FORMATS",
    "ExportMixin",
    "FORMATS",
    "InputSpec",
    "KERAS_FORMATS",
    "KERAS_TO_KZOO",
    "Signature",
    "TOLERANCES",
    "check_destination",
    "check_format",
    "export_model",
    "fixed_dims",
    "image_signature",
    "is_artifact",
    "keras_outputs",
    "load",
    "max_differences",
    "named_outputs",
    "runtimes",
    "signature_for",
    "signatures",
    "supported_formats",
    "writers",
]


def __getattr__(name):
    # DETRDetections (DETR with its post-processing) is kzoo.models.DETRDetections; this name is
    # an alias, deprecated, answered through kzoo._deprecated so this package imports no model.
    from kzoo._deprecated import moved_name

    return moved_name(__name__, name)
