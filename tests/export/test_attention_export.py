"""The query-blocked attention (``kzoo.ops.attention``) inside exported artifacts.

DETR's own exports leave the image size free, so their attention is keras's; with the sizes
fixed (``fixed_sizes``, or a model of static shape) the traced graph holds the blocked loop.
Each format this backend writes gets a DETR attention layer over 520 tokens with key padding,
exported with every size fixed, run in its runtime and compared with the keras model.
"""

import keras
import numpy as np
import pytest

from kzoo import export
from kzoo.backends import environment
from kzoo.backends.common.attention import MIN_QUERIES
from kzoo.export import runtimes
from kzoo.models.detr.model.transformer import DETRAttention
from kzoo.ops import attention

pytestmark = pytest.mark.backends("jax", "tensorflow")
BACKEND = keras.backend.backend()
BLOCKED = {"jax": "jax-query-blocks", "tensorflow": "tensorflow-query-blocks"}
TOKENS = MIN_QUERIES + 8


# jax2onnx's trace takes over 10 s on a 2-core machine: with the other heavy JAX exports, in
# the slow step.
FORMATS = [
    pytest.param(f, marks=[pytest.mark.slow] if (BACKEND, f) == ("jax", "onnx") else [])
    for f in export.supported_formats(BACKEND)
]


@pytest.mark.parametrize("format", FORMATS)
def test_blocked_attention_exports_and_matches_keras(format, tmp_path, monkeypatch):
    if environment.platform() != "cpu":
        pytest.skip("the blocked implementations are registered for the CPU")
    keras.utils.set_random_seed(0)
    x = keras.Input(batch_shape=(1, TOKENS, 32), name="x")
    keep = keras.Input(batch_shape=(1, TOKENS), name="keep")
    model = keras.Model({"x": x, "keep": keep}, {"y": DETRAttention(32, 4)(x, x, x, keep)})
    rng = np.random.default_rng(0)
    inputs = {"x": rng.normal(size=(1, TOKENS, 32)).astype("float32")}
    inputs["keep"] = (np.arange(TOKENS) < TOKENS - 100).astype("float32")[None]
    want = keras.ops.convert_to_numpy(model(inputs)["y"])

    chosen = []
    plan = attention._make_plan

    def watched(*args):
        found = plan(*args)
        chosen.append(found[0].name)
        return found

    monkeypatch.setattr(attention, "_make_plan", watched)
    attention._PLANS.clear()  # the eager call above planned this signature already
    suffix = {"saved_model": "", "onnx": ".onnx", "litert": ".tflite"}[format]
    path = export.export_model(
        model, str(tmp_path / f"artifact{suffix}"), format, fixed_sizes={"batch": 1}
    )
    assert chosen and set(chosen) == {BLOCKED[BACKEND]}
    got = runtimes.load(path, format)(inputs)["y"]
    assert got.shape == want.shape
    assert np.max(np.abs(got - want)) <= export.TOLERANCES[format]
