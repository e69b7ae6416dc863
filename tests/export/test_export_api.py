"""kzoo.export's contract: bad input gets a clear ValueError, writes are atomic, artifacts are
named and stand alone (a fresh process that never imports kzoo can serve them)."""

import json
import os
import re
import shutil
import subprocess
import sys

import keras
import numpy as np
import pytest

import kzoo
from kzoo import export
from kzoo.export import signatures
from kzoo.utils.files import write_probe
from tests.export.cases import small_detr

BACKEND = keras.backend.backend()
FORMAT = export.supported_formats(BACKEND)[0]  # the cheapest check on this backend
SUFFIX = {"saved_model": "", "onnx": ".onnx", "litert": ".tflite"}


def _dense_model():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((4,), name="features")
    return keras.Model(inputs, keras.layers.Dense(3, name="dense")(inputs))


def _video_model():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((None, None, None, 2), name="frames")
    outputs = kzoo.layers.ConvLSTM2D(3, 3, padding="same", name="conv_lstm")(inputs)
    return keras.Model(inputs, outputs)


class _Subclassed(keras.Model):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.dense = keras.layers.Dense(2)

    def call(self, x):
        return self.dense(x)


class _FailsWhenTraced(keras.layers.Layer):
    """Builds fine in a functional model (its output shape is declared), fails when run."""

    def call(self, x):
        raise RuntimeError("this layer cannot be exported")

    def compute_output_shape(self, shape):
        return shape


def _path(tmp_path, name="model", format=FORMAT):
    return str(tmp_path / f"{name}{SUFFIX[format]}")


def test_unknown_format_lists_the_supported_ones(tmp_path):
    with pytest.raises(ValueError, match="saved_model, onnx, litert"):
        export.export_model(_dense_model(), _path(tmp_path), "tflite")


@pytest.mark.parametrize(
    "format", [f for f in export.FORMATS if f not in export.supported_formats(BACKEND)] or [None]
)
def test_format_this_backend_does_not_write_names_the_ones_it_does(format, tmp_path):
    if format is None:
        pytest.skip(f"{BACKEND} writes every format")
    with pytest.raises(ValueError, match=f"not from '{BACKEND}'.*KERAS_BACKEND"):
        export.export_model(_dense_model(), _path(tmp_path, format=format), format)


def test_model_never_built_or_called_says_how_to_build_it(tmp_path):
    with pytest.raises(ValueError, match=r"never been built or called.*model\.build"):
        export.export_model(_Subclassed(), _path(tmp_path), FORMAT)
    detr = kzoo.models.DETR(
        num_classes=2, num_queries=3, d_model=16, num_heads=2, num_encoder_layers=1,
        num_decoder_layers=1, ffn_dim=16, backbone="small",
    )  # fmt: skip
    with pytest.raises(ValueError, match="never been built or called"):
        export.export_model(detr, _path(tmp_path), FORMAT)
    with pytest.raises(ValueError, match="never been built or called"):
        export.DETRDetections(detr)


def test_subclassed_model_built_but_never_called_is_asked_for_a_call(tmp_path):
    model = _Subclassed()
    model.build((None, 3))
    with pytest.raises(ValueError, match=r"never been called.*model\(x\)"):
        export.export_model(model, _path(tmp_path), FORMAT)
    assert os.listdir(tmp_path) == []


def _user_files(path, format):
    """A user's things where the artifact goes: a folder of files, or a file of their own."""
    if format == "saved_model":
        os.makedirs(path)
        with open(os.path.join(path, "mywork.txt"), "w") as f:
            f.write("mine")
        return os.path.join(path, "mywork.txt")
    with open(path, "w") as f:
        f.write("mine")
    return path


