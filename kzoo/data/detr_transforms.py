"""DETR's training and evaluation augmentation, on numpy images and pixel boxes.

Every transform takes and returns ``(image, boxes, labels)``: ``image`` a uint8 ``(H, W, 3)``
array, ``boxes`` float32 ``(N, 4)`` corner boxes ``(x0, y0, x1, y1)`` in pixels, ``labels``
``(N,)``. A transform that drops boxes drops their labels with them, so the two stay aligned.
Randomness comes only from the ``rng`` argument (a ``numpy.random.Generator`` or an int seed), so
the same generator state gives the same result in any process.

The semantics follow facebookresearch/detr ``datasets/transforms.py`` and ``main.py``'s
training pipeline:

- :func:`hflip`: the image is mirrored and ``x`` maps to ``W - x`` (so ``(x0, x1)`` becomes
  ``(W - x1, W - x0)``).
- :func:`resize`: the shorter side becomes ``size`` unless the longer side would then exceed
  ``max_size``, in which case the shorter side becomes ``int(round(max_size * short / long))``;
  the longer side is ``int(size * long / short)`` (truncated). An image whose shorter side is
  already ``size`` is left alone. Pixels are resampled with PIL's bilinear filter (what
  torchvision does to the PIL images of DETR's pipeline); boxes are scaled by ``new / old`` per
  axis. See :func:`kzoo.data.images.detr_resize_shape`.
- :func:`crop`: boxes are shifted by the crop's corner, clipped to the crop, and a box is dropped
  when it has no extent left on either axis (``x1 <= x0`` or ``y1 <= y0``).
- :func:`random_size_crop`: a crop of width ``randint(min_size, min(W, max_size))`` and height
  ``randint(min_size, min(H, max_size))`` (both ends included) at a uniformly random position.
  DETR's version fails on images smaller than ``min_size``; here the crop is then the whole
  extent of that side.
- :class:`DetrTrainTransform`: random horizontal flip (p = 0.5), then with probability 0.5 a
  random resize to one of ``scales`` (capped by ``max_size``), otherwise a random resize to one
  of ``crop_resize`` (no cap), a :func:`random_size_crop` of ``crop_size`` and the capped random
  resize to ``scales``.
- :class:`DetrEvalTransform`: the resize to 800 (capped at 1333).
"""

import keras
import numpy as np

from kzoo.data.images import DEFAULT_LONGEST_EDGE, DEFAULT_SHORTEST_EDGE, detr_resize_shape

# DETR's training augmentation for an evaluation size of 800, the defaults here (as in
# kzoo.data.images, DETR's code passes kzoo.models.detr.recipe's values explicitly).
DEFAULT_SCALES = tuple(range(480, 801, 32))
DEFAULT_CROP_RESIZE = (400, 500, 600)
DEFAULT_CROP_SIZE = (384, 600)


def _rng(rng):
    if isinstance(rng, np.random.Generator):
        return rng
    if rng is None or (isinstance(rng, int | np.integer) and not isinstance(rng, bool)):
        return np.random.default_rng(rng)
    raise ValueError(f"rng must be a numpy.random.Generator, an int seed or None; got {rng!r}.")


def _check(image, boxes, labels):
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3:
        raise ValueError(
            "image must be a uint8 numpy array (height, width, 3); got "
            + (
                f"{image.dtype} array of shape {image.shape}"
                if isinstance(image, np.ndarray)
                else type(image).__name__
            )
            + "."
        )
    if image.shape[2] != 3 or image.shape[0] < 1 or image.shape[1] < 1:
        raise ValueError(
            f"image must be (height, width, 3) with a non-empty area; got {image.shape}."
        )
    boxes = np.asarray(boxes, np.float32)
    if boxes.size == 0:
        boxes = boxes.reshape(0, 4)
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ValueError(f"boxes must be (N, 4) x0, y0, x1, y1 pixels; got shape {boxes.shape}.")
    labels = np.asarray(labels)
    if labels.shape != (len(boxes),):
        raise ValueError(f"labels must be ({len(boxes)},), one per box; got shape {labels.shape}.")
    return image, boxes, labels


def _positive_ints(name, values, allow_none=False):
    if values is None and allow_none:
        return None
    if isinstance(values, int | np.integer) and not isinstance(values, bool):
        values = (values,)
    try:
        values = tuple(values)
    except TypeError:
        values = None
    if (
        not values
        or any(not isinstance(v, int | np.integer) or isinstance(v, bool) for v in values)
        or min(values) < 1
    ):
        raise ValueError(f"{name} must be a non-empty sequence of positive ints; got {values!r}.")
    return tuple(int(v) for v in values)


def _probability(name, value):
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
        raise ValueError(f"{name} must be a probability in [0, 1]; got {value!r}.")
    return float(value)


def hflip(image, boxes, labels):
    """Mirror the image left-right; ``x`` maps to ``width - x``."""
    image, boxes, labels = _check(image, boxes, labels)
    width = image.shape[1]
    flipped = np.ascontiguousarray(image[:, ::-1])
    out = boxes[:, [2, 1, 0, 3]] * np.array([-1, 1, -1, 1], np.float32)
    out += np.array([width, 0, width, 0], np.float32)
    return flipped, out, labels


