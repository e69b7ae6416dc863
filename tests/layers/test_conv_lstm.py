"""kzoo's ConvLSTM layers against keras.layers.ConvLSTM{1,2,3}D: outputs and gradients."""

import os

import keras
import numpy as np
import pytest

from kzoo.backends import dispatch
from kzoo.layers import ConvLSTM1D, ConvLSTM2D, ConvLSTM3D
from kzoo.layers import conv_lstm as conv_lstm_module

# On JAX every test that runs a layer eagerly or fits a model pays XLA compilations (tens of
# seconds on this shared 2-core machine): those run on JAX in the slow step (which runs under
# JAX) and in the per-backend runs of TensorFlow and torch.
slow_on_jax = pytest.mark.slow if keras.backend.backend() == "jax" else (lambda f: f)


KZOO = {1: ConvLSTM1D, 2: ConvLSTM2D, 3: ConvLSTM3D}
KERAS = {1: keras.layers.ConvLSTM1D, 2: keras.layers.ConvLSTM2D, 3: keras.layers.ConvLSTM3D}
SPATIAL = {1: (7,), 2: (6, 5), 3: (4, 5, 3)}
TOL = 1e-5


def _np(x):
    return keras.ops.convert_to_numpy(x)


def _inputs(rank, data_format, batch=2, steps=3, channels=2, seed=0):
    rng = np.random.default_rng(seed)
    spatial = SPATIAL[rank]
    shape = (batch, steps) + (
        (channels,) + spatial if data_format == "channels_first" else spatial + (channels,)
    )
    return rng.normal(size=shape).astype("float32")


def _pair(rank, filters=3, kernel_size=3, **kwargs):
    ours = KZOO[rank](filters, kernel_size, **kwargs)
    theirs = KERAS[rank](filters, kernel_size, **kwargs)
    return ours, theirs


def _build_same(ours, theirs, x, **call_kwargs):
    # build() rather than a first call: an eager call costs a compilation on JAX.
    theirs.build(x.shape)
    ours.build(x.shape)
    weights = theirs.get_weights()
    # Random bias, so that a gate-order mix-up cannot hide behind the zero/one init.
    weights[-1] = np.random.default_rng(1).normal(size=weights[-1].shape).astype("float32")
    theirs.set_weights(weights)
    ours.set_weights(weights)


def _outputs_and_grads(layer, x, call_kwargs):
    """Outputs of ``layer(x)`` and the gradients of a weighted sum of them with respect to x
    and every trainable weight."""
    backend = keras.backend.backend()

    def weighted_sum(outs):
        outs = outs if isinstance(outs, (list, tuple)) else [outs]
        total = 0.0
        for index, o in enumerate(outs):
            # Upstream gradients in [-0.25, 0.25] keep the weight gradients (sums over every
            # output) around 1-10, where an absolute 1e-5 is a float32-sized tolerance.
            rng = np.random.default_rng(5 + index)
            w = rng.uniform(-0.25, 0.25, size=tuple(o.shape)).astype("float32")
            total = total + keras.ops.sum(keras.ops.multiply(o, keras.ops.convert_to_tensor(w)))
        return total

    if backend == "jax":
        import jax

        trainable = [v.value for v in layer.trainable_variables]
        non_trainable = [v.value for v in layer.non_trainable_variables]

        def loss_fn(tv, xin):
            outs, _ = layer.stateless_call(tv, non_trainable, xin, **call_kwargs)
            return weighted_sum(outs), outs

        grad_fn = jax.jit(jax.value_and_grad(loss_fn, argnums=(0, 1), has_aux=True))
        (_, outs), (grads_w, grad_x) = grad_fn(trainable, x)
        return outs, [grad_x] + list(grads_w)
    if backend == "tensorflow":
        import tensorflow as tf

        xt = tf.constant(x)
        with tf.GradientTape() as tape:
            tape.watch(xt)
            outs = layer(xt, **call_kwargs)
            loss = weighted_sum(outs)
        grads = tape.gradient(loss, [xt] + list(layer.trainable_variables))
        return outs, grads
    import torch

    xt = torch.tensor(x, requires_grad=True)
    outs = layer(xt, **call_kwargs)
    loss = weighted_sum(outs)
    params = [v.value for v in layer.trainable_variables]
    grads = torch.autograd.grad(loss, [xt] + params)
    return outs, grads


