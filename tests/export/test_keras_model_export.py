"""keras's own ``model.export(path, format="onnx")`` on torch, for models built from kzoo layers.

keras traces such a model once with torch.onnx's TorchScript tracer (every free size set to 1)
and declares the ``None`` dimensions free. Every artifact here is run in ONNX Runtime at several
sizes of each free dimension and compared with the keras model (float32, 1e-5 absolute): a
layer whose loop or padding the tracer recorded for one size would be wrong at the others
(the issue: kzoo's ConvLSTM2D was off by 0.03-0.11 at every length). Where a layer cannot be
exported for every size, keras's export must fail with a kzoo error saying how to fix the size.
"""

import keras
import numpy as np
import pytest

import kzoo
from kzoo import export

pytestmark = pytest.mark.backends("torch")
TOLERANCE = 1e-5


def _session(path):
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3
    return onnxruntime.InferenceSession(path, options, providers=["CPUExecutionProvider"])


def _keras_export(model, sample, tmp_path):
    """keras's own export of ``model`` (called once on ``sample`` first, as keras needs)."""
    model(sample)
    path = str(tmp_path / "model.onnx")
    keras.Model.export(model, path, format="onnx", verbose=False)
    return _session(path)


def _max_diff(session, model, inputs):
    inputs = inputs if isinstance(inputs, list) else [inputs]
    feed = {i.name: x for i, x in zip(session.get_inputs(), inputs)}
    got = session.run(None, feed)
    expected = keras.tree.flatten(model(inputs if len(inputs) > 1 else inputs[0]))
    assert len(got) == len(expected)
    diffs = []
    for a, b in zip(got, expected):
        b = keras.ops.convert_to_numpy(b)
        assert a.shape == b.shape, (a.shape, b.shape)
        diffs.append(float(np.max(np.abs(a.astype(np.float64) - b))))
    return max(diffs)


def _video(shape, seed=0):
    return np.random.default_rng(seed).random(shape, dtype=np.float32)


