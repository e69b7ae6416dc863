"""Synthetic moving-object videos: determinism, motion, targets, PyDataset batches."""

import keras
import numpy as np
import pytest

from kzoo.data import MovingObjectsDataset, moving_objects, next_frame_targets


def test_seeded_and_sliceable():
    a = moving_objects(4, num_frames=5, image_size=20, seed=3)
    b = moving_objects(4, num_frames=5, image_size=20, seed=3)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, moving_objects(4, num_frames=5, image_size=20, seed=4))
    # Sequence i depends only on (seed, i): generating from start=2 gives the same videos.
    np.testing.assert_array_equal(
        a[2:], moving_objects(2, num_frames=5, image_size=20, seed=3, start=2)
    )


@pytest.mark.parametrize(
    "color,kind,channels", [(False, "shapes", 1), (False, "digits", 1), (True, "shapes", 3)]
)
def test_shapes_values_and_motion(color, kind, channels):
    v = moving_objects(6, num_frames=8, image_size=24, color=color, kind=kind, seed=1)
    assert v.shape == (6, 8, 24, 24, channels) and v.dtype == np.float32
    assert v.min() >= 0.0 and v.max() <= 1.0
    # Every frame shows something, and objects move: consecutive frames differ.
    assert (v.reshape(6, 8, -1).max(axis=-1) > 0.5).all()
    assert (np.abs(np.diff(v, axis=1)).reshape(6, 7, -1).sum(-1) > 0).mean() > 0.9
    if color:
        # Coloured objects: some pixels have channels that differ.
        assert np.abs(v[..., 0] - v[..., 1]).max() > 0.3


def test_single_object_moves_at_bounded_speed_and_stays_inside():
    v = moving_objects(5, num_frames=12, image_size=32, num_objects=1, max_speed=2.0, seed=9)
    for video in v[..., 0]:
        ys, xs = [], []
        for frame in video:
            rows, cols = np.nonzero(frame > 0)
            assert rows.size > 0  # never leaves the frame
            ys.append(rows.mean())
            xs.append(cols.mean())
        step = np.hypot(np.diff(ys), np.diff(xs))
        assert step.max() <= 2.0 + 1.5  # speed plus rounding of the pixel grid


def test_next_frame_targets():
    v = moving_objects(3, num_frames=6, image_size=16, seed=0)
    x, y = next_frame_targets(v, "sequence")
    np.testing.assert_array_equal(x, v[:, :-1])
    np.testing.assert_array_equal(y, v[:, 1:])
    x, y = next_frame_targets(v, "last")
    np.testing.assert_array_equal(x, v[:, :-1])
    np.testing.assert_array_equal(y, v[:, -1])
    with pytest.raises(ValueError, match="target"):
        next_frame_targets(v, "next")
    with pytest.raises(ValueError, match="videos"):
        next_frame_targets(v[:, :1], "last")


def test_dataset_batches_match_the_arrays():
    data = MovingObjectsDataset(
        10, batch_size=4, target="last", num_frames=5, image_size=16, color=True, seed=2
    )
    assert isinstance(data, keras.utils.PyDataset)
    assert len(data) == 3
    videos = moving_objects(10, num_frames=5, image_size=16, color=True, seed=2)
    x_all, y_all = next_frame_targets(videos, "last")
    got = [data[i] for i in range(3)]
    np.testing.assert_array_equal(np.concatenate([g[0] for g in got]), x_all)
    np.testing.assert_array_equal(np.concatenate([g[1] for g in got]), y_all)
    assert got[-1][0].shape[0] == 2
    with pytest.raises(IndexError):
        data[3]
    seq = MovingObjectsDataset(4, batch_size=4, target="sequence", num_frames=5, image_size=16)
    x, y = seq[0]
    assert x.shape == y.shape == (4, 4, 16, 16, 1)


@pytest.mark.parametrize(
    "kwargs,name",
    [
        (dict(num_sequences=0), "num_sequences"),
        (dict(num_sequences=2, num_frames=0), "num_frames"),
        (dict(num_sequences=2, image_size=-1), "image_size"),
        (dict(num_sequences=2, kind="letters"), "kind"),
        (dict(num_sequences=2, image_size=8, object_size=(4, 12)), "object_size"),
        (dict(num_sequences=2, max_speed=0), "max_speed"),
    ],
)
def test_bad_arguments(kwargs, name):
    with pytest.raises(ValueError, match=name):
        moving_objects(**kwargs)
    with pytest.raises(ValueError, match=name):
        MovingObjectsDataset(**kwargs)
