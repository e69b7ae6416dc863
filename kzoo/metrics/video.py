"""Per-frame video metrics: MSE, MAE, PSNR and SSIM, as functions and as Keras metrics.

Frames are channels-last: ``(..., height, width, channels)``; every leading axis (batch, time)
indexes frames. Each function returns one value per frame; the metric classes average those
values over every frame they are given (all batches and time steps), so a PSNR or SSIM is the
mean of per-frame scores, not the score of the mean error.
"""

import keras
import numpy as np
from keras import ops

# SSIM's constants and Gaussian window, as in Wang et al. (2004) and in
# skimage.metrics.structural_similarity(gaussian_weights=True).
SSIM_K1 = 0.01
SSIM_K2 = 0.03
SSIM_SIGMA = 1.5
SSIM_WINDOW = 11


def _check_max_val(max_val):
    value = float(max_val) if isinstance(max_val, (int, float, np.number)) else None
    if isinstance(max_val, bool) or value is None or not np.isfinite(value) or value <= 0:
        raise ValueError(f"`max_val` must be a positive finite number; got {max_val!r}.")
    return value


def _check_frames(y_true, y_pred, min_size=1):
    true_shape, pred_shape = tuple(y_true.shape), tuple(y_pred.shape)
    if len(pred_shape) < 3:
        raise ValueError(
            f"Frames must be (..., height, width, channels); got y_pred of shape {pred_shape}."
        )
    if len(true_shape) != len(pred_shape) or any(
        a is not None and b is not None and a != b for a, b in zip(true_shape, pred_shape)
    ):
        raise ValueError(
            f"`y_true` and `y_pred` must have the same shape; got {true_shape} and {pred_shape}."
        )
    height, width = pred_shape[-3], pred_shape[-2]
    if any(s is not None and s < min_size for s in (height, width)):
        raise ValueError(
            f"SSIM's {min_size}x{min_size} window needs frames at least that large; got "
            f"{height}x{width}."
        )


def _prepare(y_true, y_pred):
    y_pred = ops.convert_to_tensor(y_pred)
    dtype = y_pred.dtype if "float" in str(y_pred.dtype) else "float32"
    return ops.cast(ops.convert_to_tensor(y_true), dtype), ops.cast(y_pred, dtype)


def frame_mse(y_true, y_pred):
    """Mean squared error of each frame: shape ``y_true.shape[:-3]``."""
    _check_frames(y_true, y_pred)
    y_true, y_pred = _prepare(y_true, y_pred)
    return ops.mean(ops.square(y_pred - y_true), axis=(-3, -2, -1))


def frame_mae(y_true, y_pred):
    """Mean absolute error of each frame: shape ``y_true.shape[:-3]``."""
    _check_frames(y_true, y_pred)
    y_true, y_pred = _prepare(y_true, y_pred)
    return ops.mean(ops.abs(y_pred - y_true), axis=(-3, -2, -1))


def frame_psnr(y_true, y_pred, max_val=1.0):
    """Peak signal-to-noise ratio of each frame, ``10 log10(max_val^2 / MSE)`` in dB.

    A frame predicted exactly has an infinite PSNR (as in ``skimage.metrics``).
    """
    max_val = _check_max_val(max_val)
    mse = frame_mse(y_true, y_pred)
    return 10.0 * ops.log(max_val * max_val / mse) / np.log(10.0)


def _gaussian_window():
    radius = SSIM_WINDOW // 2
    x = np.arange(-radius, radius + 1, dtype="float64")
    weights = np.exp(-0.5 * (x / SSIM_SIGMA) ** 2)
    return (weights / weights.sum()).astype("float32")