def test_existing_artifact_needs_overwrite_and_is_then_replaced_whole(tmp_path):
    model = _dense_model()
    path = _path(tmp_path)
    export.export_model(model, path, FORMAT)
    assert export.is_artifact(path, FORMAT)  # what the exporters write is recognised
    with pytest.raises(ValueError, match="already exists.*overwrite=True"):
        export.export_model(model, path, FORMAT)
    keras.utils.set_random_seed(1)
    other = keras.Model(model.inputs, keras.layers.Dense(3, name="dense")(model.inputs[0]))
    export.export_model(other, path, FORMAT, overwrite=True)
    x = np.random.default_rng(0).normal(size=(3, 4)).astype("float32")
    assert export.max_differences(other, export.load(path, FORMAT), x)["output_0"] < 1e-5
    assert sorted(os.listdir(tmp_path)) == [os.path.basename(path)]


def test_overwrite_never_replaces_what_is_not_an_artifact(tmp_path):
    """Issue #24 item 7: ``overwrite=True`` replaced a folder of the user's files (data loss).
    It replaces only an artifact of the same format; anything else needs ``force=True``."""
    model = _dense_model()
    path = _path(tmp_path)
    mine = _user_files(path, FORMAT)
    for overwrite in (False, True):
        with pytest.raises(ValueError) as error:
            export.export_model(model, path, FORMAT, overwrite=overwrite)
        message = str(error.value)
        assert path in message and "force=True (--force)" in message
        assert "does not delete files it did not write" in message
        assert open(mine).read() == "mine"
    if FORMAT == "saved_model":
        assert "mywork.txt" in message  # says what the folder holds
    assert sorted(os.listdir(tmp_path)) == [os.path.basename(path)]
    # A folder that merely looks like a SavedModel (its files beside the user's) is no better.
    if FORMAT == "saved_model":
        other = tmp_path / "other"
        export.export_model(model, str(other), FORMAT)
        (other / "variables" / "notes.txt").write_text("mine")
        with pytest.raises(ValueError, match="not a SavedModel"):
            export.export_model(model, str(other), FORMAT, overwrite=True)
        assert (other / "variables" / "notes.txt").read_text() == "mine"
        shutil.rmtree(other)
    # force=True is the explicit request: the path is replaced whole.
    export.export_model(model, path, FORMAT, force=True)
    assert not os.path.exists(os.path.join(path, "mywork.txt")) and export.is_artifact(path, FORMAT)
    x = np.random.default_rng(0).normal(size=(3, 4)).astype("float32")
    assert export.max_differences(model, export.load(path, FORMAT), x)["output_0"] < 1e-5
    assert sorted(os.listdir(tmp_path)) == [os.path.basename(path)]


def test_failed_export_leaves_the_destination_as_it_was(tmp_path):
    inputs = keras.Input((4,), name="x")
    model = keras.Model(inputs, _FailsWhenTraced()(inputs))
    path = _path(tmp_path)
    with open(os.path.join(tmp_path, "keep"), "w") as f:
        f.write("x")
    if FORMAT == "saved_model":
        os.makedirs(path)
        open(os.path.join(path, "old"), "w").close()
    else:
        with open(path, "w") as f:
            f.write("old")
    with pytest.raises(Exception, match="cannot be exported"):
        export.export_model(model, path, FORMAT, force=True)
    # The old destination is intact and no temporary file is left beside it.
    assert sorted(os.listdir(tmp_path)) == sorted(["keep", os.path.basename(path)])
    if FORMAT == "saved_model":
        assert os.listdir(path) == ["old"]
    else:
        assert open(path).read() == "old"


FILE_FORMATS = [f for f in export.supported_formats(BACKEND) if f != "saved_model"]


