"""ScaledAdamW: AdamW with a per-variable learning-rate scale, against a numpy AdamW."""

import keras
import numpy as np
import pytest

from kzoo.backends import dispatch
from kzoo.models.detr.training.optimizer import ScaledAdamW, update_portable


def numpy_adamw(param, grads, lr, wd, beta1=0.9, beta2=0.999, eps=1e-7):
    """torch.optim.AdamW's update (decay first, bias-corrected moments); keras' epsilon."""
    p = param.astype(np.float64)
    m = np.zeros_like(p)
    v = np.zeros_like(p)
    for t, g in enumerate(grads, start=1):
        p = p * (1 - lr * wd)
        m = beta1 * m + (1 - beta1) * g
        v = beta2 * v + (1 - beta2) * g * g
        m_hat = m / (1 - beta1**t)
        v_hat = v / (1 - beta2**t)
        p = p - lr * m_hat / (np.sqrt(v_hat) + eps)
    return p


def test_scaled_learning_rate_and_decay_per_variable():
    rng = np.random.default_rng(0)
    layer_a = keras.layers.Dense(3, name="backbone")  # path "backbone/kernel"
    layer_b = keras.layers.Dense(3, name="head")
    layer_a.build((None, 4))
    layer_b.build((None, 4))
    variables = [layer_a.kernel, layer_b.kernel]
    start = [np.array(v) for v in variables]
    grads = [[rng.normal(size=(4, 3)).astype("float32") for _ in range(3)] for _ in variables]
    opt = ScaledAdamW(1e-2, weight_decay=0.1, learning_rate_scales={r"^backbone/": 0.1})
    for step in range(3):
        opt.apply([keras.ops.convert_to_tensor(g[step]) for g in grads], variables)
    for v, p0, g, scale in zip(variables, start, grads, (0.1, 1.0)):
        expected = numpy_adamw(p0, g, 1e-2 * scale, 0.1)
        # Adam's sqrt(v) and float32 give ~1e-7 relative differences.
        np.testing.assert_allclose(np.array(v), expected, rtol=1e-5, atol=1e-6)
    assert opt.scale_for("backbone/kernel") == 0.1 and opt.scale_for("head/kernel") == 1.0


def _trained(seed, per_variable, amsgrad=False):
    """Two layers' variables after five clipped steps of a ScaledAdamW with a decaying rate."""
    rng = np.random.default_rng(seed)
    layers = [keras.layers.Dense(5, name="backbone"), keras.layers.Dense(3, name="head")]
    for layer, n in zip(layers, (4, 5)):
        layer.build((None, n))
        for v in layer.weights:
            v.assign(rng.normal(size=v.shape).astype("float32"))
    variables = [v for layer in layers for v in layer.weights]
    start = [keras.ops.convert_to_numpy(v) for v in variables]
    schedule = keras.optimizers.schedules.ExponentialDecay(1e-2, 2, 0.5)
    opt = ScaledAdamW(
        schedule,
        weight_decay=0.1,
        learning_rate_scales={r"^backbone/": 0.1},
        global_clipnorm=0.5,
        amsgrad=amsgrad,
    )
    if per_variable:
        opt._backend_update_step = lambda g, v, lr: update_portable(opt, g, v, lr)
    for _ in range(5):
        grads = [rng.normal(size=v.shape).astype("float32") * 3 for v in variables]
        opt.apply([keras.ops.convert_to_tensor(g) for g in grads], variables)
    return start, [keras.ops.convert_to_numpy(v) for v in variables]


@pytest.mark.parametrize("amsgrad", [False, True])
def test_dispatched_update_matches_the_per_variable_update(amsgrad):
    # On torch the dispatch picks the multi-tensor update (kzoo/backends/torch/scaled_adamw.py);
    # it must give keras's per-variable arithmetic, scale groups, decay and schedule included.
    start, ours = _trained(5, per_variable=False, amsgrad=amsgrad)
    _, theirs = _trained(5, per_variable=True, amsgrad=amsgrad)
    for a, b, s in zip(ours, theirs, start):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
        # Not vacuous: every variable moved by more than the tolerance.
        assert np.abs(a - s).max() > 1e-4


@pytest.mark.backends("torch")
def test_torch_takes_the_multi_tensor_update():
    assert dispatch.select("scaled_adamw_update").name == "torch-foreach"
    assert dispatch.select("clip_by_global_norm").name == "torch-foreach"


