"""kzoo.metrics video metrics against scikit-image's SSIM and float64 numpy references."""

import keras
import numpy as np
import pytest
from skimage.metrics import structural_similarity

from kzoo.metrics import (
    PSNR,
    SSIM,
    FrameMAE,
    FrameMSE,
    frame_psnr,
    frame_ssim,
    per_frame_metrics,
)

# On JAX the model tests pay XLA compilations (tens of seconds on a shared 2-core machine):
# they run there in the slow step.
slow_on_jax = pytest.mark.slow if keras.backend.backend() == "jax" else (lambda f: f)


def _np(x):
    return np.asarray(keras.ops.convert_to_numpy(x))


def _pair(rng, shape, max_val=1.0):
    """A frame and a noisy, shifted copy of it: SSIM well away from 0 and 1."""
    x = rng.uniform(0, max_val, size=shape)
    y = np.clip(
        0.7 * x + 0.3 * np.roll(x, 1, axis=-2) + rng.normal(0, 0.1 * max_val, shape), 0, max_val
    )
    return x.astype("float32"), y.astype("float32")


def _skimage_ssim(x, y, max_val):
    return structural_similarity(
        x.astype("float64"),
        y.astype("float64"),
        data_range=max_val,
        gaussian_weights=True,
        sigma=1.5,
        use_sample_covariance=False,
        channel_axis=-1,
    )


def _psnr64(x, y, max_val):
    mse = np.mean((x.astype("float64") - y.astype("float64")) ** 2)
    return 10 * np.log10(max_val**2 / mse)


@pytest.mark.parametrize(
    "shape,max_val", [((2, 3, 16, 16, 1), 1.0), ((3, 24, 20, 3), 1.0), ((2, 11, 13, 2), 255.0)]
)
def test_ssim_matches_skimage(shape, max_val):
    rng = np.random.default_rng(0)
    x, y = _pair(rng, shape, max_val)
    ours = _np(frame_ssim(x, y, max_val=max_val))
    assert ours.shape == shape[:-3]
    frames_x = x.reshape((-1,) + shape[-3:])
    frames_y = y.reshape((-1,) + shape[-3:])
    ref = np.array([_skimage_ssim(a, b, max_val) for a, b in zip(frames_x, frames_y)])
    assert 0.1 < ref.min() and ref.max() < 0.95
    np.testing.assert_allclose(ours.reshape(-1), ref, atol=1e-4)
    # Identical frames score exactly 1.
    np.testing.assert_allclose(_np(frame_ssim(x, x, max_val=max_val)), 1.0, atol=1e-5)


def test_psnr_mse_mae_match_float64_numpy():
    rng = np.random.default_rng(1)
    x, y = _pair(rng, (4, 5, 8, 8, 3))
    ref = np.array([[_psnr64(a, b, 1.0) for a, b in zip(va, vb)] for va, vb in zip(x, y)])
    np.testing.assert_allclose(_np(frame_psnr(x, y)), ref, atol=1e-4)
    np.testing.assert_allclose(_np(frame_psnr(x * 255, y * 255, max_val=255.0)), ref, atol=1e-3)
    scores = per_frame_metrics(x, y)
    d = x.astype("float64") - y.astype("float64")
    np.testing.assert_allclose(scores["mse"], np.mean(d**2, axis=(0, 2, 3, 4)), rtol=1e-5)
    np.testing.assert_allclose(scores["mae"], np.mean(np.abs(d), axis=(0, 2, 3, 4)), rtol=1e-5)
    np.testing.assert_allclose(scores["psnr"], ref.mean(axis=0), atol=1e-4)
    assert scores["psnr"].shape == (5,)
    # 8x8 frames are smaller than SSIM's window.
    assert np.isnan(scores["ssim"]).all()
    # An exact prediction: infinite PSNR, zero error.
    exact = per_frame_metrics(x[:, :2], x[:, :2])
    assert np.isinf(exact["psnr"]).all() and (exact["mse"] == 0).all()


