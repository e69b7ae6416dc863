"""keras's ``model.export`` for kzoo models: the same call, kzoo's artifact.

keras's own ``Model.export`` knows nothing of a kzoo model's inputs: it refuses a model that was
loaded but never called (DETR, CausalLM straight from ``from_preset``), names ONNX inputs
``input_0``, ``input_1``... and outputs by position, names every free dimension apart (so
DETR's ``images`` and ``pixel_mask`` get unrelated heights, which a JAX export cannot trace),
and traces gradient functions from JAX. ``ExportMixin.export`` keeps keras's signature and
hands the formats kzoo writes to ``kzoo.export.export_model``, so ``model.export(path,
format=...)`` writes exactly what ``kzoo export`` writes: named inputs and outputs, the
model's own dynamic dimensions, atomic writes, the converter settings of each backend.
"""

import os

from kzoo.export.writers import KERAS_TO_KZOO


class ExportMixin:
    """Gives a keras model kzoo's ``export``; kzoo's models inherit it.

    A model may define ``export_signature()`` returning the ``kzoo.export.Signature`` it is
    exported with (DETR: ``images`` and ``pixel_mask`` sharing height and width; CausalLM:
    int32 ``token_ids``); otherwise the signature comes from the model's inputs
    (``kzoo.export.signature_for``).

    Example:

    ```python
    model = kzoo.models.ColorFramePredictor.from_preset("convlstm_color_shapes")
    model.export("color.onnx", format="onnx")  # input "frames", output "output_0"
    model.export("color.onnx", format="onnx", overwrite=True, fixed_sizes={"time": 9})
    ```
    """

    def export_signature(self):
        """The ``kzoo.export.Signature`` this model is exported with, or None to derive it from
        the model's inputs."""
        return None

    def export(
        self,
        filepath,
        format="tf_saved_model",
        verbose=None,
        input_signature=None,
        fixed_sizes=None,
        overwrite=False,
        force=False,
        **kwargs,
    ):
        """Export the model for inference: keras's ``Model.export`` arguments, kzoo's artifact.

        Args:
            filepath: Destination: a directory for ``"tf_saved_model"``, a file otherwise
                (ending in ``.tflite`` for ``"litert"``).
            format: ``"tf_saved_model"``, ``"onnx"`` or ``"litert"`` are written by
                ``kzoo.export.export_model`` (as ``kzoo export`` writes them, on the backends
                that write them: see ``kzoo.export.BACKEND_FORMATS``); other keras formats
                (``"openvino"``, ``"torch"``) go to keras's own ``Model.export``.
            verbose: Let keras print its export messages.
            input_signature: Optional keras-style input specs replacing the model's own
                signature (a ``keras.InputSpec``, a dict of them, or a list holding one).
            fixed_sizes: ``{dimension name: size}`` for free dimensions to fix, e.g.
                ``{"time": 10}`` (kzoo's formats only).
            overwrite: Replace an existing artifact of the same format at ``filepath``; without
                it an existing destination is an error (kzoo never replaces what a user owns
                unless asked; see ``kzoo.export.check_destination``).
            force: Replace whatever is at ``filepath`` (a folder of your files included: what
                it held is deleted); implies ``overwrite``.
            **kwargs: keras's converter options, for the formats keras writes itself.

        Returns:
            The absolute path written.

        Raises:
            ValueError: for a format this backend does not write, an existing destination
                without ``overwrite``, a model never built or called (one with no signature of
                its own), bad ``fixed_sizes``, or keras converter options with a kzoo format.
        """
        from kzoo.export.exporter import export_model

        kzoo_format = KERAS_TO_KZOO.get(format)
        if kzoo_format is None:
            if fixed_sizes is not None:
                raise ValueError(
                    f"`fixed_sizes` applies to the formats kzoo writes ({', '.join(KERAS_TO_KZOO)}); "
                    f"format={format!r} is keras's own export: fix sizes with `input_signature`."
                )
            path = os.path.abspath(os.fspath(filepath))
            if os.path.exists(path) and not (overwrite or force):
                raise ValueError(
                    f"{path} already exists; pass overwrite=True to let keras replace it."
                )
            super().export(
                filepath,
                format=format,
                verbose=verbose,
                input_signature=input_signature,
                **kwargs,
            )
            return path
        if kwargs:
            raise ValueError(
                f"kzoo writes format={format!r} with its own converter settings and takes no "
                f"keras converter options (got {', '.join(sorted(kwargs))}); call "
                "`keras.Model.export(model, ...)` to pass them to keras directly."
            )
        return export_model(
            self,
            filepath,
            kzoo_format,
            input_signature=input_signature,
            fixed_sizes=fixed_sizes,
            overwrite=overwrite,
            force=force,
            verbose=bool(verbose),
        )