def _assert_close(a, b, tol=TOL):
    a = a if isinstance(a, (list, tuple)) else [a]
    b = b if isinstance(b, (list, tuple)) else [b]
    assert len(a) == len(b)
    for u, v in zip(a, b):
        u, v = _np(u), _np(v)
        assert u.shape == v.shape
        np.testing.assert_allclose(u, v, atol=tol, rtol=0)


def _check_parity(rank, data_format, layer_kwargs, call_kwargs=None, x=None):
    call_kwargs = call_kwargs or {}
    x = _inputs(rank, data_format) if x is None else x
    ours, theirs = _pair(rank, data_format=data_format, **layer_kwargs)
    _build_same(ours, theirs, x, **call_kwargs)
    out_ours, grads_ours = _outputs_and_grads(ours, x, call_kwargs)
    out_theirs, grads_theirs = _outputs_and_grads(theirs, x, call_kwargs)
    _assert_close(out_ours, out_theirs)
    _assert_close(grads_ours, grads_theirs)
    return out_ours


# Few cases, each covering several options, to keep the file fast on JAX (each case compiles).
CASES = [
    (2, "channels_last", dict(padding="same", return_sequences=True, return_state=True)),
    (2, "channels_first", dict(padding="valid", dilation_rate=(2, 1), go_backwards=True)),
    (
        2,
        "channels_last",
        dict(padding="same", strides=2, kernel_size=2, go_backwards=True, return_sequences=True),
    ),
    (
        2,
        "channels_first",
        dict(
            padding="same",
            use_bias=False,
            activation="relu",
            unit_forget_bias=False,
            return_state=True,
        ),
    ),
    (1, "channels_last", dict(padding="valid", dilation_rate=2, return_sequences=True)),
    (1, "channels_first", dict(padding="same", kernel_size=2, return_state=True)),
    (3, "channels_last", dict(padding="same", kernel_size=2, return_sequences=True)),
    # channels_first 3D convolutions are very slow on TensorFlow's CPU; rank 3 runs channels_last.
    (
        3,
        "channels_last",
        dict(padding="valid", kernel_size=2, go_backwards=True, return_state=True),
    ),
]


def _cases():
    # Each case compiles four functions on JAX (~10 s on this 2-core machine), so the JAX run
    # keeps the first two here and leaves the rest to the slow step, which runs under JAX.
    slow_on_jax = keras.backend.backend() == "jax"
    return [
        pytest.param(*case, marks=[pytest.mark.slow] if slow_on_jax and i >= 2 else [])
        for i, case in enumerate(CASES)
    ]


@pytest.mark.parametrize("rank,data_format,kwargs", _cases())
def test_matches_keras_outputs_and_gradients(rank, data_format, kwargs):
    kwargs = dict(kwargs)
    kernel_size = kwargs.pop("kernel_size", 3)
    _check_parity(rank, data_format, dict(kernel_size=kernel_size, **kwargs))


MASK = np.array([[False, True, True, True], [True, False, True, False], [True, True, True, True]])


# keras's own ConvLSTM fails with a mask on JAX (its jax rnn broadcasts the (batch, 1) mask
# against the rank-4 state); there the next test checks the semantics against compacted inputs.
@pytest.mark.backends("tensorflow", "torch")
@pytest.mark.parametrize(
    "data_format,go_backwards,return_sequences",
    [("channels_last", False, True), ("channels_first", True, False)],
)
def test_mask_matches_keras(data_format, go_backwards, return_sequences):
    x = _inputs(2, data_format, batch=3, steps=4)
    _check_parity(
        2,
        data_format,
        dict(
            padding="same",
            return_sequences=return_sequences,
            go_backwards=go_backwards,
            return_state=True,
        ),
        call_kwargs={"mask": MASK},
        x=x,
    )


