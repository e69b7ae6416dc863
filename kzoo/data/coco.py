"""COCO-format detection data for DETR training: ``CocoDetection``, image decoding, export.

:class:`CocoDetection` reads a COCO annotation JSON (through pycocotools' ``COCO``) and a folder
of images, and yields batches in the format ``kzoo.models.DETR`` trains on. What it does with the
annotations follows facebookresearch/detr (``datasets/coco.py``, ``ConvertCocoPolysToMask``):

- ``iscrowd=1`` annotations are left out of the training targets (they stay in ``coco`` for
  evaluation);
- boxes ``[x, y, w, h]`` become corners ``(x, y, x + w, y + h)``, are clipped to the image and
  dropped when they have no extent left on either axis;
- images without annotations are kept, with empty targets.

Unlike DETR, which trains on COCO's 91 category-id slots, the category ids (not contiguous in
COCO: 80 classes with ids 1 to 90) are mapped to contiguous labels ``0..N-1`` in ascending id
order; ``category_ids`` / ``label_to_category_id`` / ``category_id_to_label`` convert.

Images are decoded with PIL and transposed by their EXIF orientation tag first (what a viewer
shows and, in COCO practice, what the annotations and the ``width``/``height`` of the JSON refer
to; ``exif_transpose=False`` keeps the stored pixel order). Boxes are clipped to and normalised by
the size of the decoded image, not the JSON's ``width``/``height`` (a mismatch is warned about
once). All modes become uint8 RGB: 16-bit images are scaled by ``255 / 65535`` (not clipped),
float images are taken as ``[0, 1]``, palette/CMYK/grayscale go through PIL's conversion and
alpha is dropped (see :func:`read_image`).
"""

import contextlib
import inspect
import io
import json
import math
import os
import warnings

import keras
import numpy as np

from kzoo.data.coco_annotations import InvalidAnnotations, parse_annotations
from kzoo.data.images import normalize_image
from kzoo.utils.files import atomic_directory

# Separate generator streams for the epoch order and the per-image augmentation.
_ORDER_STREAM = 0
_AUGMENT_STREAM = 1


