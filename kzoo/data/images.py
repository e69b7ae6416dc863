"""Turning user images into detector input: decoding, colour order, DETR resizing, batching.

Accepted images:

- ``numpy.ndarray`` of dtype ``uint8``, height × width × channels (HWC), with 3 channels in
  RGB or BGR order (``channel_order="bgr"`` for what OpenCV's ``cv2.imread`` returns), 4
  channels (RGBA/BGRA; alpha is dropped), 1 channel or a 2-D array (grayscale, repeated to
  three channels). Strided views (an OpenCV ROI, ``img[::2, ::2]``, a channel-reversed
  ``img[..., ::-1]``) are fine: they are copied into a contiguous array first.
- ``PIL.Image.Image`` in any mode (``L``, ``P``, ``RGBA``, ``CMYK``, ``I;16``...): converted
  to RGB (alpha dropped, not composited). ``channel_order`` does not apply: PIL images are RGB
  by definition. Deeper images keep their brightness: 16-bit images (``I;16`` modes, and ``I``
  with values in 0..65535, as 16-bit PNGs and TIFFs load) are scaled by 255/65535, and 32-bit
  float images (``F``, as float TIFFs load) must hold values in [0, 1], scaled by 255; other
  value ranges are refused rather than clipped.
- a path (``str`` or ``os.PathLike``) to an image file PIL can read. Images larger than PIL's
  decompression-bomb limit (``PIL.Image.MAX_IMAGE_PIXELS``) are refused with a ``ValueError``.

Resizing follows DETR's evaluation transform (``RandomResize([800], max_size=1333)`` in
facebookresearch/detr): the shorter side becomes ``shortest_edge`` unless that would make the
longer side exceed ``longest_edge``, in which case the longer side is capped and the shorter
one follows the aspect ratio, with DETR's integer rounding (see :func:`detr_resize_shape`).
Pixels are resampled with PIL's bilinear filter on the uint8 image (what torchvision's
``F.resize`` does to PIL images and what transformers' ``DetrImageProcessorPil`` does), then
scaled to [0, 1] and normalised with the ImageNet mean and standard deviation.

Batches of different sizes are zero-padded at the bottom and right to the largest height and
width; ``pixel_mask`` is 1 on real pixels and 0 on padding, which is what
``kzoo.models.DETR`` reads so that an image's outputs do not depend on the padding.
"""

import dataclasses
import os

import numpy as np

# DETR's evaluation resize, the default here. kzoo.data sits below kzoo.models and cannot read
# kzoo.models.detr.recipe: DETR's code passes the recipe's sizes explicitly, and
# tests/models/detr/test_recipe.py checks that these defaults are the same numbers.
DEFAULT_SHORTEST_EDGE = 800
DEFAULT_LONGEST_EDGE = 1333
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CHANNEL_ORDERS = ("rgb", "bgr")


@dataclasses.dataclass
class ImageBatch:
    """A padded batch of normalised images and what post-processing needs to undo it.

    Attributes:
        images: float32 ``(B, H, W, 3)``, normalised, zero on padding.
        pixel_mask: float32 ``(B, H, W)``, 1 on image pixels and 0 on padding.
        original_sizes: int ``(B, 2)``, each image's ``(height, width)`` before resizing: boxes
            predicted in normalised coordinates are scaled to these.
        image_sizes: int ``(B, 2)``, each image's ``(height, width)`` after resizing (the
            unpadded region of ``images``).
    """

    images: np.ndarray
    pixel_mask: np.ndarray
    original_sizes: np.ndarray
    image_sizes: np.ndarray

    def model_inputs(self):
        """The dict ``kzoo.models.DETR`` takes: ``{"images": ..., "pixel_mask": ...}``."""
        return {"images": self.images, "pixel_mask": self.pixel_mask}

    def __len__(self):
        return len(self.images)


def _check_channel_order(channel_order):
    order = str(channel_order).lower()
    if order not in CHANNEL_ORDERS:
        raise ValueError(
            f"channel_order must be one of {CHANNEL_ORDERS} (OpenCV arrays are 'bgr'); "
            f"got {channel_order!r}."
        )
    return order


def load_image(image, channel_order="rgb"):
    """Return ``image`` as a contiguous uint8 ``(H, W, 3)`` RGB array.

    Args:
        image: A uint8 HWC/HW numpy array, a ``PIL.Image.Image`` or a path to an image file.
        channel_order: ``"rgb"`` or ``"bgr"``: the channel order of numpy arrays.

    Example:

    ```python
    import cv2  # any BGR source
    from kzoo.data import images
    bgr = cv2.imread("street.jpg")
    rgb = images.load_image(bgr[100:400, 50:600], channel_order="bgr")
    ```
    """
    order = _check_channel_order(channel_order)
    if isinstance(image, (str, os.PathLike)):
        return _pil_to_rgb(_open(image))
    if _is_pil(image):
        return _pil_to_rgb(image)
    if isinstance(image, np.ndarray):
        return _array_to_rgb(image, order)
    raise ValueError(
        "An image must be a uint8 numpy array (H, W[, C]), a PIL image or a file path; "
        f"got {type(image).__name__}."
    )


