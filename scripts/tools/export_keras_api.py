"""keras's own ``model.export`` on kzoo models: the figures of issue #24, items 1-3.

1. torch: a model of two kzoo ConvLSTM2D (8 filters) and a Conv2D head on 16x16x3 frames, and
   ``ColorFramePredictor(channels=3, output_channels=3, filters=(4,), kernel_sizes=(3,))``
   (called once at T=3 on 8x8 frames), exported with ``model.export(path, format="onnx")``:
   the input shape the artifact declares, and its largest difference from the keras model in
   ONNX Runtime at several lengths. The same model built from ``keras.layers.ConvLSTM2D``, for
   comparison.
2. JAX: a small DETR loaded from a preset, ``model.export(path, format="tf_saved_model")``
   straight after ``from_preset``, and after one call with a keras ``input_signature`` (what
   keras asks for): the error, or the SavedModel's largest difference from keras at two image
   sizes (``--resnet50`` adds a ResNet-50 DETR with random weights; its jax2tf trace takes
   minutes on 2 cores).
3. torch: the same DETR preset, ``model.export(path, format="onnx")`` straight after
   ``from_preset``, after one call, and with a keras ``input_signature``: the error, or the
   artifact's input and output names.

Each backend runs in its own subprocess. kzoo is imported from ``PYTHONPATH``, so the same
command measures another checkout (e.g. a ``git worktree`` of an older commit):

    PYTHONPATH=$PWD python scripts/tools/export_keras_api.py
    PYTHONPATH=/path/to/old/checkout python scripts/tools/export_keras_api.py
"""

import argparse
import os
import re
import subprocess
import sys
import tempfile
import warnings


def _err(error):
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(error))  # keras's bold markers
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    # keras wraps a layer's exception: "Exception encountered when calling X.call()." + cause.
    if len(lines) > 1 and lines[0].startswith("Exception encountered when calling"):
        lines = [f"{lines[0]} {lines[1]}"]
    return f"{type(error).__name__}: {lines[0][:200] if lines else ''}"


def _session(path):
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3
    return onnxruntime.InferenceSession(path, options, providers=["CPUExecutionProvider"])


def _onnx_diffs(model, path, shapes):
    import keras
    import numpy as np

    session = _session(path)
    (declared,) = session.get_inputs()
    print(f"    declared input {declared.name!r}: {declared.shape}")
    rng = np.random.default_rng(0)
    for shape in shapes:
        x = rng.random(shape, dtype=np.float32)
        try:
            (got,) = session.run(None, {declared.name: x})
        except Exception as error:
            print(f"    T={shape[1]} {shape[2]}x{shape[3]}: ONNX Runtime refuses: {_err(error)}")
            continue
        expected = keras.ops.convert_to_numpy(model(x))
        diff = float(np.max(np.abs(got.astype(np.float64) - expected)))
        print(f"    T={shape[1]} {shape[2]}x{shape[3]}: max |onnx - keras| = {diff:.3g}")


def item1(directory):
    import keras
    import numpy as np

    import kzoo

    def two_layer(layer_cls):
        keras.utils.set_random_seed(0)
        inputs = keras.Input((None, 16, 16, 3))
        x = layer_cls(8, 3, padding="same", return_sequences=True)(inputs)
        x = layer_cls(8, 3, padding="same")(x)
        return keras.Model(inputs, keras.layers.Conv2D(3, 3, padding="same")(x))

    print("item 1 (torch): model.export(path, format='onnx'), ONNX Runtime vs keras")
    shapes = [(2, t, 16, 16, 3) for t in (2, 3, 5)]
    for label, cls in (("kzoo", kzoo.layers.ConvLSTM2D), ("keras", keras.layers.ConvLSTM2D)):
        print(f"  two {label} ConvLSTM2D(8) + Conv2D head, 16x16x3 frames")
        model = two_layer(cls)
        model(np.zeros((1, 3, 16, 16, 3), "float32"))
        path = os.path.join(directory, f"{label}_two_layer.onnx")
        try:
            model.export(path, format="onnx", verbose=False)
        except Exception as error:
            print(f"    export fails: {_err(error)}")
            continue
        _onnx_diffs(model, path, shapes)
    print("  ColorFramePredictor(channels=3, output_channels=3, filters=(4,), kernel_sizes=(3,))")
    keras.utils.set_random_seed(0)
    model = kzoo.models.ColorFramePredictor(
        channels=3, output_channels=3, filters=(4,), kernel_sizes=(3,)
    )
    model(np.zeros((1, 3, 8, 8, 3), "float32"))  # first called at T=3, 8x8
    path = os.path.join(directory, "color.onnx")
    try:
        model.export(path, format="onnx", verbose=False)
    except Exception as error:
        print(f"    export fails: {_err(error)}")
        return
    _onnx_diffs(model, path, [(2, 3, 8, 8, 3), (2, 2, 8, 8, 3), (2, 6, 8, 8, 3), (1, 5, 9, 7, 3)])


def _small_detr():
    import keras

    import kzoo

    keras.utils.set_random_seed(3)
    model = kzoo.models.DETR(
        num_classes=3,
        num_queries=5,
        d_model=32,
        num_heads=4,
        num_encoder_layers=1,
        num_decoder_layers=2,
        ffn_dim=64,
        backbone="small",
    )
    model.build()
    return model