def test_masked_steps_are_skipped():
    # A masked step leaves the state alone and repeats the previous output (zeros before the
    # first unmasked step): the same as running keras's layer on the unmasked steps only.
    x = _inputs(2, "channels_last", batch=3, steps=4)
    ours = ConvLSTM2D(3, 3, padding="same", return_sequences=True, return_state=True)
    theirs = keras.layers.ConvLSTM2D(3, 3, padding="same", return_sequences=True, return_state=True)
    _build_same(ours, theirs, x)
    seq, h, c = (_np(t) for t in ours(x, mask=MASK))
    for b in range(3):
        kept = x[b : b + 1, MASK[b]]
        ref_seq, ref_h, ref_c = (_np(t) for t in theirs(kept))
        expected, prev, k = [], np.zeros_like(ref_seq[0, 0]), 0
        for t in range(4):
            if MASK[b, t]:
                prev = ref_seq[0, k]
                k += 1
            expected.append(prev)
        np.testing.assert_allclose(seq[b], np.stack(expected), atol=TOL)
        np.testing.assert_allclose(h[b], ref_h[0], atol=TOL)
        np.testing.assert_allclose(c[b], ref_c[0], atol=TOL)


@slow_on_jax
def test_initial_state_matches_keras():
    x = _inputs(2, "channels_last")
    ours, theirs = _pair(2, padding="same", return_state=True)
    _build_same(ours, theirs, x)
    rng = np.random.default_rng(3)
    state = [rng.normal(size=(2, 6, 5, 3)).astype("float32") for _ in range(2)]
    _assert_close(ours(x, initial_state=state), theirs(x, initial_state=state))


def test_stateful_matches_keras_and_resets():
    x1 = _inputs(2, "channels_last", seed=1)
    x2 = _inputs(2, "channels_last", seed=2)
    ours, theirs = _pair(2, padding="same", stateful=True)
    _build_same(ours, theirs, x1)
    ours.reset_state()
    theirs.reset_state()
    first = _np(ours(x1))
    _assert_close(first, theirs(x1))
    second = _np(ours(x2))
    _assert_close(second, theirs(x2))
    # The state carried over: the same batch again gives a different result until reset.
    assert np.abs(_np(ours(x1)) - first).max() > 1e-3
    ours.reset_state()
    _assert_close(ours(x1), first)
    # States are not weights, as in keras.
    assert len(ours.get_weights()) == len(theirs.get_weights()) == 3


@slow_on_jax
def test_dropout_same_masks_as_keras_with_the_same_seed():
    x = _inputs(2, "channels_last", steps=4)
    kwargs = dict(padding="same", dropout=0.4, recurrent_dropout=0.3, seed=11)
    ours, theirs = _pair(2, return_sequences=True, **kwargs)
    # Both draw the same masks from equal seeds, in training and (unused) in inference calls.
    _build_same(ours, theirs, x)
    _assert_close(ours(x), theirs(x))
    train = _np(ours(x, training=True))
    _assert_close(train, theirs(x, training=True))
    _assert_close(ours(x, training=True), theirs(x, training=True))
    # Dropout is active in training and off in inference.
    infer = _np(ours(x, training=False))
    plain = KZOO[2](3, 3, padding="same", return_sequences=True)
    plain(x)
    plain.set_weights(ours.get_weights())
    _assert_close(infer, plain(x))
    assert np.abs(train - infer).max() > 1e-3


@slow_on_jax
def test_dropout_masks_fixed_over_the_sequence():
    # Constant inputs, a 1x1 kernel, no recurrent kernel and a closed forget gate: with the
    # input masks fixed for the sequence every gate is constant in time, so each pixel's
    # output is the same at every step; masks redrawn per step would make it change.
    layer = ConvLSTM2D(1, 1, dropout=0.5, seed=3, return_sequences=True, unit_forget_bias=False)
    x = np.ones((1, 6, 8, 8, 1), "float32")
    layer.build(x.shape)
    layer.set_weights(
        [
            np.ones((1, 1, 1, 4), "float32"),
            np.zeros((1, 1, 1, 4), "float32"),
            np.array([0.0, -100.0, 0.0, 0.0], "float32"),
        ]
    )
    out = _np(layer(x, training=True))[0, ..., 0]  # (time, 8, 8)
    np.testing.assert_allclose(out, np.broadcast_to(out[0], out.shape), atol=1e-6)
    assert len(np.unique(np.round(out[0], 5))) > 1  # dropout did act