def frame_ssim(y_true, y_pred, max_val=1.0):
    """Structural similarity of each frame (mean SSIM over its pixels and channels).

    The variant of ``skimage.metrics.structural_similarity(im1, im2, data_range=max_val,
    gaussian_weights=True, sigma=1.5, use_sample_covariance=False, channel_axis=-1)``:
    local statistics under an 11x11 Gaussian window with sigma 1.5, K1 = 0.01, K2 = 0.03,
    population (not sample) covariances, each channel scored on its own and the channels
    averaged. Only windows that lie wholly inside the frame count (scikit-image pads, then
    crops the 5-pixel border away, which gives the same mean), so frames must be at least
    11x11.
    """
    max_val = _check_max_val(max_val)
    _check_frames(y_true, y_pred, min_size=SSIM_WINDOW)
    y_true, y_pred = _prepare(y_true, y_pred)
    dtype = y_pred.dtype
    shape = ops.shape(y_pred)
    lead = shape[:-3]
    height, width, channels = shape[-3], shape[-2], shape[-1]
    # Every (frame, channel) becomes one single-channel image; the five local statistics are
    # filtered together, as one batch.
    x = ops.reshape(
        ops.moveaxis(ops.reshape(y_true, (-1, height, width, channels)), -1, 1),
        (-1, height, width, 1),
    )
    y = ops.reshape(
        ops.moveaxis(ops.reshape(y_pred, (-1, height, width, channels)), -1, 1),
        (-1, height, width, 1),
    )
    stack = ops.concatenate([x, y, x * x, y * y, x * y], axis=0)
    window = ops.cast(_gaussian_window(), dtype)
    # The Gaussian is separable: an 11x1 then a 1x11 convolution.
    stack = ops.conv(stack, ops.reshape(window, (SSIM_WINDOW, 1, 1, 1)), padding="valid")
    stack = ops.conv(stack, ops.reshape(window, (1, SSIM_WINDOW, 1, 1)), padding="valid")
    mu_x, mu_y, xx, yy, xy = ops.split(stack, 5, axis=0)
    var_x = xx - mu_x * mu_x
    var_y = yy - mu_y * mu_y
    cov = xy - mu_x * mu_y
    c1 = (SSIM_K1 * max_val) ** 2
    c2 = (SSIM_K2 * max_val) ** 2
    ssim_map = ((2.0 * mu_x * mu_y + c1) * (2.0 * cov + c2)) / (
        (mu_x * mu_x + mu_y * mu_y + c1) * (var_x + var_y + c2)
    )
    per_channel = ops.mean(ssim_map, axis=(1, 2, 3))
    per_frame = ops.mean(ops.reshape(per_channel, (-1, channels)), axis=-1)
    return ops.reshape(per_frame, lead)


class _FrameMetric(keras.metrics.Mean):
    """The mean of a per-frame score over every frame seen."""

    _fn = None
    _has_max_val = False

    def __init__(self, max_val=1.0, name=None, dtype=None):
        super().__init__(name=name or self._default_name, dtype=dtype)
        self.max_val = _check_max_val(max_val)

    def update_state(self, y_true, y_pred, sample_weight=None):
        fn = type(self)._fn
        if self._has_max_val:
            values = fn(y_true, y_pred, max_val=self.max_val)
        else:
            values = fn(y_true, y_pred)
        return super().update_state(values, sample_weight=sample_weight)

    def get_config(self):
        return {"name": self.name, "dtype": self.dtype, "max_val": self.max_val}


@keras.saving.register_keras_serializable(package="kzoo")
class FrameMSE(_FrameMetric):
    """Mean squared error per frame, averaged over frames (``frame_mse``).

    Args:
        max_val: Unused by MSE; kept so that every video metric takes the same arguments.
        name: Metric name (default ``"frame_mse"``).
        dtype: Dtype of the metric's state.

    Example:

    ```python
    model.compile(loss="mse", metrics=[kzoo.metrics.FrameMSE(), kzoo.metrics.SSIM()])
    ```
    """

    _fn = staticmethod(frame_mse)
    _default_name = "frame_mse"


@keras.saving.register_keras_serializable(package="kzoo")
class FrameMAE(_FrameMetric):
    """Mean absolute error per frame, averaged over frames (``frame_mae``).

    Args:
        max_val: Unused by MAE; kept so that every video metric takes the same arguments.
        name: Metric name (default ``"frame_mae"``).
        dtype: Dtype of the metric's state.

    Example:

    ```python
    metric = kzoo.metrics.FrameMAE()
    metric.update_state(true_frames, predicted_frames)
    metric.result()
    ```
    """

    _fn = staticmethod(frame_mae)
    _default_name = "frame_mae"