def test_config_round_trip_and_validation():
    opt = ScaledAdamW(3e-4, weight_decay=0.01, learning_rate_scales={"a": 0.5}, global_clipnorm=1)
    restored = ScaledAdamW.from_config(opt.get_config())
    assert restored.decoupled_weight_decay == 0.01
    assert restored.learning_rate_scales == {"a": 0.5}
    assert restored.global_clipnorm == 1
    with pytest.raises(ValueError, match="weight_decay"):
        ScaledAdamW(weight_decay=-1)
    with pytest.raises(ValueError, match="regular expression"):
        ScaledAdamW(learning_rate_scales={"(": 0.1})
    with pytest.raises(ValueError, match="learning_rate_scales"):
        ScaledAdamW(learning_rate_scales={"a": -0.1})


@pytest.mark.parametrize("impl", ["portable", "dispatched"])
def test_global_clipping_matches_keras_and_survives_huge_gradients(impl):
    from keras.src.optimizers.base_optimizer import clip_by_global_norm as keras_clip

    from kzoo.models.detr.training import optimizer
    from kzoo.models.detr.training.optimizer import global_norm

    # "dispatched": what ScaledAdamW runs on this backend (multi-tensor on torch), on tensors.
    if impl == "portable":
        clip_by_global_norm = optimizer.clip_by_global_norm
    else:
        clip = dispatch.select(optimizer.CLIP_OP).load()

        def clip_by_global_norm(values, norm):
            return clip([keras.ops.convert_to_tensor(v) for v in values], norm)

    rng = np.random.default_rng(3)
    grads = [rng.normal(size=s).astype("float32") for s in ((4, 3), (3,), (2, 2, 5))]
    expected = np.sqrt(sum(float((g.astype(np.float64) ** 2).sum()) for g in grads))
    np.testing.assert_allclose(keras.ops.convert_to_numpy(global_norm(grads)), expected, rtol=1e-6)
    ours = clip_by_global_norm(grads, 0.1)
    theirs = keras_clip([keras.ops.convert_to_tensor(g) for g in grads], 0.1)
    for a, b in zip(ours, theirs):
        np.testing.assert_allclose(
            keras.ops.convert_to_numpy(a), keras.ops.convert_to_numpy(b), rtol=1e-5, atol=1e-9
        )
    # Gradients whose squares overflow float32 (keras: inf norm, then NaN everywhere).
    huge = [g * np.float32(1e20) for g in grads]
    clipped = [keras.ops.convert_to_numpy(c) for c in clip_by_global_norm(huge, 0.1)]
    total = np.sqrt(sum(float((c.astype(np.float64) ** 2).sum()) for c in clipped))
    np.testing.assert_allclose(total, 0.1, rtol=1e-5)
    for c, g in zip(clipped, grads):
        np.testing.assert_allclose(c, g * (0.1 / expected), rtol=1e-4, atol=1e-12)
    # A NaN gradient stays visible.
    bad = [grads[0], np.full((3,), np.nan, "float32")]
    assert np.isnan(keras.ops.convert_to_numpy(clip_by_global_norm(bad, 0.1)[0])).all()
    # All-zero gradients stay zero.
    zeros = [np.zeros((2, 2), "float32")]
    assert not keras.ops.convert_to_numpy(clip_by_global_norm(zeros, 0.1)[0]).any()


def test_detr_step_on_a_blank_image_keeps_weights_finite():
    from kzoo.models import DETR

    model = DETR(
        num_classes=2,
        num_queries=5,
        d_model=16,
        num_heads=4,
        num_encoder_layers=1,
        num_decoder_layers=2,
        ffn_dim=24,
        backbone="small",
    )
    model.compile()
    x = np.random.default_rng(0).normal(size=(2, 64, 64, 3)).astype("float32")
    x[0] = 0.0
    y = {
        "boxes": np.full((2, 2, 4), 0.3, "float32"),
        "labels": np.array([[0, -1], [1, 0]], "int32"),
    }
    model.train_on_batch(x, y)
    bad = [
        p
        for p, v in model.weights_by_path().items()
        if not np.isfinite(keras.ops.convert_to_numpy(v)).all()
    ]
    assert not bad, bad[:5]
