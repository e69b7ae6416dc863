"""The rollout animation writer: GIF and MP4 files read back with Pillow and imageio."""

import os

import imageio.v3 as iio
import numpy as np
import pytest
from PIL import Image, ImageSequence

from kzoo.data import moving_objects
from kzoo.models.conv_lstm.animation import animation_frames, write_rollout_animation

SCALE, BORDER, GAP = 4, 1, 2


def _clips(color=True):
    videos = moving_objects(2, num_frames=7, image_size=10, object_size=(3, 5), color=color)
    context, truth = videos[:, :4], videos[:, 4:]
    # A "prediction" that differs visibly from the truth: the truth one frame late.
    prediction = np.concatenate([context[:, -1:], truth[:, :-1]], axis=1)
    return context, truth, prediction


def _panel(frame, row, col, size=10):
    """The ``size`` x ``size`` picture inside panel (row, col), one pixel per source pixel."""
    ph = pw = size * SCALE + 2 * BORDER
    top, left = row * (ph + GAP) + BORDER, col * (pw + GAP) + BORDER
    block = frame[top : top + size * SCALE, left : left + size * SCALE, :3].astype("float32")
    return block[SCALE // 2 :: SCALE, SCALE // 2 :: SCALE] / 255.0


def test_gif_has_a_frame_per_step_side_by_side(tmp_path):
    context, truth, prediction = _clips()
    path = tmp_path / "rollout.gif"
    assert write_rollout_animation(path, truth, prediction, context=context, fps=5) == str(path)
    assert path.read_bytes()[:6] == b"GIF89a"
    assert os.listdir(tmp_path) == ["rollout.gif"]  # no temporary file left behind
    with Image.open(path) as gif:
        frames = [np.asarray(f.convert("RGB")) for f in ImageSequence.Iterator(gif)]
        assert gif.info.get("loop") == 0 and gif.info.get("duration") == 200
    assert len(frames) == 4 + 3
    ph = 10 * SCALE + 2 * BORDER
    assert frames[0].shape == (2 * ph + GAP, 2 * ph + GAP, 3)
    for t, frame in enumerate(frames):
        for row in range(2):
            left = context[row, t] if t < 4 else truth[row, t - 4]
            right = context[row, t] if t < 4 else prediction[row, t - 4]
            # GIF keeps at most 256 colours per frame: close, not exact.
            assert np.abs(_panel(frame, row, 0) - left).mean() < 0.02, (t, row)
            assert np.abs(_panel(frame, row, 1) - right).mean() < 0.02, (t, row)
    # The truth and the (late) prediction panels differ once the rollout starts.
    assert np.abs(_panel(frames[5], 0, 0) - _panel(frames[5], 0, 1)).mean() > 0.01


def test_mp4_and_grey_frames(tmp_path):
    context, truth, prediction = _clips(color=False)
    path = tmp_path / "rollout.mp4"
    write_rollout_animation(path, truth, prediction, context=context, scale=SCALE)
    frames = iio.imread(path, index=None, plugin="pyav")
    assert frames.shape[0] == 7
    expected = animation_frames(truth, prediction, context=context)
    # H.264 wants even sides: the writer pads by at most one pixel.
    assert frames.shape[1] - expected.shape[1] in (0, 1)
    assert frames.shape[2] - expected.shape[2] in (0, 1)
    crop = frames[:, : expected.shape[1], : expected.shape[2]].astype("float32")
    assert np.abs(crop - expected).mean() < 8  # lossy, in grey levels of 255
    panel = _panel(frames[6], 1, 0)
    assert np.abs(panel - truth[1, 2, ..., 0][..., None]).mean() < 0.06


def test_refuses_to_overwrite_and_unknown_extensions(tmp_path):
    context, truth, prediction = _clips()
    path = tmp_path / "a.gif"
    path.write_bytes(b"mine")
    with pytest.raises(ValueError, match="already exists"):
        write_rollout_animation(path, truth, prediction)
    assert path.read_bytes() == b"mine"
    write_rollout_animation(path, truth, prediction, overwrite=True)
    with Image.open(path) as gif:
        assert gif.format == "GIF" and gif.n_frames == 3
    for name in ("a.png", "a.avi", "a"):
        with pytest.raises(ValueError, match="extension"):
            write_rollout_animation(tmp_path / name, truth, prediction)
    with pytest.raises(ValueError, match="same shape"):
        write_rollout_animation(tmp_path / "b.gif", truth, prediction[:, :2])
    assert sorted(os.listdir(tmp_path)) == ["a.gif"]
