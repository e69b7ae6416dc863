"""A folder of videos as a ``keras.utils.PyDataset`` of (inputs, targets) windows.

Readers: ``.npy`` / ``.npz`` arrays, ``.gif`` (Pillow through imageio), ``.mp4`` (PyAV through
imageio), and sub-folders of numbered ``.png`` / ``.jpg`` / ``.jpeg`` frames. imageio and PyAV are
imported only when a GIF or MP4 is read (``pip install kzoo[video]``).
"""

import os
import re
import warnings

import keras
import numpy as np

VIDEO_EXTENSIONS = (".npy", ".npz", ".gif", ".mp4")
FRAME_EXTENSIONS = (".png", ".jpg", ".jpeg")
TARGETS = ("next_frame", "next_sequence", "future")
SUBSETS = ("training", "validation")
# ITU-R 601-2 luma, as Pillow's "L" conversion.
_LUMA = np.array([0.299, 0.587, 0.114], dtype="float32")


def _natural_key(name):
    """Sort key that orders ``frame2`` before ``frame10``."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", name)]


def _frame_files(folder):
    names = [
        n
        for n in os.listdir(folder)
        if n.lower().endswith(FRAME_EXTENSIONS) and os.path.isfile(os.path.join(folder, n))
    ]
    return [os.path.join(folder, n) for n in sorted(names, key=_natural_key)]


def list_videos(path):
    """The videos in ``path``: its video files and its sub-folders holding image frames,
    sorted by name."""
    found = []
    for name in sorted(os.listdir(path), key=_natural_key):
        full = os.path.join(path, name)
        if name.startswith("."):
            continue
        if os.path.isdir(full):
            if _frame_files(full):
                found.append(full)
        elif name.lower().endswith(VIDEO_EXTENSIONS):
            found.append(full)
    return found


def _read_array(path, npz_key):
    if path.lower().endswith(".npy"):
        return np.load(path, allow_pickle=False)
    with np.load(path, allow_pickle=False) as archive:
        keys = list(archive.keys())
        if npz_key is not None:
            if npz_key not in keys:
                raise ValueError(f"it has no array {npz_key!r} (arrays: {', '.join(keys)})")
            return archive[npz_key]
        if len(keys) != 1:
            raise ValueError(
                f"it holds {len(keys)} arrays ({', '.join(keys)}); pass `npz_key` to pick one"
            )
        return archive[keys[0]]


def _read_imageio(path, plugin):
    import imageio.v3 as iio

    try:
        return iio.imread(path, index=None, plugin=plugin)
    except Exception:
        if plugin == "pyav":
            # imageio's own message ("can not handle the given uri") hides the reason.
            import av

            try:
                av.open(path).close()
            except Exception as inner:
                raise ValueError(str(inner)) from None
        raise


def _read_frames(folder):
    from PIL import Image

    frames = []
    for file in _frame_files(folder):
        with Image.open(file) as image:
            image.load()
            if image.mode not in ("L", "RGB", "RGBA", "LA"):
                image = image.convert("RGB")
            frames.append(np.asarray(image))
    shapes = {f.shape for f in frames}
    if len(shapes) != 1:
        raise ValueError(f"its frames differ in shape: {sorted(shapes)}")
    return np.stack(frames)


def read_video(path, npz_key=None):
    """A video's frames as they are stored: ``(time, height, width)`` or
    ``(time, height, width, channels)``, any dtype."""
    lower = path.lower()
    if os.path.isdir(path):
        video = _read_frames(path)
    elif lower.endswith((".npy", ".npz")):
        video = _read_array(path, npz_key)
    elif lower.endswith(".gif"):
        video = _read_imageio(path, "pillow")
    elif lower.endswith(".mp4"):
        video = _read_imageio(path, "pyav")
    else:
        raise ValueError(f"not a video kzoo reads (extensions: {', '.join(VIDEO_EXTENSIONS)})")
    video = np.asarray(video)
    if video.ndim == 3:
        video = video[..., None]
    if video.ndim != 4 or video.shape[-1] not in (1, 2, 3, 4) or min(video.shape) == 0:
        raise ValueError(
            "expected frames (time, height, width) or (time, height, width, channels) with 1-4 "
            f"channels; got shape {video.shape}"
        )
    if video.dtype.kind == "f" and not np.isfinite(video).all():
        raise ValueError("it holds NaN or infinite values")
    if video.dtype.kind not in "buif":
        raise ValueError(f"its dtype {video.dtype} is not numeric")
    return video


def _to_unit_range(video):
    """float32 in [0, 1]: integers are divided by their dtype's largest value (255 for uint8),
    booleans become 0/1, floats are taken as already in [0, 1] and clipped."""
    if video.dtype == np.bool_:
        return video.astype("float32")
    if video.dtype.kind in "ui":
        return np.clip(video.astype("float32") / np.iinfo(video.dtype).max, 0.0, 1.0)
    return np.clip(video.astype("float32"), 0.0, 1.0)


def _convert_channels(video, channels):
    """Drop alpha, then grey <-> RGB: grey is repeated to RGB, RGB becomes luma (float)."""
    have = video.shape[-1]
    if have in (2, 4):
        video = video[..., : have - 1]
        have -= 1
    if have == channels:
        return video
    if channels == 3:
        return np.repeat(video, 3, axis=-1)
    return np.tensordot(video, _LUMA, axes=([-1], [0]))[..., None].astype("float32")


def _resize(video, size):
    """Bilinear resize of every frame to ``size`` (height, width), with Pillow."""
    if video.shape[1:3] == tuple(size):
        return video
    from PIL import Image

    height, width = size
    out = np.empty((video.shape[0], height, width, video.shape[-1]), dtype="float32")
    for t, frame in enumerate(video):
        for c in range(frame.shape[-1]):
            image = Image.fromarray(np.ascontiguousarray(frame[..., c], dtype="float32"))
            out[t, ..., c] = np.asarray(image.resize((width, height), Image.BILINEAR))
    return out


def _check_positive_int(value, name):
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value <= 0:
        raise ValueError(f"`{name}` must be a positive integer; got {value!r}.")
    return int(value)


class _ShuffleByEpoch(keras.callbacks.Callback):
    # Runs before keras starts the epoch's data workers, so no batch is read in the old order.
    def __init__(self, dataset):
        super().__init__()
        self.dataset = dataset

    def on_epoch_begin(self, epoch, logs=None):
        self.dataset.set_epoch(epoch)


class VideoFolder(keras.utils.PyDataset):
    """The videos of a folder, cut into sliding windows of inputs and next-frame targets.

    A video is a ``.npy``/``.npz`` array (``(T, H, W)`` or ``(T, H, W, C)``; integer arrays are
    scaled by their dtype's maximum, float arrays taken as [0, 1]), a ``.gif``, an ``.mp4``, or
    a sub-folder of image frames (``.png``/``.jpg``/``.jpeg``, ordered by the numbers in their
    names: ``2.png`` before ``10.png``). Frames are resized (bilinear) to ``frame_size``,
    converted to ``channels`` (grey repeated to RGB, RGB to luma, alpha dropped) and scaled to
    float32 in [0, 1].

    Each video gives windows of ``input_frames + target_frames`` frames, every ``stride``
    frames. The targets match the models:

    - ``"next_frame"``: ``x`` the ``input_frames`` inputs, ``y`` the frame after them,
      ``(H, W, C)`` (``ColorFramePredictor``; ``target_frames`` must be 1).
    - ``"next_sequence"``: ``x`` the inputs, ``y`` the inputs shifted by one frame
      (``NextFramePredictor``, whose step ``t`` predicts frame ``t + 1``; ``target_frames``
      must be 1).
    - ``"future"``: ``y`` the ``target_frames`` frames after the inputs,
      ``(target_frames, H, W, C)`` (to score a ``rollout``).

    ``validation_split`` holds out that share of the videos (never windows of one video on
    both sides), chosen by ``seed``; ``subset`` picks the side. A file that cannot be read
    (truncated, corrupt, wrong shape, NaN values) is skipped with a warning naming it and
    counted in ``skipped`` (``skipped_files`` lists ``(path, reason)``). Frames are decoded
    once, when the dataset is made, and kept in memory (uint8 videos as uint8).

    Args:
        path: The folder.
        input_frames: Input frames per window.
        target_frames: Target frames per window (``"future"``), else 1.
        target: ``"next_frame"``, ``"next_sequence"`` or ``"future"``.
        frame_size: ``(height, width)`` or one int for square frames.
        channels: 1 (grey) or 3 (RGB).
        stride: Frames between the starts of consecutive windows.
        batch_size: Windows per batch.
        shuffle: Shuffle the windows at the start and after every epoch, seeded by ``seed``
            and the epoch (pass ``callbacks=[dataset.epoch_callback()]`` to ``fit`` to tie the
            order to ``fit``'s epoch numbers, so that a resumed run sees the same orders).
        validation_split: Share of the videos held out, in [0, 1).
        subset: ``"training"`` or ``"validation"``; required when ``validation_split > 0``.
        seed: Seeds the split and the shuffling.
        npz_key: Array to read from ``.npz`` files that hold several.
        verbose: Show a progress bar while decoding: ``True``, ``False``, or ``"auto"`` (when
            there are more than 20 videos).
        **kwargs: ``workers``, ``use_multiprocessing``, ``max_queue_size`` of ``PyDataset``.

    Example:

    ```python
    train = kzoo.data.VideoFolder(
        "videos/", input_frames=6, target="next_frame", frame_size=24, channels=3,
        validation_split=0.2, subset="training", shuffle=True,
    )
    val = kzoo.data.VideoFolder(
        "videos/", input_frames=6, target="next_frame", frame_size=24, channels=3,
        validation_split=0.2, subset="validation",
    )
    model = kzoo.models.ColorFramePredictor(filters=(16, 16), kernel_sizes=(3, 3))
    model.fit(train, validation_data=val, epochs=2)
    ```
    """

    def __init__(
        self,
        path,
        input_frames=10,
        target_frames=1,
        target="next_frame",
        frame_size=(64, 64),
        channels=1,
        stride=1,
        batch_size=8,
        shuffle=False,
        validation_split=0.0,
        subset=None,
        seed=0,
        npz_key=None,
        verbose="auto",
        workers=1,
        use_multiprocessing=False,
        max_queue_size=10,
    ):
        super().__init__(
            workers=workers, use_multiprocessing=use_multiprocessing, max_queue_size=max_queue_size
        )
        path = os.fspath(path)
        self.path = path
        self.input_frames = _check_positive_int(input_frames, "input_frames")
        self.target_frames = _check_positive_int(target_frames, "target_frames")
        if target not in TARGETS:
            raise ValueError(f"`target` must be one of {TARGETS}; got {target!r}.")
        if target != "future" and self.target_frames != 1:
            raise ValueError(
                f'`target_frames` must be 1 with target={target!r} (use target="future" for '
                f"several); got {target_frames!r}."
            )
        self.target = target
        size = (frame_size, frame_size) if isinstance(frame_size, (int, np.integer)) else frame_size
        try:
            size = tuple(size)
        except TypeError:
            size = ()
        if len(size) != 2 or not all(
            isinstance(s, (int, np.integer)) and not isinstance(s, bool) and s > 0 for s in size
        ):
            raise ValueError(
                f"`frame_size` must be a positive int or (height, width); got {frame_size!r}."
            )
        self.frame_size = (int(size[0]), int(size[1]))
        if channels not in (1, 3) or isinstance(channels, bool):
            raise ValueError(f"`channels` must be 1 (grey) or 3 (RGB); got {channels!r}.")
        self.channels = channels
        self.stride = _check_positive_int(stride, "stride")
        self.batch_size = _check_positive_int(batch_size, "batch_size")
        self.shuffle = bool(shuffle)
        if isinstance(validation_split, bool) or not (
            isinstance(validation_split, (int, float)) and 0 <= validation_split < 1
        ):
            raise ValueError(
                f"`validation_split` must be a number in [0, 1); got {validation_split!r}."
            )
        self.validation_split = float(validation_split)
        if self.validation_split > 0 and subset not in SUBSETS:
            raise ValueError(
                f"`subset` must be one of {SUBSETS} when `validation_split` > 0; got {subset!r}."
            )
        if subset is not None and subset not in SUBSETS:
            raise ValueError(f"`subset` must be one of {SUBSETS} or None; got {subset!r}.")
        self.subset = subset
        self.seed = int(seed)
        self.npz_key = npz_key
        if not os.path.isdir(path):
            raise ValueError(f"`path` must be a folder of videos; {path!r} is not a directory.")

        candidates = list_videos(path)
        if not candidates:
            raise ValueError(
                f"{path} holds no videos: expected {', '.join(VIDEO_EXTENSIONS)} files or "
                f"sub-folders of {', '.join(FRAME_EXTENSIONS)} frames."
            )
        self.files = self._split(candidates)
        self.skipped_files = []
        self.videos = []
        self.video_paths = []
        window = self.input_frames + self.target_frames
        self.verbose = verbose
        show = len(self.files) > 20 if verbose == "auto" else bool(verbose)
        progress = keras.utils.Progbar(len(self.files), unit_name="video") if show else None
        for file in self.files:
            if progress is not None:
                progress.add(1)
            # Decoders raise many kinds of errors (OSError, ValueError, IndexError, av's own);
            # any of them means the file is unreadable.
            try:
                video = self._load(file)
            except Exception as e:
                reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                warnings.warn(f"VideoFolder: skipping {file}: {reason}", stacklevel=2)
                self.skipped_files.append((file, reason))
                continue
            if video.shape[0] < window:
                warnings.warn(
                    f"VideoFolder: {file} has {video.shape[0]} frames, fewer than a window's "
                    f"{window}; it gives no windows.",
                    stacklevel=2,
                )
            self.videos.append(video)
            self.video_paths.append(file)
        if not self.videos:
            raise ValueError(
                f"{path} has no readable video"
                + (f" in the {subset} subset" if subset else "")
                + f": all {len(self.files)} failed to read "
                + f"({self.skipped_files[0][0]}: {self.skipped_files[0][1]}"
                + (", ..." if len(self.skipped_files) > 1 else "")
                + ")."
            )
        self.windows = np.array(
            [
                (v, start)
                for v, video in enumerate(self.videos)
                for start in range(0, video.shape[0] - window + 1, self.stride)
            ],
            dtype="int64",
        ).reshape(-1, 2)
        if len(self.windows) == 0:
            raise ValueError(
                f"No video in {path}" + (f" ({subset} subset)" if subset else "") + " has the "
                f"{window} frames a window needs (input_frames + target_frames)."
            )
        self.set_epoch(0)

    @property
    def skipped(self):
        """How many videos could not be read."""
        return len(self.skipped_files)

    def _split(self, candidates):
        if self.validation_split == 0:
            return candidates
        if len(candidates) < 2:
            raise ValueError(
                f"`validation_split` needs at least 2 videos to split by video; {self.path} "
                f"holds {len(candidates)}."
            )
        order = np.random.default_rng(self.seed).permutation(len(candidates))
        n_val = min(
            max(1, int(round(self.validation_split * len(candidates)))), len(candidates) - 1
        )
        chosen = order[:n_val] if self.subset == "validation" else order[n_val:]
        return [candidates[i] for i in sorted(chosen)]

    def _load(self, file):
        raw = read_video(file, self.npz_key)
        video = _convert_channels(_to_unit_range(raw), self.channels)
        video = _resize(video, self.frame_size)
        if raw.dtype == np.uint8:
            # 8-bit sources stay 8-bit in memory (4x smaller); batches are scaled on the fly.
            return np.round(video * 255.0).astype(np.uint8)
        return video

    def _make_order(self):
        if not self.shuffle:
            return np.arange(len(self.windows))
        return np.random.default_rng((self.seed, self.epoch)).permutation(len(self.windows))

    def set_epoch(self, epoch):
        """Shuffle as for epoch ``epoch`` (0-based)."""
        self.epoch = int(epoch)
        self._order = self._make_order()

    def on_epoch_end(self):
        self.set_epoch(self.epoch + 1)

    def epoch_callback(self):
        """A ``keras.callbacks.Callback`` that shuffles every epoch of ``fit`` as ``(seed,
        epoch)``, with ``fit``'s own epoch number: a run resumed at epoch k
        (``initial_epoch=k``) then sees the order the uninterrupted run saw.

        Without it the windows are still reshuffled after every epoch, but keras calls
        ``on_epoch_end`` at other times too (when ``fit`` starts), so the orders are not tied
        to epoch numbers.
        """
        return _ShuffleByEpoch(self)

    @property
    def num_windows(self):
        return len(self.windows)

    def __len__(self):
        return -(-len(self.windows) // self.batch_size)

    def __getitem__(self, index):
        if not 0 <= index < len(self):
            raise IndexError(f"batch {index} out of range (dataset has {len(self)}).")
        chosen = self._order[index * self.batch_size : (index + 1) * self.batch_size]
        n, k = self.input_frames, self.target_frames
        clips = np.stack(
            [_to_unit_range(self.videos[v][s : s + n + k]) for v, s in self.windows[chosen]]
        )
        if self.target == "next_frame":
            return clips[:, :n], clips[:, n]
        if self.target == "next_sequence":
            return clips[:, :n], clips[:, 1 : n + 1]
        return clips[:, :n], clips[:, n:]

    def get_config(self):
        return {
            "path": self.path,
            "input_frames": self.input_frames,
            "target_frames": self.target_frames,
            "target": self.target,
            "frame_size": list(self.frame_size),
            "channels": self.channels,
            "stride": self.stride,
            "batch_size": self.batch_size,
            "shuffle": self.shuffle,
            "validation_split": self.validation_split,
            "subset": self.subset,
            "seed": self.seed,
            "npz_key": self.npz_key,
            "verbose": self.verbose,
            "workers": self.workers,
            "use_multiprocessing": self.use_multiprocessing,
            "max_queue_size": self.max_queue_size,
        }

    @classmethod
    def from_config(cls, config):
        return cls(**config)