def test_the_issue_conv_lstm_model_is_right_at_every_length(tmp_path):
    """Two ConvLSTM2D (8 filters) and a Conv2D head on 16x16x3 frames: the issue's model."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((None, 16, 16, 3))
    x = kzoo.layers.ConvLSTM2D(8, 3, padding="same", return_sequences=True)(inputs)
    x = kzoo.layers.ConvLSTM2D(8, 3, padding="same")(x)
    model = keras.Model(inputs, keras.layers.Conv2D(3, 3, padding="same")(x))
    session = _keras_export(model, _video((1, 3, 16, 16, 3)), tmp_path)
    (declared,) = session.get_inputs()
    assert isinstance(declared.shape[1], str)  # the time axis is declared free ...
    for steps in (1, 2, 3, 5):  # ... and the artifact is right at every length
        diff = _max_diff(session, model, _video((2, steps, 16, 16, 3), seed=steps))
        assert diff <= TOLERANCE, (steps, diff)


def _conv_lstm_1d():
    # keras traces with every free size set to 1, which a "valid" kernel of 3 cannot run on:
    # the length is given (the time axis stays free).
    inputs = keras.Input((None, 7, 2))
    x = kzoo.layers.ConvLSTM1D(3, 3, return_sequences=True)(inputs)
    return keras.Model(inputs, kzoo.layers.ConvLSTM1D(2, 2, padding="same")(x))


def _conv_lstm_2d_strided():
    # Strided "same" pads by the frame size modulo the stride; an even kernel pads the state
    # asymmetrically; go_backwards and return_state take other paths through the loop.
    inputs = keras.Input((None, None, None, 2))
    x = kzoo.layers.ConvLSTM2D(
        3, 3, strides=2, padding="same", return_sequences=True, go_backwards=True
    )(inputs)
    outputs = kzoo.layers.ConvLSTM2D(2, 2, padding="same", return_state=True)(x)
    return keras.Model(inputs, outputs)


def _conv_lstm_2d_channels_first():
    inputs = keras.Input((None, 2, None, None))
    x = kzoo.layers.ConvLSTM2D(
        3, 3, padding="same", data_format="channels_first", return_sequences=True
    )(inputs)
    return keras.Model(inputs, x)


def _conv_lstm_2d_masked():
    # A (batch, time) mask: masked steps keep the state and repeat the previous output.
    frames = keras.Input((None, 4, 4, 2))
    mask = keras.Input((None,), dtype="bool")
    layer = kzoo.layers.ConvLSTM2D(3, 3, padding="same", return_sequences=True)
    return keras.Model([frames, mask], layer(frames, mask=mask))


def _conv_lstm_2d_dropout():
    # Inference ignores the dropout masks (drawn all the same, as keras draws them).
    inputs = keras.Input((None, 5, 5, 2))
    layer = kzoo.layers.ConvLSTM2D(
        3, 3, padding="same", dropout=0.3, recurrent_dropout=0.3, return_sequences=True
    )
    return keras.Model(inputs, layer(inputs))


def _conv_lstm_3d():
    inputs = keras.Input((None, None, None, None, 1))
    return keras.Model(inputs, kzoo.layers.ConvLSTM3D(2, 2, padding="same")(inputs))


def _masked_frames(shape, seed):
    mask = np.ones(shape[:2], bool)
    mask[0, 1] = False  # a masked step inside the first sequence
    mask[-1, -1] = False  # and the last step of the last
    return [_video(shape, seed), mask]


CONV_LSTMS = {
    "1d-valid": (_conv_lstm_1d, [(2, 3, 7, 2), (1, 5, 7, 2), (3, 1, 7, 2)], _video),
    "2d-strided-same": (
        _conv_lstm_2d_strided,
        [(2, 3, 8, 8, 2), (1, 2, 9, 7, 2), (2, 5, 6, 11, 2)],
        _video,
    ),
    "2d-channels-first": (
        _conv_lstm_2d_channels_first,
        [(2, 3, 2, 5, 6), (1, 4, 2, 7, 3)],
        _video,
    ),
    "2d-masked": (_conv_lstm_2d_masked, [(2, 3, 4, 4, 2), (3, 5, 4, 4, 2)], _masked_frames),
    "2d-dropout": (_conv_lstm_2d_dropout, [(2, 1, 5, 5, 2), (1, 4, 5, 5, 2)], _video),
    "3d": (_conv_lstm_3d, [(2, 2, 3, 4, 3, 1), (1, 4, 4, 3, 5, 1)], _video),
}


@pytest.mark.parametrize("name", CONV_LSTMS)
def test_conv_lstm_layers_loop_in_the_artifact(name, tmp_path):
    build, shapes, sample = CONV_LSTMS[name]
    keras.utils.set_random_seed(1)
    model = build()
    session = _keras_export(model, sample(shapes[0], 0), tmp_path)
    for seed, shape in enumerate(shapes):
        diff = _max_diff(session, model, sample(shape, seed + 1))
        assert diff <= TOLERANCE, (shape, diff)


# The keras activations the exported loop writes out in TorchScript (docs/export.md lists them).
LOOP_ACTIVATIONS = [
    "elu", "exponential", "gelu", "hard_sigmoid", "hard_silu", "linear", "relu", "relu6",
    "selu", "sigmoid", "silu", "softplus", "softsign", "tanh",
]  # fmt: skip


def test_every_activation_the_exported_loop_knows_matches_keras(tmp_path):
    names = LOOP_ACTIVATIONS
    pairs = list(zip(names[::2], names[1::2] + names[:1]))
    keras.utils.set_random_seed(2)
    inputs = keras.Input((None, 5, 2))
    x = inputs
    for act, rec_act in pairs:
        x = kzoo.layers.ConvLSTM1D(
            2,
            2,
            padding="same",
            activation=act,
            recurrent_activation=rec_act,
            return_sequences=True,
            name=f"{act}_{rec_act}",
        )(x)
    model = keras.Model(inputs, x)
    session = _keras_export(model, _video((1, 2, 5, 2)), tmp_path)
    for steps in (2, 4):
        diff = _max_diff(session, model, _video((2, steps, 5, 2), seed=steps))
        assert diff <= TOLERANCE, (steps, diff)
    from kzoo.backends.torch.conv_lstm_traced import activation_names

    assert activation_names() == LOOP_ACTIVATIONS  # the list the error message gives


@keras.saving.register_keras_serializable(package="kzoo_tests")
def _leaky(x):
    return keras.ops.leaky_relu(x, 0.1)


def test_an_activation_without_a_scripted_form_fails_loudly_unless_time_is_fixed(tmp_path):
    keras.utils.set_random_seed(3)
    inputs = keras.Input((None, 4, 4, 2), name="frames")
    model = keras.Model(
        inputs, kzoo.layers.ConvLSTM2D(2, 3, padding="same", activation=_leaky)(inputs)
    )
    sample = _video((1, 3, 4, 4, 2))
    model(sample)
    with pytest.raises(ValueError, match=r"_leaky.*fixed_sizes=\{'time': T\}"):
        keras.Model.export(model, str(tmp_path / "free.onnx"), format="onnx", verbose=False)
    # kzoo's export knows the time axis must be fixed, and fixes it: right at that length, and
    # ONNX Runtime refuses any other.
    signature = export.signature_for(model)
    assert signature.eager_dims == ("time",)
    assert export.fixed_dims(signature, "onnx") == ("time",)
    path = export.export_model(model, tmp_path / "fixed.onnx", "onnx", fixed_sizes={"time": 3})
    session = _session(path)
    assert _max_diff(session, model, _video((2, 3, 4, 4, 2), seed=1)) <= TOLERANCE
    with pytest.raises(Exception, match="frames"):
        session.run(None, {"frames": _video((2, 4, 4, 4, 2))})


def test_kernels_off_exports_the_loop_too(tmp_path, monkeypatch):
    """With KZOO_KERNELS=off the ConvLSTM runs keras.ops.scan, a Python loop on torch; a traced
    export must still get the scripted loop."""
    monkeypatch.setenv("KZOO_KERNELS", "off")
    keras.utils.set_random_seed(4)
    inputs = keras.Input((None, 5, 5, 2))
    model = keras.Model(inputs, kzoo.layers.ConvLSTM2D(3, 3, padding="same")(inputs))
    session = _keras_export(model, _video((1, 2, 5, 5, 2)), tmp_path)
    for steps in (1, 3):
        assert _max_diff(session, model, _video((2, steps, 5, 5, 2), seed=steps)) <= TOLERANCE


def _sequence_model(layer, two_inputs=False):
    inputs = keras.Input((None, 16))
    hidden = keras.layers.Dense(16)(inputs)
    return keras.Model(inputs, layer(hidden, hidden) if two_inputs else layer(hidden))


SEQUENCE_LAYERS = {
    "LayerNormalization": lambda: _sequence_model(kzoo.layers.LayerNormalization()),
    # torch.onnx's TorchScript exporter has no aten::rms_norm: the traced graph spells it out.
    "RMSNormalization": lambda: _sequence_model(kzoo.layers.RMSNormalization()),
    "Dropout": lambda: _sequence_model(kzoo.layers.Dropout(0.3)),
    "ContextParallelAttention": lambda: _sequence_model(
        kzoo.layers.ContextParallelAttention(
            num_heads=4, key_dim=4, num_key_value_heads=2, causal=True
        ),
        two_inputs=True,
    ),
}


@pytest.mark.parametrize("name", SEQUENCE_LAYERS)
def test_sequence_layers_are_right_at_every_length(name, tmp_path):
    keras.utils.set_random_seed(5)
    model = SEQUENCE_LAYERS[name]()
    rng = np.random.default_rng(0)
    sample = rng.normal(size=(1, 3, 16)).astype("float32")
    session = _keras_export(model, sample, tmp_path)
    for shape in ((2, 5, 16), (3, 9, 16), (1, 1, 16)):
        diff = _max_diff(session, model, rng.normal(size=shape).astype("float32"))
        assert diff <= TOLERANCE, (shape, diff)


def test_detr_head_is_right_at_every_feature_map_size(tmp_path):
    keras.utils.set_random_seed(6)
    features = keras.Input((None, None, 8))
    mask = keras.Input((None, None), dtype="bool")
    head = kzoo.models.DETRHead(
        num_classes=3, num_queries=5, d_model=16, num_heads=2, num_encoder_layers=1,
        num_decoder_layers=2, ffn_dim=16,
    )  # fmt: skip
    model = keras.Model([features, mask], head(features, mask))
    rng = np.random.default_rng(0)

    def sample(batch, height, width):
        valid = np.ones((batch, height, width), bool)
        valid[-1, :, width - 1 :] = False  # the last image is narrower
        return [rng.normal(size=(batch, height, width, 8)).astype("float32"), valid]

    session = _keras_export(model, sample(1, 2, 2), tmp_path)
    for size in ((2, 3, 4), (1, 5, 2), (3, 4, 4)):
        diff = _max_diff(session, model, sample(*size))
        assert diff <= TOLERANCE, (size, diff)