def resized_shape(height, width, size, max_size=None):
    """The ``(height, width)`` :func:`resize` gives an image (DETR's ``get_size``).

    ``size`` is the target of the shorter side (an int) or an explicit ``(height, width)``.
    """
    if isinstance(size, tuple | list):
        size = _positive_ints("size", size)
        if len(size) != 2:
            raise ValueError(f"size must be an int or (height, width); got {size!r}.")
        return size
    (size,) = _positive_ints("size", size)
    if max_size is not None:
        (max_size,) = _positive_ints("max_size", max_size)
        if max_size < size:
            raise ValueError(f"max_size ({max_size}) must be None or >= size ({size}).")
    return detr_resize_shape(height, width, size, max_size)


def _resize_pixels(image, height, width):
    from PIL import Image

    if image.shape[:2] == (height, width):
        return image
    resized = Image.fromarray(image).resize((width, height), resample=Image.Resampling.BILINEAR)
    return np.asarray(resized, dtype=np.uint8)


def resize(image, boxes, labels, size, max_size=None):
    """Resize as DETR does (see :func:`resized_shape`); boxes scale by ``new / old`` per axis."""
    image, boxes, labels = _check(image, boxes, labels)
    old_h, old_w = image.shape[:2]
    new_h, new_w = resized_shape(old_h, old_w, size, max_size)
    out = _resize_pixels(image, new_h, new_w)
    ratio_w, ratio_h = new_w / old_w, new_h / old_h
    scaled = (boxes * np.array([ratio_w, ratio_h, ratio_w, ratio_h])).astype(np.float32)
    return out, scaled, labels


def crop(image, boxes, labels, region):
    """Cut ``region = (top, left, height, width)`` out of the image.

    Boxes are shifted, clipped to the crop, and dropped (with their labels) when they have no
    extent left on either axis.
    """
    image, boxes, labels = _check(image, boxes, labels)
    try:
        top, left, height, width = (int(v) for v in region)
    except (TypeError, ValueError):
        raise ValueError(f"region must be (top, left, height, width); got {region!r}.") from None
    img_h, img_w = image.shape[:2]
    if (
        top < 0
        or left < 0
        or height < 1
        or width < 1
        or top + height > img_h
        or left + width > img_w
    ):
        raise ValueError(
            f"region (top={top}, left={left}, height={height}, width={width}) must lie inside "
            f"the {img_h}x{img_w} image and be non-empty."
        )
    out = np.ascontiguousarray(image[top : top + height, left : left + width])
    shifted = boxes - np.array([left, top, left, top], np.float32)
    limit = np.array([width, height, width, height], np.float32)
    clipped = np.clip(shifted, 0.0, limit)
    keep = (clipped[:, 2] > clipped[:, 0]) & (clipped[:, 3] > clipped[:, 1])
    return out, clipped[keep], labels[keep]


def random_hflip(image, boxes, labels, rng=None, p=0.5):
    """:func:`hflip` with probability ``p`` (one ``rng.random()`` draw)."""
    rng = _rng(rng)
    if rng.random() < _probability("p", p):
        return hflip(image, boxes, labels)
    return _check(image, boxes, labels)


def random_resize(image, boxes, labels, sizes, max_size=None, rng=None):
    """:func:`resize` to a size drawn uniformly from ``sizes``."""
    sizes = _positive_ints("sizes", sizes)
    size = sizes[int(_rng(rng).integers(len(sizes)))]
    return resize(image, boxes, labels, size, max_size)


def random_size_crop(image, boxes, labels, min_size, max_size, rng=None):
    """A crop of random size in ``[min_size, max_size]`` per side (DETR's ``RandomSizeCrop``).

    Width and height are drawn independently, each capped by the image's own side (a side
    shorter than ``min_size`` is kept whole), then the position uniformly.
    """
    (min_size,) = _positive_ints("min_size", min_size)
    (max_size,) = _positive_ints("max_size", max_size)
    if min_size > max_size:
        raise ValueError(f"min_size ({min_size}) must not exceed max_size ({max_size}).")
    image, boxes, labels = _check(image, boxes, labels)
    rng = _rng(rng)
    img_h, img_w = image.shape[:2]
    hi_w, hi_h = min(img_w, max_size), min(img_h, max_size)
    width = int(rng.integers(min(min_size, hi_w), hi_w, endpoint=True))
    height = int(rng.integers(min(min_size, hi_h), hi_h, endpoint=True))
    top = int(rng.integers(0, img_h - height, endpoint=True))
    left = int(rng.integers(0, img_w - width, endpoint=True))
    return crop(image, boxes, labels, (top, left, height, width))