def _is_pil(obj):
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover - PIL is a dependency of kzoo[detr]
        return False
    return isinstance(obj, Image.Image)


def _open(path):
    import stat

    from PIL import Image, UnidentifiedImageError

    path = os.fspath(path)
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise FileNotFoundError(f"Image file {path!r} does not exist.") from None
    except OSError as e:
        raise ValueError(f"Image file {path!r} cannot be read: {e.strerror}.") from None
    if stat.S_ISDIR(mode):
        raise ValueError(f"Image path {path!r} is a directory, not an image file.")
    if not stat.S_ISREG(mode):
        # Opening a FIFO would block until something writes to it.
        raise ValueError(f"Image path {path!r} is not a regular file (a FIFO, socket or device).")
    try:
        with Image.open(path) as im:
            im.load()
            return im.copy()
    except Image.DecompressionBombError as e:
        raise ValueError(
            f"{path!r} is too large to decode safely ({e}). Raise PIL.Image.MAX_IMAGE_PIXELS "
            "if the image is trusted."
        ) from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        # PIL reports damaged files with OSError, ValueError or SyntaxError depending on format.
        raise ValueError(f"{path!r} is not an image PIL can read: {e}") from None


_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")


def _pil_to_rgb(im):
    if im.width == 0 or im.height == 0:
        raise ValueError(f"The image is empty ({im.width}x{im.height}).")
    if im.mode in _SIXTEEN_BIT_MODES or im.mode in ("I", "F"):
        return _deep_gray_to_rgb(im)
    if im.mode != "RGB":
        # PIL's conversion handles palettes, CMYK and drops alpha.
        im = im.convert("RGB")
    return np.ascontiguousarray(np.asarray(im, dtype=np.uint8))


