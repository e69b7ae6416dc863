"""kzoo.data.VideoFolder on folders the tests write: .npy, .npz, GIF, MP4, numbered PNG frames
and truncated files."""

import os
import warnings

import imageio.v3 as iio
import keras
import numpy as np
import pytest
from PIL import Image

from kzoo.data import VideoFolder

slow_on_jax = pytest.mark.slow if keras.backend.backend() == "jax" else (lambda f: f)


def _ramp(num_frames, size=(16, 16), channels=None, step=20):
    """uint8 frames of one grey level each: frame ``t`` is ``step * (t + 1)``."""
    shape = (num_frames,) + size + (() if channels is None else (channels,))
    levels = (step * (np.arange(num_frames) + 1)).astype("uint8")
    return np.broadcast_to(levels.reshape((-1,) + (1,) * (len(shape) - 1)), shape).copy()


def _write_folder(root, lengths=None):
    """One video per format; frame t of every video has the grey level 20 * (t + 1)."""
    lengths = lengths or {"a": 8, "b": 7, "c": 6, "d": 9, "e": 12}
    root.mkdir(exist_ok=True)
    np.save(root / "a.npy", _ramp(lengths["a"]))  # (T, H, W) uint8
    # (T, H, W, C) float in [0, 1]
    np.savez(root / "b.npz", frames=_ramp(lengths["b"], channels=3).astype("float32") / 255.0)
    iio.imwrite(root / "c.gif", _ramp(lengths["c"], channels=3), extension=".gif", duration=100)
    iio.imwrite(
        root / "d.mp4",
        _ramp(lengths["d"], channels=3),
        extension=".mp4",
        plugin="pyav",
        codec="libx264",
        fps=5,
    )
    frames = root / "e"
    frames.mkdir()
    for t, frame in enumerate(_ramp(lengths["e"])):
        # Named 1.png ... 12.png: a plain string sort would put 10.png before 2.png.
        Image.fromarray(frame).save(frames / f"{t + 1}.png")
    (root / "notes.txt").write_text("not a video")
    return lengths


def test_reads_every_format_with_next_frame_targets(tmp_path, capsys):
    lengths = _write_folder(tmp_path / "videos")
    data = VideoFolder(
        tmp_path / "videos",
        input_frames=3,
        frame_size=(8, 8),
        channels=1,
        batch_size=4,
        verbose=True,
    )
    assert "5/5" in capsys.readouterr().out  # the progress bar
    names = [os.path.basename(p) for p in data.video_paths]
    assert names == ["a.npy", "b.npz", "c.gif", "d.mp4", "e"]
    assert data.skipped == 0
    assert data.num_windows == sum(n - 4 + 1 for n in lengths.values())
    xs, ys = zip(*(data[i] for i in range(len(data))))
    x, y = np.concatenate(xs), np.concatenate(ys)
    assert x.shape == (data.num_windows, 3, 8, 8, 1) and x.dtype == np.float32
    assert y.shape == (data.num_windows, 8, 8, 1)
    for i, (video, start) in enumerate(data.windows):
        expected = 20 * (start + np.arange(4) + 1) / 255.0
        # MP4 is lossy (YUV 4:2:0 and compression): within 3 grey levels.
        tol = 3 / 255 if names[video] == "d.mp4" else 1e-6
        np.testing.assert_allclose(x[i].mean(axis=(1, 2, 3)), expected[:3], atol=tol)
        np.testing.assert_allclose(y[i], expected[3], atol=tol)