def test_weights_match_keras_names_and_files(tmp_path):
    x = _inputs(2, "channels_last")
    ours, theirs = _pair(2, padding="same")
    _build_same(ours, theirs, x)
    assert [w.name for w in ours.weights] == [w.name for w in theirs.weights]
    assert [tuple(w.shape) for w in ours.weights] == [tuple(w.shape) for w in theirs.weights]
    # A keras model's weights file loads into the same model built with kzoo's layer.
    ref = keras.Sequential([keras.Input((3, 6, 5, 2)), keras.layers.ConvLSTM2D(3, 3)])
    path = str(tmp_path / "ref.weights.h5")
    ref.save_weights(path)
    mine = keras.Sequential([keras.Input((3, 6, 5, 2)), ConvLSTM2D(3, 3)])
    mine.load_weights(path)
    _assert_close(mine(x), ref(x))


def test_unit_forget_bias_initialisation():
    layer = ConvLSTM2D(4, 3)
    layer.build((None, 2, 5, 5, 1))
    bias = _np(layer.cell.bias)
    np.testing.assert_array_equal(bias, np.r_[np.zeros(4), np.ones(4), np.zeros(8)])


def test_serialization_round_trip(tmp_path):
    x = _inputs(2, "channels_last")
    inputs = keras.Input((None, 6, 5, 2))
    outputs = ConvLSTM2D(3, 3, padding="same", return_sequences=True, dropout=0.1)(inputs)
    model = keras.Model(inputs, outputs)
    path = str(tmp_path / "m.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert isinstance(loaded.layers[1], ConvLSTM2D)
    _assert_close(loaded(x), model(x))
    config = model.layers[1].get_config()
    clone = ConvLSTM2D.from_config(config)
    assert clone.get_config() == config


def test_any_frame_size_with_unknown_spatial_dims():
    inputs = keras.Input((None, None, None, 2))
    outputs = ConvLSTM2D(3, 3, padding="same", return_sequences=True)(inputs)
    model = keras.Model(inputs, outputs)
    for size in ((6, 5), (9, 4)):
        y = model(np.zeros((2, 3) + size + (2,), "float32"))
        assert tuple(y.shape) == (2, 3) + size + (3,)


@slow_on_jax
def test_fit_reduces_loss():
    x = _inputs(2, "channels_last", batch=8)
    y = np.tanh(x[:, -1, ..., :1])
    model = keras.Sequential(
        [keras.Input((3, 6, 5, 2)), ConvLSTM2D(4, 3, padding="same"), keras.layers.Conv2D(1, 1)]
    )
    model.compile(keras.optimizers.Adam(0.01), "mse")
    history = model.fit(x, y, epochs=8, batch_size=8, verbose=0)
    assert history.history["loss"][-1] < 0.9 * history.history["loss"][0]


@pytest.mark.backends("torch")
def test_torch_fast_path_is_selected_and_equals_portable(monkeypatch):
    x = _inputs(2, "channels_last")
    # Eager calls (concrete sizes; traced exports see tensors and take "torch-traced").
    concrete = tuple(x.shape)
    assert dispatch.select(conv_lstm_module.OP, shape=concrete).name == "torch-channels-first"
    layer = ConvLSTM2D(3, 2, padding="same", return_sequences=True, return_state=True)
    fast = layer(x)
    monkeypatch.setenv("KZOO_KERNELS", "off")
    assert dispatch.select(conv_lstm_module.OP, shape=concrete).name == "portable"
    _assert_close(layer(x), fast)


@pytest.mark.backends("tensorflow")
@pytest.mark.parametrize(
    "rank,data_format,kwargs",
    [
        (2, "channels_last", dict(padding="same", return_sequences=True, return_state=True)),
        (1, "channels_first", dict(padding="valid", kernel_size=2, go_backwards=True)),
        (3, "channels_last", dict(padding="same", kernel_size=2, return_state=True)),
        (2, "channels_last", dict(padding="same", return_state=True, steps=1)),
        (2, "channels_first", dict(padding="same", return_sequences=True, zero_state=True)),
        # Activations without a gradient-from-output kernel: differentiated by a tape.
        (
            2,
            "channels_last",
            dict(padding="same", activation="elu", recurrent_activation="hard_sigmoid"),
        ),
    ],
)
def test_tensorflow_fast_path_in_graph_mode_matches_keras(rank, data_format, kwargs):
    """The hand-written backward pass, traced as model.fit traces it (tf.function, unknown
    batch, time and spatial sizes), against keras's layer: outputs and the gradients with
    respect to the inputs, the initial state and every weight."""
    import tensorflow as tf

    assert dispatch.select(conv_lstm_module.OP).name == "tensorflow-custom-gradient"
    kwargs = dict(kwargs)
    kernel_size = kwargs.pop("kernel_size", 3)
    steps = kwargs.pop("steps", 4)
    # Without an initial state the fast path skips the first step's recurrent convolution.
    zero_state = kwargs.pop("zero_state", False)
    ours, theirs = _pair(rank, kernel_size=kernel_size, data_format=data_format, **kwargs)
    x = _inputs(rank, data_format, steps=steps)
    _build_same(ours, theirs, x)
    rng = np.random.default_rng(3)
    out = ours(x)
    h = out[1] if ours.return_state else (out[:, -1] if ours.return_sequences else out)
    state = [rng.normal(size=tuple(h.shape)).astype("float32") for _ in range(2)]

    def unknown_but_channels(shape, channel_axis):
        return tf.TensorSpec([n if i == channel_axis else None for i, n in enumerate(shape)])

    axis = 2 if data_format == "channels_first" else -1
    x_spec = unknown_but_channels(x.shape, axis % x.ndim)
    h_spec = unknown_but_channels(h.shape, (axis - 1 if axis > 0 else axis) % h.ndim)

    def run(layer):
        @tf.function(input_signature=[x_spec, h_spec, h_spec])
        def fn(xt, h0, c0):
            with tf.GradientTape() as tape:
                tape.watch([xt, h0, c0])
                # training=True: the hand-written backward pass (inference has none).
                outs = layer(xt, initial_state=None if zero_state else [h0, c0], training=True)
                outs = outs if isinstance(outs, (list, tuple)) else [outs]
                # Different upstream weights for every output element.
                loss = sum(
                    tf.reduce_sum(
                        o * tf.reshape(tf.sin(tf.range(tf.size(o), dtype=o.dtype)), tf.shape(o))
                    )
                    for o in outs
                )
            sources = [xt] + list(layer.trainable_variables) + ([] if zero_state else [h0, c0])
            return outs, tape.gradient(loss, sources)

        return fn(tf.constant(x), tf.constant(state[0]), tf.constant(state[1]))

    out_ours, grads_ours = run(ours)
    out_theirs, grads_theirs = run(theirs)
    _assert_close(out_ours, out_theirs)
    _assert_close(grads_ours, grads_theirs)


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(return_sequences=True, go_backwards=True),
        dict(data_format="channels_first", strides=2, padding="valid"),
        dict(dropout=0.5, training=True),
    ],
)
def test_per_step_input_conv_equals_the_hoisted_one(kwargs):
    """The export path for symbolic batch/time sizes (input convolution inside the loop)
    computes what the hoisted convolution computes."""
    from kzoo.backends.common import conv_lstm as portable

    kwargs = dict(kwargs)
    training = kwargs.pop("training", False)
    data_format = kwargs.get("data_format", "channels_last")
    layer = ConvLSTM2D(3, 3, seed=4, **kwargs)
    x = keras.ops.convert_to_tensor(_inputs(2, data_format, steps=4))
    layer.build(x.shape)
    masks = None
    if training:
        masks = [keras.random.dropout(keras.ops.ones_like(x[:, 0]), 0.5, seed=i) for i in range(4)]
    args = (x, layer.cell.kernel, layer.cell.recurrent_kernel, layer.cell.bias)
    config = layer._forward_config()
    hoisted = portable.conv_lstm_forward(*args, input_masks=masks, config=config)
    per_step = portable.conv_lstm_forward_per_step(*args, input_masks=masks, config=config)
    _assert_close(per_step, hoisted, tol=1e-6)


