"""Seeded synthetic videos of objects bouncing in a frame (Moving-MNIST-like), grey or colour.

Every sequence ``i`` of a generator with seed ``s`` is drawn from its own random stream
``numpy.random.default_rng((s, i))``, so the arrays, any slice of them and the batches of
``MovingObjectsDataset`` all hold the same videos for the same seed.
"""

import math

import keras
import numpy as np

SHAPES = ("square", "circle", "triangle", "diamond")
KINDS = ("shapes", "digits")
TARGETS = ("sequence", "last")

# 5x7 bitmaps of the digits 0-9, one string per row.
_DIGITS = [
    ["01110", "10001", "10011", "10101", "11001", "10001", "01110"],
    ["00100", "01100", "00100", "00100", "00100", "00100", "01110"],
    ["01110", "10001", "00001", "00010", "00100", "01000", "11111"],
    ["11110", "00001", "00001", "01110", "00001", "00001", "11110"],
    ["00010", "00110", "01010", "10010", "11111", "00010", "00010"],
    ["11111", "10000", "11110", "00001", "00001", "10001", "01110"],
    ["00110", "01000", "10000", "11110", "10001", "10001", "01110"],
    ["11111", "00001", "00010", "00100", "01000", "01000", "01000"],
    ["01110", "10001", "10001", "01110", "10001", "10001", "01110"],
    ["01110", "10001", "10001", "01111", "00001", "00010", "01100"],
]

# Saturated colours, far apart, so the colour of an object is easy to tell.
_PALETTE = np.array(
    [
        [1.0, 0.15, 0.15],
        [0.15, 1.0, 0.15],
        [0.2, 0.4, 1.0],
        [1.0, 0.9, 0.1],
        [1.0, 0.2, 1.0],
        [0.1, 1.0, 1.0],
        [1.0, 0.55, 0.1],
    ],
    dtype="float32",
)


def _shape_mask(name, size):
    yy, xx = np.mgrid[0:size, 0:size].astype("float32") + 0.5
    c = size / 2.0
    if name == "square":
        return np.ones((size, size), bool)
    if name == "circle":
        return (yy - c) ** 2 + (xx - c) ** 2 <= c * c
    if name == "triangle":
        return np.abs(xx - c) <= yy / 2.0
    if name == "diamond":
        return np.abs(xx - c) + np.abs(yy - c) <= c
    raise ValueError(f"Unknown shape {name!r}; expected one of {SHAPES}.")