def test_sequence_and_future_targets_and_stride(tmp_path):
    root = tmp_path / "v"
    root.mkdir()
    rng = np.random.default_rng(0)
    video = rng.uniform(0, 1, (9, 6, 5, 3)).astype("float32")
    np.save(root / "v.npy", video)
    seq = VideoFolder(root, input_frames=4, target="next_sequence", frame_size=(6, 5), channels=3)
    x, y = seq[0]
    assert len(seq.windows) == 5
    np.testing.assert_array_equal(x, np.stack([video[s : s + 4] for s in range(5)]))
    np.testing.assert_array_equal(y, np.stack([video[s + 1 : s + 5] for s in range(5)]))
    fut = VideoFolder(
        root,
        input_frames=3,
        target_frames=4,
        target="future",
        frame_size=(6, 5),
        channels=3,
        stride=2,
    )
    assert [s for _, s in fut.windows] == [0, 2]
    x, y = fut[0]
    assert y.shape == (2, 4, 6, 5, 3)
    np.testing.assert_array_equal(y[1], video[5:9])
    np.testing.assert_array_equal(x[1], video[2:5])


def test_resize_and_channel_conversion(tmp_path):
    root = tmp_path / "v"
    root.mkdir()
    rng = np.random.default_rng(1)
    video = rng.integers(0, 256, (3, 20, 30, 3), dtype=np.uint8)
    np.save(root / "rgb.npy", video)
    grey = VideoFolder(root, input_frames=2, frame_size=(20, 30), channels=1)
    luma = (video.astype("float64") @ np.array([0.299, 0.587, 0.114])) / 255.0
    np.testing.assert_allclose(grey[0][0][0, ..., 0], luma[:2], atol=0.5 / 255 + 1e-6)
    small = VideoFolder(root, input_frames=2, frame_size=(10, 12), channels=3)
    # Pillow's own uint8 RGB resize, an independent path from VideoFolder's per-channel float one.
    ref = np.stack(
        [np.asarray(Image.fromarray(f).resize((12, 10), Image.BILINEAR)) for f in video[:2]]
    )
    np.testing.assert_allclose(small[0][0][0], ref / 255.0, atol=1.5 / 255)
    # Grey input repeated to RGB.
    np.save(root / "rgb.npy", video[..., 0])
    rgb = VideoFolder(root, input_frames=2, frame_size=(20, 30), channels=3)
    x = rgb[0][0][0]
    np.testing.assert_array_equal(x[..., 0], x[..., 2])
    np.testing.assert_allclose(x[..., 1], video[:2, ..., 0] / 255.0, atol=1e-6)


