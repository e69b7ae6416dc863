"""Export from JAX: shared symbolic dimensions, and ONNX through jax2onnx.

jax2onnx 0.17 maps every dimension of a reshape's result to a constant or to one dimension of
its input; a reshape merging two free dimensions (DETR's height x width tokens) has neither,
so those dimensions (``Signature.merged``) are fixed for the ONNX export.

keras names every input's free dimensions apart (``a``, ``b``, ... for jax2tf; ``dim_0_1``,
``dim_1_1``, ... for jax2onnx), so two inputs of the same height get unrelated symbols and a
model that checks they match (DETR's ``images`` and ``pixel_mask``) cannot be traced. Here the
signature's dimension names are the symbols: equal names, equal sizes.
"""

import numpy as np

from kzoo.backends.common.export import export_with_keras


def _dims(spec, fixed):
    return tuple(d if isinstance(d, int) else fixed.get(d, d) for d in spec.dims)


def fixed_dims(signature, format):
    return signature.merged if format == "onnx" else ()


def export_artifact(serving, path, format, signature, fixed, verbose=False):
    if format == "onnx":
        missing = [d for d in fixed_dims(signature, format) if d not in fixed]
        if missing:
            sizes = ", ".join(f"{d!r}: N" for d in missing)
            raise ValueError(
                f"jax2onnx cannot export a reshape that merges free dimensions "
                f"({', '.join(map(repr, signature.merged))}; the model flattens them into one "
                f"axis): fix them with `fixed_sizes={{{sizes}}}`, or export from TensorFlow or "
                "torch, whose ONNX keeps them free."
            )
        return _export_onnx(serving, path, signature, fixed)
    polymorphic = signature.map(lambda s: "(" + ", ".join(str(d) for d in _dims(s, fixed)) + ")")
    return export_with_keras(
        serving,
        path,
        format,
        signature,
        fixed,
        verbose=verbose,
        # An inference artifact: no gradient functions (tracing them fails for strided
        # slices of symbolic sizes, and doubles the export time).
        jax2tf_kwargs={"polymorphic_shapes": [polymorphic], "with_gradient": False},
    )


def _export_onnx(serving, path, signature, fixed):
    import jax
    from jax2onnx import to_onnx

    specs = signature.specs
    structs = [jax.ShapeDtypeStruct(_dims(s, fixed), np.dtype(s.dtype)) for s in specs]

    def fn(*flat):
        if isinstance(signature.inputs, dict):
            by_name = dict(zip([s.name for s in specs], flat))
            inputs = {k: by_name[v.name] for k, v in signature.inputs.items()}
        else:
            inputs = flat[0]
        return serving(inputs)

    to_onnx(
        fn,
        inputs=structs,
        input_names=[s.name for s in specs],
        return_mode="file",
        output_path=path,
    )