def _digit_mask(digit, size):
    glyph = np.array([[ch == "1" for ch in row] for row in _DIGITS[digit]])
    rows = (np.arange(size) * glyph.shape[0] // size).clip(0, glyph.shape[0] - 1)
    cols = (np.arange(size) * glyph.shape[1] // size).clip(0, glyph.shape[1] - 1)
    return glyph[rows][:, cols]


def _check_positive_int(value, name):
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value <= 0:
        raise ValueError(f"`{name}` must be a positive integer; got {value!r}.")
    return int(value)


def _check_options(num_frames, image_size, num_objects, object_size, max_speed, kind):
    _check_positive_int(num_frames, "num_frames")
    _check_positive_int(image_size, "image_size")
    _check_positive_int(num_objects, "num_objects")
    if kind not in KINDS:
        raise ValueError(f"`kind` must be one of {KINDS}; got {kind!r}.")
    lo, hi = object_size
    if not (0 < lo <= hi <= image_size):
        raise ValueError(
            f"`object_size` must be (min, max) with 0 < min <= max <= image_size={image_size}; "
            f"got {object_size!r}."
        )
    if not max_speed > 0:
        raise ValueError(f"`max_speed` must be positive; got {max_speed!r}.")


def _render_sequence(rng, num_frames, image_size, num_objects, color, kind, object_size, max_speed):
    channels = 3 if color else 1
    video = np.zeros((num_frames, image_size, image_size, channels), dtype="float32")
    for _ in range(num_objects):
        size = int(rng.integers(object_size[0], object_size[1] + 1))
        if kind == "digits":
            mask = _digit_mask(int(rng.integers(10)), size)
        else:
            mask = _shape_mask(SHAPES[int(rng.integers(len(SHAPES)))], size)
        value = _PALETTE[int(rng.integers(len(_PALETTE)))] if color else np.ones(1, "float32")
        limit = image_size - size
        pos = rng.uniform(0, limit, size=2)
        angle = rng.uniform(0, 2 * math.pi)
        speed = rng.uniform(max(max_speed / 3.0, 0.5), max_speed)
        vel = np.array([math.sin(angle), math.cos(angle)]) * speed
        patch = mask[..., None] * value
        for t in range(num_frames):
            y, x = int(round(pos[0])), int(round(pos[1]))
            region = video[t, y : y + size, x : x + size]
            np.maximum(region, patch, out=region)
            pos = pos + vel
            for axis in range(2):
                # Bounce off the walls: reflect the position and the velocity.
                if pos[axis] < 0:
                    pos[axis], vel[axis] = -pos[axis], -vel[axis]
                elif pos[axis] > limit:
                    pos[axis], vel[axis] = 2 * limit - pos[axis], -vel[axis]
                pos[axis] = min(max(pos[axis], 0.0), limit)
    return video


def moving_objects(
    num_sequences,
    num_frames=10,
    image_size=32,
    num_objects=2,
    color=False,
    kind="shapes",
    object_size=(7, 11),
    max_speed=3.0,
    seed=0,
    start=0,
):
    """Videos of objects moving at constant speed and bouncing off the frame's edges.

    Args:
        num_sequences: How many videos.
        num_frames: Frames per video.
        image_size: Frames are ``image_size`` x ``image_size``.
        num_objects: Objects per video.
        color: ``True`` gives RGB frames with coloured objects; ``False`` grey ones (1 channel).
        kind: ``"shapes"`` (squares, circles, triangles, diamonds) or ``"digits"``.
        object_size: (min, max) object side in pixels.
        max_speed: Largest speed in pixels per frame.
        seed: Seed; the same seed gives the same videos.
        start: Index of the first sequence (for generating a dataset in pieces).

    Returns:
        float32 array ``(num_sequences, num_frames, image_size, image_size, channels)``,
        values in [0, 1], 0 the background.

    Example:

    ```python
    videos = kzoo.data.moving_objects(8, num_frames=10, color=True, seed=1)
    x, y = kzoo.data.next_frame_targets(videos, target="last")
    ```
    """
    _check_positive_int(num_sequences, "num_sequences")
    _check_options(num_frames, image_size, num_objects, object_size, max_speed, kind)
    return np.stack(
        [
            _render_sequence(
                np.random.default_rng((seed, start + i)),
                num_frames,
                image_size,
                num_objects,
                color,
                kind,
                object_size,
                max_speed,
            )
            for i in range(num_sequences)
        ]
    )


def next_frame_targets(videos, target="sequence"):
    """Split videos into model inputs and next-frame targets.

    Args:
        videos: ``(batch, time, ...)`` array with at least 2 frames.
        target: ``"sequence"``: inputs frames ``0..T-2``, targets frames ``1..T-1`` (each
            step predicts the next one; ``NextFramePredictor``). ``"last"``: inputs frames
            ``0..T-2``, target the last frame (``ColorFramePredictor``).
    """
    if target not in TARGETS:
        raise ValueError(f"`target` must be one of {TARGETS}; got {target!r}.")
    if videos.ndim < 3 or videos.shape[1] < 2:
        raise ValueError(
            f"`videos` must be (batch, time, ...) with at least 2 frames; got {videos.shape}."
        )
    x = videos[:, :-1]
    y = videos[:, 1:] if target == "sequence" else videos[:, -1]
    return x, y


class MovingObjectsDataset(keras.utils.PyDataset):
    """Batches of synthetic moving-object videos with next-frame targets, for ``model.fit``.

    Batch ``b`` holds sequences ``b * batch_size ...`` of ``moving_objects(..., seed=seed)``.

    Args:
        num_sequences: Videos per epoch.
        batch_size: Videos per batch.
        target: ``"sequence"`` (for ``NextFramePredictor``) or ``"last"`` (for
            ``ColorFramePredictor``); see ``next_frame_targets``.
        num_frames, image_size, num_objects, color, kind, object_size, max_speed, seed:
            As in ``moving_objects``.
        **kwargs: ``workers``, ``use_multiprocessing``, ``max_queue_size`` of ``PyDataset``.

    Example:

    ```python
    data = kzoo.data.MovingObjectsDataset(64, batch_size=8, target="last", color=True)
    model.fit(data, epochs=2)
    ```
    """

    def __init__(
        self,
        num_sequences,
        batch_size=8,
        target="sequence",
        num_frames=10,
        image_size=32,
        num_objects=2,
        color=False,
        kind="shapes",
        object_size=(7, 11),
        max_speed=3.0,
        seed=0,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.num_sequences = _check_positive_int(num_sequences, "num_sequences")
        self.batch_size = _check_positive_int(batch_size, "batch_size")
        if target not in TARGETS:
            raise ValueError(f"`target` must be one of {TARGETS}; got {target!r}.")
        if num_frames < 2:
            raise ValueError(f"`num_frames` must be at least 2; got {num_frames!r}.")
        _check_options(num_frames, image_size, num_objects, object_size, max_speed, kind)
        self.target = target
        self.options = dict(
            num_frames=num_frames,
            image_size=image_size,
            num_objects=num_objects,
            color=color,
            kind=kind,
            object_size=object_size,
            max_speed=max_speed,
            seed=seed,
        )

    def __len__(self):
        return -(-self.num_sequences // self.batch_size)

    def __getitem__(self, index):
        if not 0 <= index < len(self):
            raise IndexError(f"batch {index} out of range (dataset has {len(self)}).")
        start = index * self.batch_size
        count = min(self.batch_size, self.num_sequences - start)
        videos = moving_objects(count, start=start, **self.options)
        return next_frame_targets(videos, target=self.target)