def _deep_gray_to_rgb(im):
    """16-bit, 32-bit integer and float grayscale to uint8 RGB, keeping the brightness.

    PIL's own ``convert("RGB")`` clips these modes to 0..255 (a 16-bit mid-gray becomes white)
    and truncates floats in [0, 1] to 0 (black).
    """
    values = np.asarray(im)
    if im.mode == "F":
        values = values.astype(np.float64)
        if not np.isfinite(values).all():
            raise ValueError("The float image holds NaN or infinite values.")
        lo, hi = float(values.min()), float(values.max())
        if lo < 0.0 or hi > 1.0:
            raise ValueError(
                f"A float image must hold values in [0, 1]; this one spans [{lo:g}, {hi:g}]. "
                "Scale it to [0, 1], or convert it to 8-bit yourself."
            )
        scaled = values * 255.0
    else:
        values = values.astype(np.int64)
        lo, hi = int(values.min()), int(values.max())
        if lo < 0 or hi > 65535:
            raise ValueError(
                f"A {im.mode} integer image must hold 16-bit values (0..65535); this one spans "
                f"[{lo}, {hi}]. Convert it to 8-bit yourself."
            )
        scaled = values * (255.0 / 65535.0)
    gray = np.clip(np.round(scaled), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(np.repeat(gray[:, :, None], 3, axis=2))


def _array_to_rgb(array, order):
    if array.dtype != np.uint8:
        hint = ""
        if np.issubdtype(array.dtype, np.floating):
            hint = (
                " For a float image in [0, 1], pass (x * 255).round().astype(np.uint8); "
                "an already normalised batch goes to the model directly."
            )
        raise ValueError(f"Image arrays must have dtype uint8; got {array.dtype}.{hint}")
    if array.ndim == 2:
        array = array[:, :, None]
    if array.ndim != 3:
        raise ValueError(
            f"An image array must be (height, width) or (height, width, channels); got shape "
            f"{array.shape} (rank {array.ndim}). Pass a batch as a list of images."
        )
    channels = array.shape[-1]
    if channels not in (1, 3, 4):
        hint = ""
        if array.shape[0] in (1, 3, 4):
            hint = " It looks channels-first (C, H, W); transpose it to (H, W, C)."
        raise ValueError(
            f"An image array needs 1 (gray), 3 (colour) or 4 (with alpha) channels in its last "
            f"axis; got shape {array.shape}.{hint}"
        )
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise ValueError(f"The image is empty (shape {array.shape}).")
    if channels == 1:
        array = np.repeat(array, 3, axis=2)
    elif channels == 4:
        array = array[:, :, :3]
    if order == "bgr" and channels != 1:
        array = array[:, :, ::-1]
    return np.ascontiguousarray(array)


def detr_resize_shape(
    height, width, shortest_edge=DEFAULT_SHORTEST_EDGE, longest_edge=DEFAULT_LONGEST_EDGE
):
    """The ``(height, width)`` DETR resizes an image of ``height`` × ``width`` to.

    The shorter side becomes ``shortest_edge``; if the longer side would then exceed
    ``longest_edge``, the shorter side is reduced to ``round(longest_edge * short / long)``
    instead. The other side is ``int(size * long / short)`` (truncated), as in
    facebookresearch/detr ``datasets/transforms.py``. Because the short side is rounded first,
    the long side can exceed ``longest_edge`` by up to half a pixel times the aspect ratio
    (transformers' ``DetrImageProcessor`` scales from the unrounded size instead, so its long
    side can differ by as much). ``longest_edge=None`` removes the cap.
    """
    _check_edges(shortest_edge, longest_edge)
    height, width = int(height), int(width)
    if height <= 0 or width <= 0:
        raise ValueError(f"Image sizes must be positive; got {height}x{width}.")
    size = shortest_edge
    if longest_edge is not None:
        short, long = float(min(height, width)), float(max(height, width))
        if long / short * size > longest_edge:
            # At least one pixel: DETR's formula gives 0 for images thinner than 1:1333.
            size = max(1, int(round(longest_edge * short / long)))
    if (width <= height and width == size) or (height <= width and height == size):
        return height, width
    if width < height:
        return max(1, int(size * height / width)), size
    return size, max(1, int(size * width / height))


def _check_edges(shortest_edge, longest_edge):
    if not isinstance(shortest_edge, (int, np.integer)) or shortest_edge < 1:
        raise ValueError(f"shortest_edge must be a positive integer; got {shortest_edge!r}.")
    if longest_edge is not None and (
        not isinstance(longest_edge, (int, np.integer)) or longest_edge < shortest_edge
    ):
        raise ValueError(
            f"longest_edge must be None or an integer >= shortest_edge ({shortest_edge}); "
            f"got {longest_edge!r}."
        )


def resize_image(image, shortest_edge=DEFAULT_SHORTEST_EDGE, longest_edge=DEFAULT_LONGEST_EDGE):
    """Resize a uint8 RGB array as DETR does, with PIL's bilinear filter; returns uint8."""
    from PIL import Image

    height, width = image.shape[:2]
    new_h, new_w = detr_resize_shape(height, width, shortest_edge, longest_edge)
    if (new_h, new_w) == (height, width):
        return image
    resized = Image.fromarray(image).resize((new_w, new_h), resample=Image.Resampling.BILINEAR)
    return np.asarray(resized, dtype=np.uint8)


def normalize_image(image, mean=IMAGENET_MEAN, std=IMAGENET_STD):
    """uint8 RGB → float32, scaled to [0, 1] then standardised per channel."""
    x = image.astype(np.float32) / np.float32(255.0)
    return (x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)


def preprocess_images(
    images,
    channel_order="rgb",
    shortest_edge=DEFAULT_SHORTEST_EDGE,
    longest_edge=DEFAULT_LONGEST_EDGE,
    resize=True,
    mean=IMAGENET_MEAN,
    std=IMAGENET_STD,
):
    """Load, resize, normalise and pad images into one batch for DETR.

    Args:
        images: One image or a list of them (arrays, PIL images, paths; see the module doc). A
            4-D uint8 array is taken as a batch of same-sized images.
        channel_order: ``"rgb"`` or ``"bgr"`` for numpy arrays.
        shortest_edge: Target length of the shorter side (DETR: 800).
        longest_edge: Cap on the longer side (DETR: 1333), or ``None``.
        resize: ``False`` keeps the images' sizes (normalisation and padding only).
        mean: Per-channel mean subtracted after scaling to [0, 1].
        std: Per-channel standard deviation divided by.

    Returns:
        An :class:`ImageBatch`.

    Example:

    ```python
    from kzoo.data.images import preprocess_images
    batch = preprocess_images(["a.jpg", "b.png"], shortest_edge=512, longest_edge=853)
    outputs = model(batch.model_inputs())
    ```
    """
    _check_channel_order(channel_order)
    if resize:
        _check_edges(shortest_edge, longest_edge)
    if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
        raise ValueError(f"mean and std need 3 values each, std > 0; got {mean!r}, {std!r}.")
    if isinstance(images, np.ndarray) and images.ndim == 4:
        images = list(images)
    elif not isinstance(images, (list, tuple)):
        images = [images]
    if not images:
        raise ValueError("No images to preprocess: the list is empty.")
    loaded = [load_image(im, channel_order) for im in images]
    original = np.array([im.shape[:2] for im in loaded], dtype=np.int32)
    if resize:
        loaded = [resize_image(im, shortest_edge, longest_edge) for im in loaded]
    sizes = np.array([im.shape[:2] for im in loaded], dtype=np.int32)
    max_h, max_w = sizes.max(axis=0)
    batch = np.zeros((len(loaded), max_h, max_w, 3), dtype=np.float32)
    mask = np.zeros((len(loaded), max_h, max_w), dtype=np.float32)
    for i, im in enumerate(loaded):
        h, w = im.shape[:2]
        batch[i, :h, :w] = normalize_image(im, mean, std)
        mask[i, :h, :w] = 1.0
    return ImageBatch(images=batch, pixel_mask=mask, original_sizes=original, image_sizes=sizes)
