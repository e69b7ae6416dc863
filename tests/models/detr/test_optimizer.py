"""ScaledAdamW: AdamW with a per-variable learning-rate scale, against a numpy AdamW."""

import keras
import numpy as np
import pytest

from kzoo.models.detr.optimizer import ScaledAdamW


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