def test_split_by_video_is_deterministic_and_disjoint(tmp_path):
    root = tmp_path / "v"
    root.mkdir()
    for i in range(5):
        np.save(root / f"video{i}.npy", _ramp(6, size=(4, 4)) // (i + 1))
    common = dict(input_frames=2, frame_size=4, validation_split=0.4, seed=3)
    train = VideoFolder(root, subset="training", **common)
    val = VideoFolder(root, subset="validation", **common)
    assert len(val.video_paths) == 2 and len(train.video_paths) == 3
    assert set(train.video_paths) | set(val.video_paths) == set(
        str(root / f"video{i}.npy") for i in range(5)
    )
    assert not set(train.video_paths) & set(val.video_paths)
    assert VideoFolder(root, subset="validation", **common).video_paths == val.video_paths
    splits = {
        tuple(VideoFolder(root, subset="validation", **dict(common, seed=s)).video_paths)
        for s in range(6)
    }
    assert len(splits) > 1  # the seed decides


def test_shuffle_is_seeded_per_epoch(tmp_path):
    root = tmp_path / "v"
    root.mkdir()
    np.save(root / "v.npy", np.arange(40, dtype="float32").reshape(40, 1, 1) / 40)
    data = VideoFolder(root, input_frames=1, frame_size=1, batch_size=39, shuffle=True, seed=5)
    first = data[0][0][:, 0, 0, 0, 0]
    assert sorted(first.tolist()) == sorted((np.arange(39) / 40).astype("float32").tolist())
    assert not np.array_equal(first, np.sort(first))
    data.on_epoch_end()
    second = data[0][0][:, 0, 0, 0, 0]
    assert not np.array_equal(first, second)
    again = VideoFolder.from_config(data.get_config())
    np.testing.assert_array_equal(again[0][0][:, 0, 0, 0, 0], first)
    again.set_epoch(1)
    np.testing.assert_array_equal(again[0][0][:, 0, 0, 0, 0], second)
    assert VideoFolder(root, input_frames=1, frame_size=1).get_config()["shuffle"] is False


def test_truncated_and_corrupt_videos_are_skipped_and_counted(tmp_path):
    root = tmp_path / "v"
    _write_folder(root)
    for name in ("a.npy", "c.gif", "d.mp4"):
        data = (root / name).read_bytes()
        (root / name).write_bytes(data[: len(data) // 2])
    png = root / "e" / "5.png"
    png.write_bytes(png.read_bytes()[:40])
    with pytest.warns(UserWarning) as record:
        data = VideoFolder(root, input_frames=3, frame_size=8)
    messages = [str(w.message) for w in record]
    for name in ("a.npy", "c.gif", "d.mp4", "e"):
        assert any(str(root / name) in m for m in messages), (name, messages)
    assert data.skipped == 4
    assert [os.path.basename(p) for p in data.video_paths] == ["b.npz"]
    assert {os.path.basename(p) for p, _ in data.skipped_files} == {"a.npy", "c.gif", "d.mp4", "e"}


def test_empty_or_unreadable_folders_are_value_errors(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="holds no videos"):
        VideoFolder(empty)
    (empty / "readme.txt").write_text("x")
    with pytest.raises(ValueError, match="holds no videos"):
        VideoFolder(empty)
    (empty / "broken.npy").write_bytes(b"\x93NUMPY garbage")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(ValueError, match="no readable video"):
            VideoFolder(empty)
    with pytest.raises(ValueError, match="not a directory"):
        VideoFolder(tmp_path / "missing")
    (empty / "broken.npy").unlink()
    np.save(empty / "short.npy", _ramp(3))
    with pytest.warns(UserWarning, match="fewer than"):
        with pytest.raises(ValueError, match="frames a window needs"):
            VideoFolder(empty, input_frames=5, frame_size=16)


@pytest.mark.parametrize(
    "kwargs,name",
    [
        (dict(target="last"), "target"),
        (dict(target_frames=2), "target_frames"),
        (dict(channels=2), "channels"),
        (dict(frame_size=(0, 4)), "frame_size"),
        (dict(validation_split=0.5), "subset"),
        (dict(validation_split=1.0, subset="training"), "validation_split"),
        (dict(stride=0), "stride"),
        (dict(input_frames=0), "input_frames"),
    ],
)
def test_bad_arguments_name_the_argument(tmp_path, kwargs, name):
    np.save(tmp_path / "v.npy", _ramp(8))
    with pytest.raises(ValueError, match=name):
        VideoFolder(tmp_path, **kwargs)


@slow_on_jax
def test_fit_a_predictor_on_a_video_folder_with_worker_threads(tmp_path):
    from kzoo.models import ColorFramePredictor

    root = tmp_path / "v"
    _write_folder(root)
    common = dict(input_frames=3, frame_size=8, channels=3, batch_size=4, validation_split=0.4)
    train = VideoFolder(root, subset="training", shuffle=True, workers=2, **common)
    val = VideoFolder(root, subset="validation", **common)
    model = ColorFramePredictor(filters=(4,), kernel_sizes=(3,))
    seen = []

    class Record(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            seen.append(train.epoch)

    shuffle = train.epoch_callback()
    history = model.fit(
        train, validation_data=val, epochs=2, verbose=0, callbacks=[shuffle, Record()]
    )
    assert np.isfinite(history.history["val_loss"]).all()
    assert len(history.history["loss"]) == 2
    # Epoch k is shuffled with (seed, k), also when fit starts part-way (a resumed run).
    assert seen == [0, 1] and train.epoch == 2
    model.fit(train, epochs=2, initial_epoch=1, verbose=0, callbacks=[shuffle, Record()])
    assert seen == [0, 1, 1] and train.epoch == 2