def _detr_inputs(batch, height, width, seed=0):
    import numpy as np

    rng = np.random.default_rng(seed)
    images = rng.normal(size=(batch, height, width, 3)).astype("float32")
    mask = np.ones((batch, height, width), "float32")
    mask[-1, height - height // 3 :, :] = 0  # the last image padded at the bottom and right
    mask[-1, :, width - width // 4 :] = 0
    images[-1][mask[-1] == 0] = 0
    return {"images": images, "pixel_mask": mask}


def _detr_signature():
    import keras

    # What a keras user passes when keras asks for a called model or a signature.
    return [
        {
            "images": keras.InputSpec(shape=(None, None, None, 3), dtype="float32"),
            "pixel_mask": keras.InputSpec(shape=(None, None, None), dtype="float32"),
        }
    ]


def _variants():
    """How the model is exported: (label, whether it was called first, keras arguments)."""
    return [
        ("straight after from_preset", False, {}),
        ("after one call", True, {}),
        (
            "after one call, with a keras input_signature",
            True,
            {"input_signature": _detr_signature()},
        ),
    ]


def _detr_preset(directory, model, name):
    path = os.path.join(directory, name)
    model.save_to_preset(path)
    return path


def item2(directory, resnet50):
    import keras

    import kzoo

    print("item 2 (jax): DETR.from_preset(...).export(path, format='tf_saved_model')")
    models = [("small preset", _small_detr)]
    if resnet50:

        def r50():
            keras.utils.set_random_seed(3)
            model = kzoo.models.DETR(num_classes=91, backbone="resnet50")
            model.build()
            return model

        models.append(("ResNet-50 DETR (random weights)", r50))
    for label, build in models:
        preset = _detr_preset(directory, build(), label.split()[0] + "_preset")
        # jax2tf traces a DETR for a minute or more here: the first and last ways only.
        for index, (when, call, kwargs) in enumerate(_variants()[::2]):
            model = kzoo.models.DETR.from_preset(preset)
            if call:
                model(_detr_inputs(1, 64, 64))
            path = os.path.join(directory, f"{label.split()[0]}_{index}_saved_model")
            print(f"  {label}, {when}")
            try:
                model.export(path, format="tf_saved_model", verbose=False, **kwargs)
            except Exception as error:
                print(f"    export fails: {_err(error)}")
                continue
            _compare_saved_model(model, path)


def _compare_saved_model(model, path):
    import keras
    import numpy as np
    import tensorflow as tf

    loaded = tf.saved_model.load(path)
    serve = loaded.signatures["serving_default"]
    print(f"    serving inputs {sorted(serve.structured_input_signature[1])}")
    for batch, height, width in ((2, 64, 96), (1, 96, 64)):
        inputs = _detr_inputs(batch, height, width)
        try:
            got = {k: v.numpy() for k, v in serve(**inputs).items()}
        except Exception as error:
            print(f"    {batch}x{height}x{width}: the SavedModel fails: {_err(error)}")
            continue
        expected = {
            k: keras.ops.convert_to_numpy(v) for k, v in model(inputs, training=False).items()
        }
        # keras's own SavedModel numbers its outputs; kzoo's names them.
        if set(got) == set(expected):
            pairs = [(got[k], expected[k]) for k in sorted(expected)]
        else:
            pairs = list(zip([got[k] for k in sorted(got)], keras.tree.flatten(expected)))
        diff = max(float(np.max(np.abs(a - b))) for a, b in pairs)
        scale = max(float(np.max(np.abs(b))) for _, b in pairs)
        print(
            f"    {batch}x{height}x{width}: outputs {sorted(got)}, "
            f"max |SavedModel - keras| = {diff:.3g} (outputs up to {scale:.3g})"
        )


def item3(directory):
    import kzoo

    print("item 3 (torch): DETR.from_preset(...).export(path, format='onnx')")
    preset = _detr_preset(directory, _small_detr(), "small_preset")
    model = kzoo.models.DETR.from_preset(preset)
    for index, (when, call, kwargs) in enumerate(_variants()):
        if call:
            model(_detr_inputs(1, 64, 64))
        path = os.path.join(directory, f"detr_{index}.onnx")
        print(f"  {when}")
        try:
            model.export(path, format="onnx", verbose=False, **kwargs)
        except Exception as error:
            print(f"    export fails: {_err(error)}")
            continue
        session = _session(path)
        print(f"    inputs  {[(i.name, i.shape) for i in session.get_inputs()]}")
        print(f"    outputs {[o.name for o in session.get_outputs()]}")


def child(backend, resnet50):
    warnings.filterwarnings("ignore")
    import logging

    logging.disable(logging.WARNING)
    with tempfile.TemporaryDirectory() as directory:
        if backend == "torch":
            item1(directory)
            item3(directory)
        else:
            item2(directory, resnet50)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--resnet50", action="store_true", help="item 2 on a ResNet-50 DETR too")
    parser.add_argument(
        "--backends",
        nargs="+",
        choices=("torch", "jax"),
        default=["torch", "jax"],
        help="torch: items 1 and 3; jax: item 2 (default both)",
    )
    parser.add_argument("--child", choices=("torch", "jax"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args.child, args.resnet50)
        return 0
    import importlib.util

    spec = importlib.util.find_spec("kzoo")
    print(f"kzoo from {os.path.dirname(os.path.dirname(spec.origin)) if spec else '?'}")
    status = 0
    for backend in args.backends:
        env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="3")
        cmd = [sys.executable, os.path.abspath(__file__), "--child", backend]
        if args.resnet50:
            cmd.append("--resnet50")
        proc = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, text=True)
        sys.stdout.write(proc.stdout)
        if proc.returncode:
            print(f"{backend}: the child exited with {proc.returncode}")
            status = 1
    return status


if __name__ == "__main__":
    sys.exit(main())
