"""Animated GIF / MP4 of a rollout: ground truth and prediction side by side."""

import os

import numpy as np

from kzoo.utils.files import atomic_file

FORMATS = {".gif": "GIF", ".mp4": "MP4"}
# Border colours: around input frames (both panels), around true future frames, around
# predicted ones.
INPUT_BORDER = (0.35, 0.35, 0.35)
TRUTH_BORDER = (0.2, 0.8, 0.2)
PREDICTION_BORDER = (1.0, 0.55, 0.0)


def _as_rgb(frames, name):
    frames = np.asarray(frames, dtype="float32")
    if frames.ndim == 4:
        frames = frames[None]
    if frames.ndim != 5 or frames.shape[-1] not in (1, 3) or min(frames.shape) == 0:
        raise ValueError(
            f"`{name}` must be (batch, time, height, width, 1 or 3 channels); got {frames.shape}."
        )
    if frames.shape[-1] == 1:
        frames = np.repeat(frames, 3, axis=-1)
    return np.clip(np.nan_to_num(frames), 0.0, 1.0)


def animation_frames(truth, prediction, context=None, scale=4, border=1, gap=2):
    """The animation as uint8 RGB frames ``(time, height, width, 3)``.

    One row per example: the true frame on the left, the predicted one on the right, each
    enlarged ``scale`` times (nearest neighbour) inside a ``border``-pixel frame (grey around
    inputs, green around the truth, orange around predictions), ``gap`` pixels apart. With
    ``context`` (the inputs), the animation first shows them in both panels.

    Args:
        truth: ``(batch, steps, H, W, C)`` true future frames in [0, 1] (C 1 or 3).
        prediction: The predicted frames, same shape.
        context: Optional ``(batch, T, H, W, C)`` input frames shown first.
    """
    truth = _as_rgb(truth, "truth")
    prediction = _as_rgb(prediction, "prediction")
    if truth.shape != prediction.shape:
        raise ValueError(
            f"`truth` and `prediction` must have the same shape; got {truth.shape} and "
            f"{prediction.shape}."
        )
    for name, value in (("scale", scale), ("border", border), ("gap", gap)):
        if not isinstance(value, int) or value < (1 if name == "scale" else 0):
            raise ValueError(
                f"`{name}` must be an integer >= {int(name == 'scale')}; got {value!r}."
            )
    batch, steps, height, width, _ = truth.shape
    if context is not None:
        context = _as_rgb(context, "context")
        if context.shape[0] != batch or context.shape[2:] != truth.shape[2:]:
            raise ValueError(
                f"`context` must be (batch, T, H, W, C) like `truth` {truth.shape}; got "
                f"{context.shape}."
            )
        left = np.concatenate([context, truth], axis=1)
        right = np.concatenate([context, prediction], axis=1)
        num_inputs = context.shape[1]
    else:
        left, right, num_inputs = truth, prediction, 0
    ph, pw = height * scale + 2 * border, width * scale + 2 * border
    out_h = batch * ph + (batch - 1) * gap
    out_w = 2 * pw + gap
    frames = np.ones((left.shape[1], out_h, out_w, 3), dtype="float32")
    for t in range(left.shape[1]):
        is_input = t < num_inputs
        for b in range(batch):
            top = b * (ph + gap)
            for col, (panel, colour) in enumerate(
                ((left, TRUTH_BORDER), (right, PREDICTION_BORDER))
            ):
                x0 = col * (pw + gap)
                frames[t, top : top + ph, x0 : x0 + pw] = INPUT_BORDER if is_input else colour
                image = np.repeat(np.repeat(panel[b, t], scale, axis=0), scale, axis=1)
                frames[
                    t,
                    top + border : top + border + height * scale,
                    x0 + border : x0 + border + width * scale,
                ] = image
    return np.round(frames * 255.0).astype("uint8")


def encode_animation(frames, fmt, fps=4):
    """uint8 RGB frames ``(time, H, W, 3)`` as the bytes of a GIF or an MP4 (H.264)."""
    import imageio.v3 as iio

    if fmt == "GIF":
        # loop=0: play forever.
        return iio.imwrite(
            "<bytes>", frames, extension=".gif", plugin="pillow", duration=1000 / fps, loop=0
        )
    # H.264 in 4:2:0 needs even sides: pad with white.
    pad_h, pad_w = frames.shape[1] % 2, frames.shape[2] % 2
    if pad_h or pad_w:
        frames = np.pad(frames, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), constant_values=255)
    return iio.imwrite("<bytes>", frames, extension=".mp4", plugin="pyav", codec="libx264", fps=fps)


def animation_format(path):
    """``"GIF"`` or ``"MP4"`` from ``path``'s extension; a ``ValueError`` otherwise."""
    ext = os.path.splitext(os.fspath(path))[1].lower()
    if ext not in FORMATS:
        raise ValueError(
            f"An animation is written as {' or '.join(FORMATS)} (the extension decides); got "
            f"{os.fspath(path)!r}."
        )
    return FORMATS[ext]


def write_rollout_animation(path, truth, prediction, context=None, fps=4, scale=4, overwrite=False):
    """Write ground truth and prediction side by side as an animated GIF or MP4, atomically.

    The extension of ``path`` decides the format (``.gif`` or ``.mp4``). An existing file is
    replaced only with ``overwrite=True``. See ``animation_frames`` for the layout.

    Example:

    ```python
    model = kzoo.models.ColorFramePredictor.from_preset("convlstm_color_shapes")
    videos = kzoo.data.moving_objects(3, num_frames=16, image_size=24, color=True)
    pred = model.rollout(videos[:, :6], steps=10)
    write_rollout_animation("rollout.gif", videos[:, 6:], pred, context=videos[:, :6])
    ```
    """
    fmt = animation_format(path)
    if not isinstance(fps, (int, float)) or not 0 < fps <= 100:
        raise ValueError(f"`fps` must be a number in (0, 100]; got {fps!r}.")
    if os.path.exists(path) and not overwrite:
        raise ValueError(f"{os.fspath(path)} already exists; pass overwrite=True to replace it.")
    frames = animation_frames(truth, prediction, context=context, scale=scale)
    data = encode_animation(frames, fmt, fps=fps)
    with atomic_file(path) as f:
        f.write(data)
    return os.path.abspath(path)
