"""NextFramePredictor and ColorFramePredictor: training, serialization, presets, the shipped
preset against the copy-the-last-frame baseline."""

import os

import keras
import numpy as np
import pytest

from kzoo.data import moving_objects, next_frame_targets
from kzoo.layers import ConvLSTM2D
from kzoo.models import ColorFramePredictor, NextFramePredictor
from kzoo.models.conv_lstm import training
from kzoo.presets import preset_io

# On JAX every test that runs a layer eagerly or fits a model pays XLA compilations (tens of
# seconds on this shared 2-core machine): those run on JAX in the slow step (which runs under
# JAX) and in the per-backend runs of TensorFlow and torch.
slow_on_jax = pytest.mark.slow if keras.backend.backend() == "jax" else (lambda f: f)


TINY = dict(filters=(4, 4), kernel_sizes=(3, 1))


def _np(x):
    return keras.ops.convert_to_numpy(x)


@slow_on_jax
def test_next_frame_predictor_trains_and_round_trips(tmp_path):
    videos = moving_objects(8, num_frames=5, image_size=12, object_size=(3, 5), seed=0)
    x, y = next_frame_targets(videos, "sequence")
    model = NextFramePredictor(channels=1, head_kernel_size=1, **TINY)
    assert sum(isinstance(layer, ConvLSTM2D) for layer in model.layers) == 2
    assert isinstance(model.layers[-1], keras.layers.Conv3D)
    assert model.loss == "binary_crossentropy"
    history = model.fit(x, y, epochs=1, batch_size=4, verbose=0)
    assert np.isfinite(history.history["loss"]).all()
    pred = _np(model.predict(x, verbose=0))
    assert pred.shape == y.shape and pred.min() >= 0 and pred.max() <= 1
    model.save_to_preset(str(tmp_path / "p"))
    again = NextFramePredictor.from_preset(str(tmp_path / "p"))
    np.testing.assert_allclose(_np(again.predict(x, verbose=0)), pred, atol=1e-5)
    assert again.get_config() == model.get_config()


@slow_on_jax
def test_color_frame_predictor_defaults_and_keras_save(tmp_path):
    videos = moving_objects(8, num_frames=5, image_size=12, object_size=(3, 5), color=True)
    x, y = next_frame_targets(videos, "last")
    model = ColorFramePredictor(**TINY)
    assert model.loss == "mae"
    assert isinstance(model.optimizer, keras.optimizers.Adam)
    last = [layer for layer in model.layers if isinstance(layer, ConvLSTM2D)][-1]
    assert not last.return_sequences
    assert isinstance(model.layers[-1], keras.layers.Conv2D)
    history = model.fit(x, y, epochs=1, batch_size=4, verbose=0)
    assert "mae" in history.history
    pred = _np(model.predict(x, verbose=0))
    assert pred.shape == (8, 12, 12, 3)
    path = str(tmp_path / "m.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert isinstance(loaded, ColorFramePredictor)
    np.testing.assert_allclose(_np(loaded.predict(x, verbose=0)), pred, atol=1e-5)
    # Any frame size: the ConvLSTM layers need no static spatial shape.
    assert tuple(model(x[:, :, :8, :10]).shape) == (8, 8, 10, 3)


def test_bad_configs_and_inputs():
    with pytest.raises(ValueError, match="filters"):
        ColorFramePredictor(filters=(), kernel_sizes=())
    with pytest.raises(ValueError, match="kernel_sizes"):
        ColorFramePredictor(filters=(4, 4), kernel_sizes=(3,))
    with pytest.raises(ValueError, match="channels"):
        NextFramePredictor(channels=0)
    model = ColorFramePredictor(**TINY)
    with pytest.raises(ValueError, match="channels"):
        model(np.zeros((1, 3, 8, 8, 1), "float32"))
    with pytest.raises(ValueError, match="timesteps"):
        model(np.zeros((1, 0, 8, 8, 3), "float32"))


def test_shipped_preset_beats_copying_the_last_frame():
    preset_dir = preset_io.resolve_preset("convlstm_color_shapes")
    size = sum(os.path.getsize(os.path.join(preset_dir, f)) for f in os.listdir(preset_dir))
    assert size <= 5 * 1024 * 1024
    model = ColorFramePredictor.from_preset("convlstm_color_shapes")
    result = training.evaluate_against_copy_last(model, num_sequences=24, seed=123)
    assert result["model_mae"] < result["copy_last_mae"], result


def _manual_rollout(model, frames, steps, last_step_of_sequence):
    window, out = frames, []
    for _ in range(steps):
        pred = _np(model.predict(window, verbose=0))
        frame = pred[:, -1] if last_step_of_sequence else pred
        out.append(frame)
        window = np.concatenate([window[:, 1:], frame[:, None]], axis=1)
    return np.stack(out, axis=1)


@pytest.mark.parametrize("kind", ["color", "next"])
def test_rollout_equals_step_by_step_predict(kind):
    color = kind == "color"
    videos = moving_objects(3, num_frames=4, image_size=8, object_size=(2, 4), color=color)
    if color:
        model = ColorFramePredictor(filters=(4,), kernel_sizes=(3,), head_kernel_size=1)
    else:
        model = NextFramePredictor(channels=1, filters=(4,), kernel_sizes=(3,), head_kernel_size=1)
    out = model.rollout(videos, steps=3, batch_size=2)
    assert out.shape == (3, 3, 8, 8, 3 if color else 1) and out.dtype == np.float32
    ref = _manual_rollout(model, videos, 3, last_step_of_sequence=not color)
    np.testing.assert_allclose(out, ref, atol=1e-6)
    # The window slides: the second step sees frames 1..3 and the first prediction only.
    window = np.concatenate([videos[:, 1:], out[:, :1]], axis=1)
    np.testing.assert_allclose(model.rollout(window, steps=1)[:, 0], out[:, 1], atol=1e-6)


def test_rollout_rejects_bad_arguments():
    model = ColorFramePredictor(filters=(4,), kernel_sizes=(3,))
    frames = np.zeros((1, 2, 8, 8, 3), "float32")
    with pytest.raises(ValueError, match="steps"):
        model.rollout(frames, steps=0)
    with pytest.raises(ValueError, match="channels"):
        model.rollout(frames[..., :1], steps=1)
    with pytest.raises(ValueError, match="frames"):
        model.rollout(frames[0], steps=1)
    mono_out = ColorFramePredictor(output_channels=1, filters=(4,), kernel_sizes=(3,))
    with pytest.raises(ValueError, match="output_channels"):
        mono_out.rollout(frames, steps=2)


def test_shipped_presets_rollouts_beat_copying_the_last_frame_at_every_step():
    mse = {}
    for name in ("convlstm_color_shapes", "convlstm_color_shapes_rollout"):
        preset_dir = preset_io.resolve_preset(name)
        size = sum(os.path.getsize(os.path.join(preset_dir, f)) for f in os.listdir(preset_dir))
        assert size <= 5 * 1024 * 1024
        model = ColorFramePredictor.from_preset(name)
        x, future = training.synthetic_rollout_data(model, 32, 10, seed=321)
        pred = model.rollout(x, steps=10)
        mse[name] = np.mean((pred - future) ** 2, axis=(0, 2, 3, 4))
        copy_mse = np.mean((x[:, -1:] - future) ** 2, axis=(0, 2, 3, 4))
        assert (mse[name] < copy_mse).all(), (name, mse[name], copy_mse)
    # Training on its own rollouts lowered the MSE over the 10 steps.
    assert mse["convlstm_color_shapes_rollout"].mean() < 0.9 * mse["convlstm_color_shapes"].mean()
