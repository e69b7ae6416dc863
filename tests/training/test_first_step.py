"""The optimizer is built before the first training step, so that the step is traced once."""

import keras
import numpy as np
import pytest

from kzoo.models import DETR, CausalLM, ColorFramePredictor, NextFramePredictor
from kzoo.training.first_step import OptimizerBuiltBeforeTracing


class CountingModel(OptimizerBuiltBeforeTracing, keras.Model):
    """A two-layer model that counts how often its ``train_step`` body runs."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.hidden = keras.layers.Dense(4, name="hidden")
        self.out = keras.layers.Dense(1, name="out")
        self.traces = 0

    def call(self, x):
        return self.out(self.hidden(x))

    def train_step(self, *args, **kwargs):
        self.traces += 1
        return super().train_step(*args, **kwargs)


def _data():
    rng = np.random.default_rng(0)
    return rng.normal(size=(4, 3)).astype("float32"), rng.normal(size=(4, 1)).astype("float32")


@pytest.mark.parametrize("method", ["fit", "train_on_batch"])
def test_one_batch_runs_the_step_body_once(method):
    # keras's TensorFlow trainer would build the optimizer inside the first trace, and
    # tf.function traces a step that created variables a second time: two runs of the body.
    x, y = _data()
    model = CountingModel()
    model(x)  # builds its layers
    model.compile(optimizer="adam", loss="mse")
    if method == "fit":
        model.fit(x, y, batch_size=4, epochs=1, verbose=0)
    else:
        model.train_on_batch(x, y)
    assert model.traces == 1
    assert model.optimizer.built
    # Two slots (Adam's moments) for each of the four weights: built for exactly those.
    slots = [v for v in model.optimizer.variables if v.path.split("/")[-1].endswith("momentum")]
    assert len(slots) == len(model.trainable_variables) == 4


def test_an_unbuilt_model_is_left_to_keras():
    # Its layers get their weights in the step: building the optimizer before would miss them.
    x, y = _data()
    model = CountingModel()
    model.compile(optimizer="adam", loss="mse")
    model._build_optimizer_before_tracing()
    assert not model.optimizer.built
    history = model.fit(x, y, batch_size=4, epochs=2, verbose=0)
    assert np.isfinite(history.history["loss"]).all()
    assert len(model.trainable_variables) == 4


def test_the_optimizer_state_is_what_keras_builds():
    # Same data, same seed: with and without the early build the weights after training match.
    x, y = _data()

    def train(mixin):
        keras.utils.set_random_seed(3)
        bases = (OptimizerBuiltBeforeTracing, keras.Sequential) if mixin else (keras.Sequential,)
        model = type("M", bases, {})(
            [keras.Input((3,)), keras.layers.Dense(2), keras.layers.Dense(1)]
        )
        model.compile(optimizer=keras.optimizers.AdamW(0.01), loss="mse")
        model.fit(x, y, batch_size=2, epochs=2, shuffle=False, verbose=0)
        return [np.asarray(keras.ops.convert_to_numpy(v)) for v in model.weights]

    for a, b in zip(train(True), train(False)):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)


def test_kzoo_models_build_their_optimizer_first():
    for cls in (DETR, NextFramePredictor, ColorFramePredictor, CausalLM):
        assert issubclass(cls, OptimizerBuiltBeforeTracing), cls