@pytest.mark.backends("jax")
def test_jax_selects_the_per_step_path_only_for_symbolic_batch_or_time():
    from jax import export as jax_export

    b, t = jax_export.symbolic_shape("b, t")
    symbolic = dispatch.select(conv_lstm_module.OP, dtype="float32", shape=(b, t, 6, 5, 2))
    concrete = dispatch.select(conv_lstm_module.OP, dtype="float32", shape=(2, 3, 6, 5, 2))
    assert symbolic.name == "jax-per-step-input-conv"
    assert concrete.name == "jax-unrolled"


@pytest.mark.backends("tensorflow")
@pytest.mark.parametrize("return_sequences", [False, True])
def test_tensorflow_inference_path_has_no_custom_gradient_and_same_numbers(return_sequences):
    """Inference graphs (what model.export traces) run the loop without tf.custom_gradient,
    computing exactly the training path's forward numbers."""
    import tensorflow as tf

    def selected(training):
        return dispatch.select(
            conv_lstm_module.OP, dtype="float32", shape=(None, None, 6, 5, 2), training=training
        ).name

    assert selected(True) == "tensorflow-custom-gradient"
    assert selected(False) == "tensorflow-inference"
    layer = ConvLSTM2D(4, 3, padding="same", return_sequences=return_sequences, return_state=True)
    x = _inputs(2, "channels_last", steps=4)
    layer.build(x.shape)
    spec = tf.TensorSpec((None, None, None, None, 2))

    def graph(training):
        fn = tf.function(lambda t: layer(t, training=training), input_signature=[spec])
        ops_in_graph = {op.type for op in fn.get_concrete_function().graph.get_operations()}
        return fn(tf.constant(x)), ops_in_graph

    (train_out, train_ops), (infer_out, infer_ops) = graph(True), graph(False)
    assert "IdentityN" in train_ops  # how tf.custom_gradient marks its function's outputs
    assert "IdentityN" not in infer_ops
    for a, b in zip(train_out, infer_out):
        np.testing.assert_array_equal(_np(a), _np(b))