@pytest.mark.parametrize("format", FILE_FORMATS)
def test_a_directory_is_never_replaced_by_a_one_file_model(format, tmp_path):
    """Issue #24 item 14: ONNX and LiteRT models are one file; a directory at the path is
    refused with ``overwrite=True`` and even with ``force=True``, and left as it was."""
    path = tmp_path / f"model{SUFFIX[format]}"
    path.mkdir()
    (path / "mywork.txt").write_text("mine")
    for kwargs in ({"overwrite": True}, {"force": True}):
        with pytest.raises(ValueError, match=f"{re.escape(str(path))} is a directory; a {format}"):
            export.export_model(_dense_model(), str(path), format, **kwargs)
    assert os.listdir(path) == ["mywork.txt"] and (path / "mywork.txt").read_text() == "mine"
    assert os.listdir(tmp_path) == [path.name]


def test_destinations_that_cannot_be_written_are_value_errors_naming_the_path(tmp_path):
    """Issue #24 item 10: a path under a regular file raised a raw FileExistsError."""
    (tmp_path / "photo.jpg").write_bytes(b"a photo")
    path = str(tmp_path / "photo.jpg" / f"a{SUFFIX[FORMAT]}")
    with pytest.raises(ValueError, match=re.escape(f"Cannot export to {path}: ") + ".*a file"):
        export.export_model(_dense_model(), path, FORMAT)
    assert (tmp_path / "photo.jpg").read_bytes() == b"a photo"
    deeper = str(tmp_path / "photo.jpg" / "sub" / f"a{SUFFIX[FORMAT]}")
    with pytest.raises(ValueError, match="photo.jpg is a file, not a directory"):
        export.export_model(_dense_model(), deeper, FORMAT)
    # /sys refuses new files, even to root (for whom os.access says it is writable).
    if write_probe("/sys") is None:
        pytest.skip("/sys can be written here")
    with pytest.raises(ValueError, match=r"Cannot export to /sys/m.*/sys is not writable"):
        export.export_model(_dense_model(), f"/sys/m{SUFFIX[FORMAT]}", FORMAT)