def test_per_frame_metrics_per_step_ssim_and_single_frames():
    rng = np.random.default_rng(2)
    x, y = _pair(rng, (3, 4, 12, 12, 1))
    scores = per_frame_metrics(x, y, batch_size=2)
    ref = [np.mean([_skimage_ssim(x[b, t], y[b, t], 1.0) for b in range(3)]) for t in range(4)]
    np.testing.assert_allclose(scores["ssim"], ref, atol=1e-4)
    one = per_frame_metrics(x[:, 0], y[:, 0])
    assert {k: v.shape for k, v in one.items()} == {k: (1,) for k in scores}
    np.testing.assert_allclose(one["ssim"][0], scores["ssim"][0], atol=1e-6)


def test_metric_objects_average_frames_over_updates():
    rng = np.random.default_rng(3)
    x1, y1 = _pair(rng, (2, 3, 12, 12, 3))
    x2, y2 = _pair(rng, (1, 3, 12, 12, 3))
    frames_x = np.concatenate([x1, x2]).reshape(-1, 12, 12, 3)
    frames_y = np.concatenate([y1, y2]).reshape(-1, 12, 12, 3)
    refs = {
        FrameMSE: np.mean((frames_x - frames_y) ** 2),
        FrameMAE: np.mean(np.abs(frames_x - frames_y)),
        PSNR: np.mean([_psnr64(a, b, 1.0) for a, b in zip(frames_x, frames_y)]),
        SSIM: np.mean([_skimage_ssim(a, b, 1.0) for a, b in zip(frames_x, frames_y)]),
    }
    for cls, ref in refs.items():
        metric = cls()
        metric.update_state(x1, y1)
        metric.update_state(x2, y2)
        np.testing.assert_allclose(float(metric.result()), ref, rtol=1e-4, atol=1e-4)
        again = cls.from_config(metric.get_config())
        assert again.name == metric.name and again.max_val == metric.max_val
        assert (
            keras.saving.deserialize_keras_object(
                keras.saving.serialize_keras_object(metric)
            ).get_config()
            == metric.get_config()
        )
        metric.reset_state()
        assert float(metric.result()) == 0.0
    # A sample weight weighs whole sequences: weight 0 drops the first one.
    metric = PSNR()
    metric.update_state(x1, y1, sample_weight=np.array([0.0, 1.0], "float32"))
    ref = np.mean([_psnr64(a, b, 1.0) for a, b in zip(x1[1], y1[1])])
    np.testing.assert_allclose(float(metric.result()), ref, atol=1e-4)


@slow_on_jax
def test_metrics_in_compile_fit_and_evaluate():
    rng = np.random.default_rng(4)
    x = rng.uniform(0, 1, (4, 2, 12, 12, 1)).astype("float32")
    y = np.clip(x + rng.normal(0, 0.05, x.shape), 0, 1).astype("float32")
    model = keras.Sequential(
        [keras.Input((2, 12, 12, 1)), keras.layers.Conv3D(1, 1, activation="sigmoid")]
    )
    model.compile(
        optimizer="adam",
        loss="mse",
        metrics=[FrameMSE(), FrameMAE(), PSNR(), SSIM()],
    )
    history = model.fit(x, y, epochs=1, batch_size=2, verbose=0)
    for name in ("frame_mse", "frame_mae", "psnr", "ssim"):
        assert np.isfinite(history.history[name]).all(), name
    results = model.evaluate(x, y, batch_size=4, verbose=0, return_dict=True)
    pred = _np(model.predict(x, verbose=0))
    ref = per_frame_metrics(y, pred)
    np.testing.assert_allclose(results["frame_mse"], ref["mse"].mean(), rtol=1e-4)
    np.testing.assert_allclose(results["frame_mae"], ref["mae"].mean(), rtol=1e-4)
    np.testing.assert_allclose(results["psnr"], ref["psnr"].mean(), atol=1e-3)
    np.testing.assert_allclose(results["ssim"], ref["ssim"].mean(), atol=1e-4)


def test_bad_arguments():
    x = np.zeros((2, 16, 16, 1), "float32")
    with pytest.raises(ValueError, match="max_val"):
        PSNR(max_val=0)
    with pytest.raises(ValueError, match="max_val"):
        frame_ssim(x, x, max_val=float("nan"))
    with pytest.raises(ValueError, match="same shape"):
        frame_psnr(x, x[:, :8])
    with pytest.raises(ValueError, match="11x11"):
        frame_ssim(x[:, :8, :8], x[:, :8, :8])
    with pytest.raises(ValueError, match="y_true"):
        per_frame_metrics(x, x[:1])