@pytest.mark.backends("tensorflow")
def test_tensorflow_fast_path_equals_portable(monkeypatch):
    x = _inputs(2, "channels_first")
    layer = ConvLSTM2D(
        3, 2, padding="same", data_format="channels_first", return_sequences=True, return_state=True
    )
    fast = layer(x)
    monkeypatch.setenv("KZOO_KERNELS", "off")
    assert dispatch.select(conv_lstm_module.OP).name == "portable"
    _assert_close(layer(x), fast)


@pytest.mark.parametrize(
    "kwargs,name",
    [
        (dict(filters=0, kernel_size=3), "filters"),
        (dict(filters=-2, kernel_size=3), "filters"),
        (dict(filters=2.5, kernel_size=3), "filters"),
        (dict(filters=4, kernel_size=0), "kernel_size"),
        (dict(filters=4, kernel_size=(3, -1)), "kernel_size"),
        (dict(filters=4, kernel_size=(3, 3, 3)), "kernel_size"),
        (dict(filters=4, kernel_size=3, padding="full"), "padding"),
        (dict(filters=4, kernel_size=3, padding="causal"), "padding"),
        (dict(filters=4, kernel_size=3, strides=0), "strides"),
        (dict(filters=4, kernel_size=3, strides=2, dilation_rate=2), "dilation_rate"),
        (dict(filters=4, kernel_size=3, data_format="nhwc"), "data_format"),
        (dict(filters=4, kernel_size=3, dropout=1.5), "dropout"),
    ],
)
def test_bad_arguments_raise_value_error_naming_them(kwargs, name):
    with pytest.raises(ValueError, match=name):
        ConvLSTM2D(**kwargs)