def read_image(path, exif_transpose=True):
    """Decode an image file to a uint8 RGB ``(H, W, 3)`` array.

    Args:
        path: The image file.
        exif_transpose: Apply the EXIF orientation tag (``PIL.ImageOps.exif_transpose``).

    Raises a ``ValueError`` for a file PIL cannot read and for one over PIL's
    decompression-bomb limit (``PIL.Image.MAX_IMAGE_PIXELS``).

    Conversions: 16-bit grayscale (PIL modes ``I;16*``, and ``I``, which older Pillow versions
    give 16-bit PNGs) is scaled by ``255 / 65535`` and rounded; float images (mode ``F``) are
    taken as ``[0, 1]``, scaled by 255, rounded and clipped; everything else (``L``, ``P``,
    ``CMYK``, ``RGBA``, ``LA``, ``1``...) goes through ``PIL.Image.convert("RGB")``, which drops
    alpha. 16-bit RGB PNGs are already reduced to 8 bits by PIL's decoder.

    Example:

    ```python
    from kzoo.data.coco import read_image
    rgb = read_image("photo.jpg")  # upright, as a viewer shows it
    ```
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im.load()
            if exif_transpose:
                im = ImageOps.exif_transpose(im)
            return pil_to_rgb(im)
    except Image.DecompressionBombError as e:
        raise ValueError(_too_large(path, e)) from None
    except (UnidentifiedImageError, OSError, SyntaxError) as e:
        raise ValueError(f"{os.fspath(path)!r} is not an image PIL can read: {e}") from None


def _too_large(path, error):
    return (
        f"{os.fspath(path)!r} is too large to decode safely ({error}). Raise "
        "PIL.Image.MAX_IMAGE_PIXELS if the image is trusted."
    )


def pil_to_rgb(im):
    """A PIL image of any mode as a uint8 RGB array (see :func:`read_image`)."""
    if im.width == 0 or im.height == 0:
        raise ValueError(f"The image is empty ({im.width}x{im.height}).")
    mode = im.mode
    if mode.startswith("I;16") or mode == "I":
        # 1/257 = 255/65535: full 16-bit range to full 8-bit range.
        gray = np.asarray(im).astype(np.float64) / 257.0
        gray = np.clip(np.rint(gray), 0, 255).astype(np.uint8)
    elif mode == "F":
        gray = np.nan_to_num(np.asarray(im, np.float64), nan=0.0) * 255.0
        gray = np.clip(np.rint(gray), 0, 255).astype(np.uint8)
    else:
        if mode != "RGB":
            im = im.convert("RGB")
        return np.ascontiguousarray(np.asarray(im, dtype=np.uint8))
    return np.ascontiguousarray(np.repeat(gray[:, :, None], 3, axis=2))


def collate(examples, max_objects, pad_to=None, pad_to_multiple=None):
    """Batch ``(image, boxes, labels)`` examples into DETR's inputs and targets.

    Args:
        examples: uint8 RGB images ``(H_i, W_i, 3)`` with corner boxes in pixels ``(n_i, 4)``
            and labels ``(n_i,)``.
        max_objects: Length the targets are padded to (at least every ``n_i``).
        pad_to: ``(height, width)`` to pad every batch to, or ``None`` for the batch's largest.
        pad_to_multiple: With ``pad_to=None``, round the batch's height and width up to a
            multiple of this (few distinct shapes: few compilations on JAX and TensorFlow).

    Returns:
        ``({"images": (B, H, W, 3) float32 ImageNet-normalised, zero on padding, "pixel_mask":
        (B, H, W) float32 1 on image pixels}, {"boxes": (B, max_objects, 4) (cx, cy, w, h)
        normalised by each image's own unpadded size, padded with 0, "labels": (B,
        max_objects) int32, padded with -1})``. Padding is at the bottom and right.
    """
    if not examples:
        raise ValueError("collate needs at least one example.")
    sizes = np.array([ex[0].shape[:2] for ex in examples], np.int64)
    height, width = sizes.max(axis=0)
    if pad_to is None and pad_to_multiple:
        height = -(-height // pad_to_multiple) * pad_to_multiple
        width = -(-width // pad_to_multiple) * pad_to_multiple
    if pad_to is not None:
        if height > pad_to[0] or width > pad_to[1]:
            k = int(np.argmax((sizes[:, 0] > pad_to[0]) | (sizes[:, 1] > pad_to[1])))
            raise ValueError(
                f"pad_to={tuple(pad_to)} is smaller than example {k} ({sizes[k][0]}x"
                f"{sizes[k][1]}, height x width)."
            )
        height, width = pad_to
    batch = len(examples)
    images = np.zeros((batch, height, width, 3), np.float32)
    mask = np.zeros((batch, height, width), np.float32)
    out_boxes = np.zeros((batch, max_objects, 4), np.float32)
    out_labels = np.full((batch, max_objects), -1, np.int32)
    for b, (image, boxes, labels) in enumerate(examples):
        h, w = image.shape[:2]
        images[b, :h, :w] = normalize_image(image)
        mask[b, :h, :w] = 1.0
        n = len(labels)
        if n > max_objects:
            raise ValueError(f"Example {b} has {n} boxes, more than max_objects={max_objects}.")
        if n:
            boxes = np.asarray(boxes, np.float64)
            out_boxes[b, :n] = np.stack(
                [
                    (boxes[:, 0] + boxes[:, 2]) / (2 * w),
                    (boxes[:, 1] + boxes[:, 3]) / (2 * h),
                    (boxes[:, 2] - boxes[:, 0]) / w,
                    (boxes[:, 3] - boxes[:, 1]) / h,
                ],
                axis=-1,
            )
            out_labels[b, :n] = labels
    return {"images": images, "pixel_mask": mask}, {"boxes": out_boxes, "labels": out_labels}


# ----------------------------------------------------------------------------- validation


def _accepts_rng(fn):
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    return "rng" in params or any(p.kind is p.VAR_KEYWORD for p in params.values())


def _check_int(name, value, minimum):
    if not isinstance(value, int | np.integer) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}; got {value!r}.")


# ----------------------------------------------------------------------------- the dataset


@keras.saving.register_keras_serializable(package="kzoo")
class CocoDetection(keras.utils.PyDataset):
    """A COCO-format detection dataset as a ``keras.utils.PyDataset`` for DETR training.

    Each batch is ``({"images", "pixel_mask"}, {"boxes", "labels"})``: ``images`` float32
    ``(B, H, W, 3)`` normalised with the ImageNet mean and std and zero-padded at the bottom and
    right to the batch's largest height and width (or ``pad_to``), ``pixel_mask`` float32
    ``(B, H, W)`` 1 on image pixels and 0 on padding, ``boxes`` float32 ``(B, max_objects, 4)``
    (cx, cy, w, h) normalised by each image's own unpadded size and padded with 0, ``labels``
    int32 ``(B, max_objects)`` contiguous class indices padded with -1 — what ``DETR.fit`` and
    ``DETRLoss`` take. See the module docstring for how annotations are read.

    The whole annotation file is checked when the dataset is made; malformed JSON, a missing
    image file, an annotation with an unknown ``category_id`` or ``image_id``, a bbox that is
    not 4 numbers or has a negative width or height (and a few structural mistakes) raise a
    ``ValueError`` naming the file and the image id, annotation id or file name. An image that
    cannot be decoded (damaged, or over PIL's decompression-bomb limit
    ``PIL.Image.MAX_IMAGE_PIXELS``) raises one naming the image id and file when it is loaded.

    Every ``file_name`` must name a file inside ``image_dir``, checked on the names before any
    file is opened: a name with a ``..`` component, or an absolute path that is not under
    ``image_dir``, is refused (an annotation file from elsewhere cannot make kzoo read
    ``/etc/passwd`` or train on files outside the folder). Symbolic links inside ``image_dir``
    are followed wherever they point: only someone who can write the folder can make them, and
    datasets kept as links into a cache (git-annex, DVC) rely on that.

    Args:
        annotation_file: Path of the COCO JSON (``images``, ``annotations``, ``categories``).
        image_dir: Folder the images' ``file_name`` entries are relative to.
        batch_size: Images per batch (the last batch may be smaller).
        shuffle: Visit the images in a seeded random order, new every epoch.
        seed: Seed of the order and of the augmentation; an image's augmentation depends only on
            ``(seed, epoch, image index)``, whatever the workers.
        transforms: Optional callable ``(image, boxes, labels) -> (image, boxes, labels)``
            (uint8 ``(H, W, 3)``, pixel corner boxes ``(n, 4)``, labels ``(n,)``), such as
            ``kzoo.data.detr_transforms.DetrTrainTransform``. If it takes an ``rng`` argument
            it gets a ``numpy.random.Generator`` derived from the seed, the epoch and the image.
        max_objects: Length of the padded targets; by default the largest number of non-crowd
            boxes with a positive width and height in any image (at least 1). Must be at least
            that, and at most the model's ``num_queries``.
        pad_to: ``(height, width)`` to pad every batch to (one input shape, so one compiled
            step on JAX and TensorFlow), or ``None`` for each batch's largest image.
        pad_to_multiple: With ``pad_to=None``: round each batch's padded height and width up
            to a multiple of this (e.g. 32, the backbone's stride), so that batches of
            augmented images of many sizes share a few shapes (a few compilations).
        drop_remainder: Leave out the last batch when it would be smaller than
            ``batch_size`` (data-parallel training splits every batch evenly over devices);
            with ``shuffle=True`` other images are left out each epoch.
        exif_transpose: Apply images' EXIF orientation before anything else.
        workers: ``keras.utils.PyDataset`` worker count.
        use_multiprocessing: Workers are processes rather than threads.
        max_queue_size: Batches prepared ahead by the workers.

    Attributes:
        coco: The ``pycocotools.coco.COCO`` index of the file (for ``COCOeval``).
        image_ids: COCO image id of each image index (ascending ids).
        category_ids: COCO category id of each label (ascending).
        class_names: Category name of each label.
        label_to_category_id / category_id_to_label: The mapping as dicts.
        epoch: Epochs finished (advanced by ``on_epoch_end``; set it when resuming).

    Example:

    ```python
    from kzoo.data import CocoDetection
    from kzoo.data.detr_transforms import DetrTrainTransform
    train = CocoDetection("annotations/instances_train.json", "train_images", batch_size=2,
                          shuffle=True, transforms=DetrTrainTransform(seed=0), workers=4)
    model = kzoo.models.DETR(num_classes=train.num_classes)
    model.compile()
    model.fit(train, epochs=50)
    ```
    """

    def __init__(
        self,
        annotation_file,
        image_dir,
        batch_size=2,
        shuffle=False,
        seed=0,
        transforms=None,
        max_objects=None,
        pad_to=None,
        exif_transpose=True,
        workers=1,
        use_multiprocessing=False,
        max_queue_size=10,
        pad_to_multiple=None,
        drop_remainder=False,
    ):
        super().__init__(
            workers=workers, use_multiprocessing=use_multiprocessing, max_queue_size=max_queue_size
        )
        _check_int("batch_size", batch_size, 1)
        _check_int("seed", seed, 0)
        if not isinstance(shuffle, bool):
            raise ValueError(f"shuffle must be True or False; got {shuffle!r}.")
        if not isinstance(exif_transpose, bool):
            raise ValueError(f"exif_transpose must be True or False; got {exif_transpose!r}.")
        if not isinstance(drop_remainder, bool):
            raise ValueError(f"drop_remainder must be True or False; got {drop_remainder!r}.")
        if transforms is not None and not callable(transforms):
            raise ValueError(
                "transforms must be None or a callable (image, boxes, labels) -> (image, boxes, "
                f"labels); got {transforms!r}."
            )
        if pad_to is not None:
            try:
                pad_to = tuple(int(v) for v in pad_to)
            except (TypeError, ValueError):
                pad_to = ()
            if len(pad_to) != 2 or min(pad_to) < 1:
                raise ValueError(f"pad_to must be None or (height, width) > 0; got {pad_to!r}.")
        if pad_to_multiple is not None:
            _check_int("pad_to_multiple", pad_to_multiple, 1)
            pad_to_multiple = int(pad_to_multiple)
        if not isinstance(annotation_file, str | os.PathLike):
            raise ValueError(f"annotation_file must be a path; got {annotation_file!r}.")
        if not isinstance(image_dir, str | os.PathLike):
            raise ValueError(f"image_dir must be a path; got {image_dir!r}.")
        self.annotation_file = os.fspath(annotation_file)
        self.image_dir = os.fspath(image_dir)
        try:
            data, arrays = parse_annotations(self.annotation_file, self.image_dir)
        except InvalidAnnotations as e:
            raise ValueError(str(e)) from None

        from pycocotools.coco import COCO

        coco = COCO()
        coco.dataset = data
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
            coco.createIndex()
        self.coco = coco
        self.image_ids = np.array(sorted(coco.getImgIds()), np.int64)
        self.category_ids = [int(c) for c in sorted(coco.getCatIds())]
        self.class_names = [str(coco.cats[c].get("name", c)) for c in self.category_ids]
        self.label_to_category_id = dict(enumerate(self.category_ids))
        self.category_id_to_label = {c: k for k, c in enumerate(self.category_ids)}

        # Annotations grouped by image index, in file order within an image (as pycocotools).
        index = np.searchsorted(self.image_ids, arrays["ann_img"])
        order = np.argsort(index, kind="stable")
        self._ann_index = index[order]
        self._ann_ids = arrays["ann_ids"][order]
        self._ann_xywh = arrays["xywh"][order]
        self._ann_crowd = arrays["crowd"][order]
        self._ann_labels = np.searchsorted(self.category_ids, arrays["ann_cat"][order]).astype(
            np.int32
        )
        counts = np.bincount(self._ann_index, minlength=len(self.image_ids))
        self._ann_start = np.concatenate([[0], np.cumsum(counts)])

        usable = ~self._ann_crowd & (self._ann_xywh[:, 2] > 0) & (self._ann_xywh[:, 3] > 0)
        per_image = np.bincount(self._ann_index[usable], minlength=len(self.image_ids))
        needed = max(1, int(per_image.max()))
        if max_objects is None:
            max_objects = needed
        _check_int("max_objects", max_objects, 1)
        if max_objects < needed:
            worst = int(self.image_ids[np.argmax(per_image)])
            raise ValueError(
                f"max_objects={max_objects} is too small: image id {worst} of "
                f"{self.annotation_file} has {needed} boxes."
            )
        self.max_objects = int(max_objects)
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.transforms = transforms
        self.pad_to = pad_to
        self.pad_to_multiple = pad_to_multiple
        self.drop_remainder = drop_remainder
        if drop_remainder and self.num_images < batch_size:
            raise ValueError(
                f"{self.annotation_file} has {self.num_images} images, fewer than batch_size="
                f"{batch_size}: with drop_remainder=True there would be no batch."
            )
        self.exif_transpose = exif_transpose
        self._transforms_take_rng = transforms is not None and _accepts_rng(transforms)
        self._size_warned = False
        self.epoch = 0
        self._order = self._epoch_order()

    # ------------------------------------------------------------------ metadata

    @property
    def num_images(self):
        return len(self.image_ids)

    @property
    def num_classes(self):
        return len(self.category_ids)

    def __len__(self):
        if self.drop_remainder:
            return self.num_images // self.batch_size
        return math.ceil(self.num_images / self.batch_size)

    @property
    def num_batches(self):
        return len(self)

    @property
    def ground_truth(self):
        """The COCO dict, for ``kzoo.data.evaluate_detections`` (crowd boxes included)."""
        return self.coco.dataset

    def image_path(self, index):
        """File of image ``index`` (0-based, ascending image id)."""
        image_id = int(self.image_ids[index])
        return os.path.join(self.image_dir, self.coco.imgs[image_id]["file_name"])

    def image_size(self, index):
        """``(height, width)`` of image ``index`` as decoded (after its EXIF orientation), read
        from the file's header without decoding the pixels: the ``target_sizes`` that map
        predictions on resized images back to the original pixels."""
        from PIL import Image, UnidentifiedImageError

        index = self._check_index(index)
        path = self.image_path(index)
        try:
            with Image.open(path) as im:
                width, height = im.size
                # Orientations 5-8 turn the image by 90 degrees.
                if self.exif_transpose and im.getexif().get(0x0112) in (5, 6, 7, 8):
                    width, height = height, width
        except Image.DecompressionBombError as e:
            raise ValueError(self._unreadable(index, _too_large(path, e))) from None
        except (UnidentifiedImageError, OSError, SyntaxError) as e:
            raise ValueError(self._unreadable(index, e)) from None
        return height, width

    def _unreadable(self, index, error):
        image_id = int(self.image_ids[index])
        path = self.image_path(index)
        return f"{self.annotation_file}: image id {image_id} ({path}) cannot be read: {error}"

    def annotation_ids(self, index):
        """Ids of every annotation of image ``index``, crowd ones included, in file order."""
        start, stop = self._ann_start[index], self._ann_start[index + 1]
        return self._ann_ids[start:stop].tolist()

    def batch_image_ids(self, batch_index):
        """COCO image ids of the images in batch ``batch_index`` (this epoch's order)."""
        return self.image_ids[self._batch_indices(batch_index)].tolist()

    # ------------------------------------------------------------------ examples

    def _check_index(self, index):
        if not isinstance(index, int | np.integer) or not 0 <= index < self.num_images:
            raise IndexError(f"image index {index!r} out of range [0, {self.num_images}).")
        return int(index)

    def load_example(self, index):
        """Image ``index`` before augmentation: ``(uint8 (H, W, 3), boxes (n, 4), labels (n,))``.

        Boxes are pixel corners of the decoded image, crowd annotations left out, clipped to
        the image, and those with no extent left dropped; labels are contiguous class indices.
        """
        index = self._check_index(index)
        image_id = int(self.image_ids[index])
        path = self.image_path(index)
        try:
            image = read_image(path, exif_transpose=self.exif_transpose)
        except (ValueError, OSError) as e:
            raise ValueError(self._unreadable(index, e)) from None
        height, width = image.shape[:2]
        info = self.coco.imgs[image_id]
        if not self._size_warned and {"width", "height"} <= set(info):
            if (info["height"], info["width"]) != (height, width):
                self._size_warned = True
                warnings.warn(
                    f"{self.annotation_file}: image id {image_id} ({path}) decodes to "
                    f"{width}x{height} (width x height"
                    + (", after its EXIF orientation" if self.exif_transpose else "")
                    + f") but the annotation file says {info['width']}x{info['height']}. Boxes "
                    "are clipped to and normalised by the decoded size. If the boxes were drawn on "
                    "the stored pixel order, pass exif_transpose=False. (Further mismatches are "
                    "not reported.)",
                    stacklevel=2,
                )
        start, stop = self._ann_start[index], self._ann_start[index + 1]
        keep = ~self._ann_crowd[start:stop]
        xywh = self._ann_xywh[start:stop][keep]
        labels = self._ann_labels[start:stop][keep]
        boxes = np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1)
        boxes = np.clip(boxes, 0.0, [width, height, width, height])
        valid = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        return image, boxes[valid].astype(np.float32), labels[valid]

    def augmentation_rng(self, index, epoch=None):
        """The generator image ``index``'s transform gets in ``epoch`` (default: the current)."""
        epoch = self.epoch if epoch is None else epoch
        return np.random.default_rng([self.seed, _AUGMENT_STREAM, int(epoch), int(index)])

    def example(self, index, epoch=None):
        """Image ``index`` as it goes into a batch: :meth:`load_example` then ``transforms``."""
        image, boxes, labels = self.load_example(index)
        if self.transforms is None:
            return image, boxes, labels
        if self._transforms_take_rng:
            out = self.transforms(image, boxes, labels, rng=self.augmentation_rng(index, epoch))
        else:
            out = self.transforms(image, boxes, labels)
        return self._check_transformed(out, index)

    def _check_transformed(self, out, index):
        image_id = int(self.image_ids[index])
        where = f"transforms output for image id {image_id} of {self.annotation_file}"
        if not isinstance(out, tuple | list) or len(out) != 3:
            raise ValueError(
                f"The {where} must be (image, boxes, labels); got {type(out).__name__}."
            )
        image, boxes, labels = out
        if (
            not isinstance(image, np.ndarray)
            or image.dtype != np.uint8
            or image.ndim != 3
            or image.shape[2] != 3
            or 0 in image.shape
        ):
            raise ValueError(
                f"The {where}: image must be a non-empty uint8 (H, W, 3) array; got "
                + (
                    f"{image.dtype} {image.shape}."
                    if isinstance(image, np.ndarray)
                    else f"{image!r}."
                )
            )
        boxes = np.asarray(boxes, np.float32)
        if boxes.size == 0:
            boxes = boxes.reshape(0, 4)
        labels = np.asarray(labels)
        if boxes.ndim != 2 or boxes.shape[1] != 4 or labels.shape != (len(boxes),):
            raise ValueError(
                f"The {where}: boxes must be (n, 4) and labels (n,); got {boxes.shape} and "
                f"{labels.shape}."
            )
        if len(boxes) > self.max_objects:
            raise ValueError(
                f"The {where} has {len(boxes)} boxes, more than max_objects={self.max_objects}."
            )
        if not np.isfinite(boxes).all() or (boxes[:, 2:] < boxes[:, :2]).any():
            raise ValueError(f"The {where} has non-finite or inverted boxes: {boxes.tolist()}.")
        return image, boxes, labels.astype(np.int32)

    # ------------------------------------------------------------------ batches

    def _epoch_order(self):
        if not self.shuffle:
            return np.arange(self.num_images)
        rng = np.random.default_rng([self.seed, _ORDER_STREAM, self.epoch])
        return rng.permutation(self.num_images)

    def _batch_indices(self, batch_index):
        if not isinstance(batch_index, int | np.integer) or not 0 <= batch_index < len(self):
            raise IndexError(f"batch index {batch_index!r} out of range [0, {len(self)}).")
        start = int(batch_index) * self.batch_size
        return self._order[start : start + self.batch_size]

    def __getitem__(self, batch_index):
        examples = [self.example(int(i)) for i in self._batch_indices(batch_index)]
        try:
            return collate(examples, self.max_objects, self.pad_to, self.pad_to_multiple)
        except ValueError as e:
            ids = self.batch_image_ids(batch_index)
            raise ValueError(f"Batch {batch_index} (image ids {ids}): {e}") from None

    def on_epoch_end(self):
        self.epoch += 1
        self._order = self._epoch_order()

    def set_epoch(self, epoch):
        """Continue from ``epoch`` (its order and augmentation), e.g. after resuming training."""
        _check_int("epoch", epoch, 0)
        self.epoch = int(epoch)
        self._order = self._epoch_order()

    # ------------------------------------------------------------------ config

    def get_config(self):
        transforms = self.transforms
        if transforms is not None:
            if not hasattr(transforms, "get_config"):
                raise ValueError(
                    f"transforms {transforms!r} has no get_config, so the dataset's config "
                    "cannot hold it; use a class with get_config (e.g. DetrTrainTransform)."
                )
            transforms = keras.saving.serialize_keras_object(transforms)
        return {
            "annotation_file": self.annotation_file,
            "image_dir": self.image_dir,
            "batch_size": self.batch_size,
            "shuffle": self.shuffle,
            "seed": self.seed,
            "transforms": transforms,
            "max_objects": self.max_objects,
            "pad_to": None if self.pad_to is None else list(self.pad_to),
            "pad_to_multiple": self.pad_to_multiple,
            "drop_remainder": self.drop_remainder,
            "exif_transpose": self.exif_transpose,
            "workers": self.workers,
            "use_multiprocessing": self.use_multiprocessing,
            "max_queue_size": self.max_queue_size,
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        if config.get("transforms") is not None:
            config["transforms"] = keras.saving.deserialize_keras_object(config["transforms"])
        return cls(**config)


# ----------------------------------------------------------------------------- export


def export_coco(dataset, out_dir, overwrite=False, verbose=1):
    """Write a detection dataset as COCO files: ``images/*.png`` and ``annotations.json``.

    Args:
        dataset: A dataset with ``coco_ground_truth()`` (the COCO dict, each image's
            ``file_name`` a ``.png``) and ``sample(index) -> (uint8 image, boxes, labels)``, such
            as :class:`kzoo.data.SyntheticDetection`. Image ``k`` of the dict is ``sample(k)``.
        out_dir: Directory to create. The whole directory is written beside it and renamed into
            place, so it never holds half an export.
        overwrite: Replace ``out_dir`` if it exists and is not empty (its old contents are
            deleted); otherwise that is an error.
        verbose: 1 shows a progress bar.

    Returns:
        ``(annotation_file, image_dir)``, the arguments :class:`CocoDetection` takes.

    Example:

    ```python
    synthetic = kzoo.data.SyntheticDetection(num_images=256, image_size=96)
    ann, images = kzoo.data.export_coco(synthetic, "data/shapes_train")
    train = kzoo.data.CocoDetection(ann, images, batch_size=8, shuffle=True)
    ```
    """
    for method in ("coco_ground_truth", "sample"):
        if not callable(getattr(dataset, method, None)):
            raise ValueError(
                f"dataset must have coco_ground_truth() and sample(index) (like "
                f"SyntheticDetection); {type(dataset).__name__} has no {method}()."
            )
    if not isinstance(out_dir, str | os.PathLike):
        raise ValueError(f"out_dir must be a path; got {out_dir!r}.")
    out_dir = os.path.abspath(os.fspath(out_dir))
    if os.path.exists(out_dir):
        if not os.path.isdir(out_dir):
            raise ValueError(f"out_dir {out_dir!r} exists and is not a directory.")
        if os.listdir(out_dir) and not overwrite:
            raise ValueError(
                f"out_dir {out_dir!r} exists and is not empty; pass overwrite=True to replace it."
            )
    from PIL import Image

    ground_truth = dataset.coco_ground_truth()
    entries = ground_truth["images"]
    progress = keras.utils.Progbar(len(entries), unit_name="image") if verbose else None
    with atomic_directory(out_dir, overwrite=True) as tmp:
        image_dir = os.path.join(tmp, "images")
        os.makedirs(image_dir)
        for k, entry in enumerate(entries):
            image = dataset.sample(k)[0]
            if image.shape[:2] != (entry["height"], entry["width"]):
                raise ValueError(
                    f"sample({k}) is {image.shape[1]}x{image.shape[0]} but its COCO entry says "
                    f"{entry['width']}x{entry['height']}."
                )
            Image.fromarray(image).save(os.path.join(image_dir, entry["file_name"]), format="PNG")
            if progress is not None:
                progress.update(k + 1)
        with open(os.path.join(tmp, "annotations.json"), "w") as f:
            json.dump(ground_truth, f)
    return os.path.join(out_dir, "annotations.json"), os.path.join(out_dir, "images")