class _TwoOutputs(keras.Model):
    """Returns a tuple whose members differ in shape and value."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.wide = keras.layers.Dense(5)
        self.narrow = keras.layers.Dense(2)

    def call(self, x):
        return self.wide(x), self.narrow(x) * 3.0


@pytest.mark.parametrize("kind", ["list", "tuple"])
def test_onnx_outputs_of_a_model_returning_several_tensors_are_numbered(kind, tmp_path):
    """Issue #24 item 14: ``output_0``, ``output_1``, ... name a list or tuple of outputs in
    order, checked by value in onnxruntime."""
    import onnxruntime

    keras.utils.set_random_seed(0)
    if kind == "list":
        inputs = keras.Input((4,), name="features")
        outputs = [
            keras.layers.Dense(3)(inputs),
            keras.layers.Dense(1)(inputs),
            keras.layers.Dense(6)(inputs),
        ]
        model = keras.Model(inputs, outputs)
    else:
        model = _TwoOutputs(name="two_outputs")
        model(np.zeros((1, 4), "float32"))
    x = np.random.default_rng(4).normal(size=(3, 4)).astype("float32")
    expected = [keras.ops.convert_to_numpy(y) for y in model(x)]
    path = export.export_model(model, str(tmp_path / "m.onnx"), "onnx")
    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    assert sorted(names) == [f"output_{i}" for i in range(len(expected))]
    (input_name,) = [i.name for i in session.get_inputs()]
    got = dict(zip(names, session.run(None, {input_name: x})))
    for i, want in enumerate(expected):
        np.testing.assert_allclose(got[f"output_{i}"], want, atol=1e-5, rtol=0)


@pytest.mark.backends("tensorflow")
def test_litert_path_must_end_in_tflite(tmp_path):
    with pytest.raises(ValueError, match=r"\.tflite"):
        export.export_model(_dense_model(), str(tmp_path / "model.bin"), "litert")


def test_fixed_sizes_must_name_free_dimensions_with_positive_sizes(tmp_path):
    with pytest.raises(ValueError, match="'depth', which is not a free dimension"):
        export.export_model(_video_model(), _path(tmp_path), FORMAT, fixed_sizes={"depth": 3})
    with pytest.raises(ValueError, match="positive int"):
        export.export_model(_video_model(), _path(tmp_path), FORMAT, fixed_sizes={"time": 0})


def _keras_conv_lstm_model():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((None, 5, 5, 2), name="frames")
    outputs = keras.layers.ConvLSTM2D(3, 3, padding="same", name="conv_lstm")(inputs)
    return keras.Model(inputs, outputs)


@pytest.mark.backends("torch")
def test_torch_onnx_asks_for_the_time_axis_of_a_loop_it_cannot_export(tmp_path):
    # keras's own ConvLSTM2D loops in Python on torch: the tracer would unroll it.
    with pytest.raises(ValueError, match=r"fixes the 'time'.*fixed_sizes=\{'time': N\}"):
        export.export_model(_keras_conv_lstm_model(), _path(tmp_path), "onnx")
    assert os.listdir(tmp_path) == []


@pytest.mark.backends("jax")
def test_jax_onnx_asks_for_the_detr_sizes_it_must_fix(tmp_path):
    with pytest.raises(ValueError, match=r"jax2onnx.*fixed_sizes=\{'height': N, 'width': N\}"):
        export.export_model(small_detr(), _path(tmp_path, format="onnx"), "onnx")


def test_signatures_name_the_dimensions_and_share_them_between_inputs():
    video = signatures.signature_for(_video_model())
    assert video.inputs.dims == ("batch", "time", "height", "width", 2)
    detr = signatures.signature_for(small_detr())
    assert detr.inputs["images"].dims == ("batch", "height", "width", 3)
    assert detr.inputs["pixel_mask"].dims == ("batch", "height", "width")
    lm = kzoo.models.CausalLM(vocabulary_size=5, num_layers=1, hidden_dim=8, num_heads=2)
    lm.build((None, None))
    tokens = signatures.signature_for(lm).inputs
    assert (tokens.name, tokens.dims, tokens.dtype) == ("token_ids", ("batch", "sequence"), "int32")
    # kzoo's ConvLSTM exports a real loop everywhere (torch: a TorchScript loop, an ONNX Loop).
    assert export.fixed_dims(video, "onnx") == ()
    keras_video = signatures.signature_for(_keras_conv_lstm_model())
    assert export.fixed_dims(keras_video, "onnx") == (("time",) if BACKEND == "torch" else ())
    assert export.fixed_dims(detr, "onnx") == (("height", "width") if BACKEND == "jax" else ())


def test_inputs_that_do_not_fit_the_signature_are_refused():
    detr = signatures.signature_for(small_detr())
    images = np.zeros((1, 32, 32, 3), "float32")
    with pytest.raises(ValueError, match="keys"):
        detr.check({"images": images})
    with pytest.raises(ValueError, match="disagree on the size of 'height'"):
        detr.check({"images": images, "pixel_mask": np.ones((1, 16, 32), "float32")})
    with pytest.raises(ValueError, match="rank 3"):
        detr.check({"images": images, "pixel_mask": np.ones((1, 32), "float32")})


def test_load_refuses_unknown_formats_and_missing_files(tmp_path):
    with pytest.raises(ValueError, match="supported formats: saved_model, onnx, litert"):
        export.load(tmp_path, "pickle")
    with pytest.raises(FileNotFoundError):
        export.load(tmp_path / "missing.onnx", "onnx")


_STANDALONE = r"""
import json, sys
import numpy as np
fmt, path, data, out = sys.argv[1:5]
x = np.load(data)
if fmt == "onnx":
    import onnxruntime
    s = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    (y,) = s.run(["output_0"], {"frames": x})
elif fmt == "saved_model":
    import tensorflow as tf
    loaded = tf.saved_model.load(path)
    y = loaded.signatures["serving_default"](frames=tf.constant(x))["output_0"].numpy()