@keras.saving.register_keras_serializable(package="kzoo")
class PSNR(_FrameMetric):
    """Peak signal-to-noise ratio in dB per frame, averaged over frames (``frame_psnr``).

    Args:
        max_val: The largest pixel value (1.0 for frames in [0, 1], 255 for uint8 ranges).
        name: Metric name (default ``"psnr"``).
        dtype: Dtype of the metric's state.

    Example:

    ```python
    metric = kzoo.metrics.PSNR(max_val=1.0)
    metric.update_state(true_frames, predicted_frames)
    float(metric.result())
    ```
    """

    _fn = staticmethod(frame_psnr)
    _default_name = "psnr"
    _has_max_val = True


@keras.saving.register_keras_serializable(package="kzoo")
class SSIM(_FrameMetric):
    """Structural similarity per frame, averaged over frames (``frame_ssim``).

    Matches ``skimage.metrics.structural_similarity`` with ``gaussian_weights=True``
    (11x11 window, sigma 1.5), ``use_sample_covariance=False``, ``data_range=max_val``,
    ``channel_axis=-1``; frames must be at least 11x11.

    Args:
        max_val: The data range (1.0 for frames in [0, 1]).
        name: Metric name (default ``"ssim"``).
        dtype: Dtype of the metric's state.

    Example:

    ```python
    model.compile(loss="mae", metrics=[kzoo.metrics.SSIM(max_val=1.0)])
    ```
    """

    _fn = staticmethod(frame_ssim)
    _default_name = "ssim"
    _has_max_val = True


def per_frame_metrics(y_true, y_pred, max_val=1.0, batch_size=64):
    """MSE, MAE, PSNR and SSIM for every time step, averaged over the batch.

    Args:
        y_true, y_pred: ``(batch, time, height, width, channels)`` (or one frame per example,
            ``(batch, height, width, channels)``, taken as one time step).
        max_val: The data range for PSNR and SSIM.
        batch_size: Examples scored at once (bounds the memory SSIM's filtering needs).

    Returns:
        ``{"mse": ..., "mae": ..., "psnr": ..., "ssim": ...}``, each a float64 numpy array of
        shape ``(time,)``. SSIM is ``nan`` for frames smaller than 11x11.

    Example:

    ```python
    scores = kzoo.metrics.per_frame_metrics(future_frames, model.rollout(inputs, steps=10))
    scores["ssim"]  # one value per rollout step
    ```
    """
    max_val = _check_max_val(max_val)
    y_true = np.asarray(keras.ops.convert_to_numpy(y_true), dtype="float32")
    y_pred = np.asarray(keras.ops.convert_to_numpy(y_pred), dtype="float32")
    if y_pred.ndim == 4:
        y_true, y_pred = y_true[:, None], y_pred[:, None]
    if y_pred.ndim != 5 or y_true.shape != y_pred.shape or y_pred.shape[0] == 0:
        raise ValueError(
            "`y_true` and `y_pred` must both be (batch, time, height, width, channels) (or "
            f"(batch, height, width, channels)); got {y_true.shape} and {y_pred.shape}."
        )
    with_ssim = min(y_pred.shape[2:4]) >= SSIM_WINDOW
    sums = {name: np.zeros(y_pred.shape[1]) for name in ("mse", "mae", "psnr", "ssim")}
    for start in range(0, y_pred.shape[0], batch_size):
        t, p = y_true[start : start + batch_size], y_pred[start : start + batch_size]
        scores = {
            "mse": frame_mse(t, p),
            "mae": frame_mae(t, p),
            "psnr": frame_psnr(t, p, max_val=max_val),
        }
        if with_ssim:
            scores["ssim"] = frame_ssim(t, p, max_val=max_val)
        for name, value in scores.items():
            sums[name] += np.sum(keras.ops.convert_to_numpy(value).astype("float64"), axis=0)
    result = {name: total / y_pred.shape[0] for name, total in sums.items()}
    if not with_ssim:
        result["ssim"] = np.full(y_pred.shape[1], np.nan)
    return result