def test_bad_inputs_raise_value_error():
    layer = ConvLSTM2D(3, 3)
    with pytest.raises(ValueError, match="inputs.*rank 5"):
        layer(np.zeros((2, 6, 5, 2), "float32"))
    with pytest.raises(ValueError, match="zero timesteps"):
        layer(np.zeros((2, 0, 6, 5, 2), "float32"))
    layer(np.zeros((2, 3, 6, 5, 2), "float32"))
    with pytest.raises(ValueError, match="inputs.*4 channels.*built for 2"):
        layer(np.zeros((2, 3, 6, 5, 4), "float32"))
    with pytest.raises(ValueError, match="smaller than the kernel"):
        ConvLSTM2D(3, 5)(np.zeros((1, 2, 3, 3, 1), "float32"))


def test_no_framework_imported_by_the_layer_module():
    # The torch fast path is imported lazily by the dispatch, only when selected.
    source = open(conv_lstm_module.__file__).read()
    assert "import torch" not in source and "import jax" not in source
    assert os.path.basename(conv_lstm_module.__file__) == "conv_lstm.py"


@pytest.mark.backends("jax")
def test_jax_unrolled_loop_is_selected_and_equals_the_scan(monkeypatch):
    from kzoo.backends.jax import conv_lstm as jax_conv_lstm

    concrete = (2, 3, 6, 5, 2)
    assert dispatch.select(conv_lstm_module.OP, shape=concrete).name == "jax-unrolled"
    x = _inputs(2, "channels_last")
    layer = ConvLSTM2D(3, 2, padding="same", return_sequences=True, return_state=True)
    unrolled = layer(x)
    # Past the unroll limit the same code keeps lax.scan.
    monkeypatch.setattr(jax_conv_lstm, "MAX_UNROLLED_STEPS", 0)
    _assert_close(layer(x), unrolled)
    monkeypatch.setenv("KZOO_KERNELS", "off")
    assert dispatch.select(conv_lstm_module.OP, shape=concrete).name == "portable"
    _assert_close(layer(x), unrolled)


@pytest.mark.backends("torch")
@pytest.mark.parametrize("go_backwards", [False, True])
@pytest.mark.parametrize("with_state", [False, True])
@pytest.mark.parametrize("per_step_weight_grad", [False, True])
@pytest.mark.parametrize("activation", ["relu", "tanh"])
def test_torch_hand_written_backward_equals_autograd(
    monkeypatch, go_backwards, with_state, per_step_weight_grad, activation
):
    import torch

    from kzoo.backends.torch import conv_lstm as torch_conv_lstm

    # Both ways of taking the recurrent kernel's gradient: one convolution over all steps
    # (small steps), or one per step (steps of PER_STEP_WEIGHT_GRAD_PIXELS positions or more).
    threshold = 1 if per_step_weight_grad else 10**9
    monkeypatch.setattr(torch_conv_lstm, "PER_STEP_WEIGHT_GRAD_PIXELS", threshold)

    calls = []
    forward = torch_conv_lstm._Recurrence.forward
    monkeypatch.setattr(
        torch_conv_lstm._Recurrence,
        "forward",
        staticmethod(lambda ctx, *a: calls.append(1) or forward(ctx, *a)),
    )
    x = torch.tensor(_inputs(2, "channels_last"), requires_grad=True)
    layer = ConvLSTM2D(
        3, 3, padding="same", activation=activation, go_backwards=go_backwards, return_state=True
    )
    layer(x)
    state = None
    if with_state:
        rng = np.random.default_rng(5)
        shape = (2, 6, 5, 3)
        state = [torch.tensor(rng.normal(size=shape).astype("float32"), requires_grad=True)]
        state.append(torch.tensor(rng.normal(size=shape).astype("float32"), requires_grad=True))

    def grads():
        out, h, c = layer(x, initial_state=state)
        loss = (out**2).sum() + (h * 0.5).sum() + (c**3).sum()
        return torch.autograd.grad(
            loss, [x, *(w.value for w in layer.trainable_weights)] + (state or [])
        )

    fast = grads()
    assert calls
    monkeypatch.setattr(torch_conv_lstm, "_FAST_ACTIVATIONS", {})
    calls.clear()
    slow = grads()
    assert not calls
    _assert_close(list(fast), list(slow))