@keras.saving.register_keras_serializable(package="kzoo")
class DetrTrainTransform:
    """DETR's training augmentation: flip, then multi-scale resize or resize-crop-resize.

    Args:
        scales: Shorter-side sizes of the final random resize (DETR: 480 to 800 by 32).
        max_size: Cap on the longer side of that resize (DETR: 1333), or ``None``; must be at
            least ``max(scales)``.
        crop_resize: Shorter-side sizes of the resize before the crop (DETR: 400, 500, 600), or
            ``None`` to never take the crop branch.
        crop_size: ``(min, max)`` side of the random crop (DETR: 384, 600).
        flip_prob: Probability of the horizontal flip (0.5).
        select_prob: Probability of the plain resize branch rather than the crop branch (0.5).
        seed: Seed of the generator used when a call passes no ``rng``.

    Call ``transform(image, boxes, labels, rng=None)`` (see the module docstring for the
    formats); ``kzoo.data.CocoDetection`` passes a generator derived from its seed, the epoch and
    the image, so augmentation is reproducible whatever the workers.

    Example:

    ```python
    from kzoo.data.detr_transforms import DetrTrainTransform
    augment = DetrTrainTransform(scales=(96, 112, 128), max_size=200, crop_resize=(80, 100),
                                 crop_size=(64, 96))
    image, boxes, labels = augment(image, boxes, labels, rng=np.random.default_rng(0))
    ```
    """

    def __init__(
        self,
        scales=DEFAULT_SCALES,
        max_size=DEFAULT_LONGEST_EDGE,
        crop_resize=DEFAULT_CROP_RESIZE,
        crop_size=DEFAULT_CROP_SIZE,
        flip_prob=0.5,
        select_prob=0.5,
        seed=None,
    ):
        self.scales = _positive_ints("scales", scales)
        if max_size is not None:
            (max_size,) = _positive_ints("max_size", max_size)
            if max_size < max(self.scales):
                raise ValueError(
                    f"max_size ({max_size}) must be None or >= the largest scale "
                    f"({max(self.scales)})."
                )
        self.max_size = max_size
        self.crop_resize = _positive_ints("crop_resize", crop_resize, allow_none=True)
        crop_size = _positive_ints("crop_size", crop_size)
        if len(crop_size) != 2 or crop_size[0] > crop_size[1]:
            raise ValueError(f"crop_size must be (min, max) with min <= max; got {crop_size!r}.")
        self.crop_size = crop_size
        self.flip_prob = _probability("flip_prob", flip_prob)
        self.select_prob = _probability("select_prob", select_prob)
        if seed is not None and (
            isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0
        ):
            raise ValueError(f"seed must be None or an int >= 0; got {seed!r}.")
        self.seed = seed
        self._default_rng = np.random.default_rng(seed)

    def __call__(self, image, boxes, labels, rng=None):
        rng = self._default_rng if rng is None else _rng(rng)
        image, boxes, labels = random_hflip(image, boxes, labels, rng, p=self.flip_prob)
        if self.crop_resize is None or rng.random() < self.select_prob:
            return random_resize(image, boxes, labels, self.scales, self.max_size, rng)
        image, boxes, labels = random_resize(image, boxes, labels, self.crop_resize, None, rng)
        image, boxes, labels = random_size_crop(image, boxes, labels, *self.crop_size, rng=rng)
        return random_resize(image, boxes, labels, self.scales, self.max_size, rng)

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"DetrTrainTransform({args})"

    def get_config(self):
        return {
            "scales": list(self.scales),
            "max_size": self.max_size,
            "crop_resize": None if self.crop_resize is None else list(self.crop_resize),
            "crop_size": list(self.crop_size),
            "flip_prob": self.flip_prob,
            "select_prob": self.select_prob,
            "seed": self.seed,
        }

    @classmethod
    def from_config(cls, config):
        return cls(**config)


@keras.saving.register_keras_serializable(package="kzoo")
class DetrEvalTransform:
    """DETR's evaluation transform: resize the shorter side to ``size``, the longer capped.

    Args:
        size: Shorter-side target (DETR: 800).
        max_size: Cap on the longer side (DETR: 1333), or ``None``; at least ``size``.

    Example:

    ```python
    from kzoo.data.detr_transforms import DetrEvalTransform
    image, boxes, labels = DetrEvalTransform(size=128, max_size=213)(image, boxes, labels)
    ```
    """

    def __init__(self, size=DEFAULT_SHORTEST_EDGE, max_size=DEFAULT_LONGEST_EDGE):
        (self.size,) = _positive_ints("size", size)
        if max_size is not None:
            (max_size,) = _positive_ints("max_size", max_size)
            if max_size < self.size:
                raise ValueError(f"max_size ({max_size}) must be None or >= size ({self.size}).")
        self.max_size = max_size

    def __call__(self, image, boxes, labels, rng=None):
        del rng  # deterministic
        return resize(image, boxes, labels, self.size, self.max_size)

    def __repr__(self):
        return f"DetrEvalTransform(size={self.size}, max_size={self.max_size})"

    def get_config(self):
        return {"size": self.size, "max_size": self.max_size}

    @classmethod
    def from_config(cls, config):
        return cls(**config)