else:
    from ai_edge_litert.interpreter import Interpreter
    runner = Interpreter(model_path=path).get_signature_runner("serving_default")
    y = runner(frames=x)["output_0"]
np.save(out, y)
print(json.dumps(sorted(m for m in ("keras", "kzoo") if m in sys.modules)))
"""


def test_artifact_serves_from_a_process_without_kzoo(tmp_path):
    model = _video_model()
    fixed = {"time": 3} if BACKEND == "torch" else None
    path = export.export_model(model, _path(tmp_path), FORMAT, fixed_sizes=fixed)
    x = np.random.default_rng(1).random((2, 3, 7, 9, 2), dtype=np.float32)
    np.save(tmp_path / "x.npy", x)
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    env.pop("PYTHONPATH", None)  # nothing of kzoo's on the path
    proc = subprocess.run(
        [sys.executable, "-c", _STANDALONE, FORMAT, path, str(tmp_path / "x.npy"),
         str(tmp_path / "y.npy")],
        capture_output=True, text=True, env=env, cwd=str(tmp_path), timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    imported = json.loads(proc.stdout.strip().splitlines()[-1])
    # TensorFlow imports keras itself; nothing imports kzoo.
    assert imported == (["keras"] if FORMAT == "saved_model" else [])
    expected = keras.ops.convert_to_numpy(model(x))
    np.testing.assert_allclose(np.load(tmp_path / "y.npy"), expected, atol=1e-5, rtol=0)


def test_strided_same_padding_is_an_eager_dimension_only_for_keras_own_conv_lstm(tmp_path):
    keras.utils.set_random_seed(0)
    inputs = keras.Input((None, None, None, 2), name="frames")
    outputs = kzoo.layers.ConvLSTM2D(3, 3, strides=2, padding="same")(inputs)
    model = keras.Model(inputs, outputs)
    # kzoo's layer records its strided "same" padding as arithmetic on the traced frame size:
    # nothing to fix, and the artifact is right at frame sizes of both parities.
    assert signatures.signature_for(model).eager_dims == ()
    path = export.export_model(model, _path(tmp_path), FORMAT)
    artifact = export.load(path, FORMAT)
    for shape in ((2, 3, 8, 8, 2), (1, 2, 9, 7, 2)):
        x = np.random.default_rng(0).random(shape, dtype=np.float32)
        assert export.max_differences(model, artifact, x)["output_0"] <= 1e-5
    # keras's own strided "same" ConvLSTM pads by sizes computed in Python.
    inputs = keras.Input((None, 6, 6, 2), name="frames")
    outputs = keras.layers.ConvLSTM2D(3, 3, strides=2, padding="same")(inputs)
    keras_model = keras.Model(inputs, outputs)
    signature = signatures.from_keras(
        keras.InputSpec(shape=(None, None, None, None, 2)), keras_model
    )
    assert signature.eager_dims == ("time", "inputs_2", "inputs_3")


# On JAX keras's own export also traces gradient functions (about 30 s here): the slow step.
@pytest.mark.backends("tensorflow", "jax")
@pytest.mark.parametrize(
    "_", [pytest.param(0, marks=[pytest.mark.slow] if BACKEND == "jax" else [])]
)
def test_keras_own_export_of_a_conv_lstm_model_serves(_, tmp_path):
    """The issue's report: ``model.export(path, format="tf_saved_model")`` on a model built
    with kzoo's ConvLSTM2D failed on TensorFlow (the training path's tf.custom_gradient)."""
    import tensorflow as tf

    model = _video_model()
    x = np.random.default_rng(2).random((2, 4, 6, 5, 2), dtype=np.float32)
    expected = keras.ops.convert_to_numpy(model(x))
    model.export(str(tmp_path / "sm"), format="tf_saved_model", verbose=False)
    loaded = tf.saved_model.load(str(tmp_path / "sm"))
    np.testing.assert_allclose(loaded.serve(tf.constant(x)).numpy(), expected, atol=1e-5)
