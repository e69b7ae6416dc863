"""A synthetic object-detection dataset: coloured shapes on textured backgrounds.

Every image is generated from ``(seed, index)`` alone, so the dataset is deterministic, needs no
download and any image can be regenerated in isolation (a held-out split is just another seed).
Objects are shapes (one class per shape, each class with its own hue family, jittered) of random
size and aspect ratio, placed without overlap so that every box is the tight box of what is
visible. Backgrounds are textured (smooth colour noise, stripes and pixel noise) so that an
object cannot be found by colour thresholding alone.

Ground truth is available in two forms: the training targets DETR uses (normalised cx, cy, w, h
boxes padded with 0, labels padded with -1) and COCO-format annotations for evaluation
(:mod:`kzoo.data.coco_eval`).
"""

import json
import math

import keras
import numpy as np

from kzoo.utils.files import atomic_file

SHAPES = ("rectangle", "ellipse", "triangle", "cross", "diamond", "ring")
# Hue of each class (degrees); shapes of a class share a hue family with jitter.
_HUES = (0.0, 210.0, 120.0, 45.0, 285.0, 170.0)
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)


def _hsv_to_rgb(h, s, v):
    c = v * s
    x = c * (1 - abs((h / 60.0) % 2 - 1))
    m = v - c
    sector = int(h // 60) % 6
    r, g, b = [(c, x, 0), (x, c, 0), (0, c, x), (0, x, c), (x, 0, c), (c, 0, x)][sector]
    return np.array([r + m, g + m, b + m], np.float32)


def _shape_mask(kind, h, w):
    """Boolean (h, w) mask of a shape that touches all four sides of its h x w box."""
    y = (np.arange(h, dtype=np.float32) + 0.5) / h * 2 - 1  # -1..1 at pixel centres
    x = (np.arange(w, dtype=np.float32) + 0.5) / w * 2 - 1
    yy, xx = np.meshgrid(y, x, indexing="ij")
    # Shapes reach |x|, |y| = 1 - 1/size at the outermost pixel centres; the slack keeps the
    # outermost row and column inside the shape so the box stays tight.
    ex, ey = 1.0 + 1.0 / w, 1.0 + 1.0 / h
    if kind == "rectangle":
        return np.ones((h, w), bool)
    if kind == "ellipse":
        return (xx / ex) ** 2 + (yy / ey) ** 2 <= 1.0
    if kind == "triangle":
        # At least the centre pixel(s) in the apex row, whatever the parity of w.
        return np.abs(xx) <= np.maximum((yy + 1.0) / 2.0 * ex, 1.0 / w + 1e-6)
    if kind == "cross":
        return (np.abs(xx) <= 0.34) | (np.abs(yy) <= 0.34)
    if kind == "diamond":
        return np.abs(xx) / ex + np.abs(yy) / ey <= 1.0 + 1e-6
    if kind == "ring":
        r = (xx / ex) ** 2 + (yy / ey) ** 2
        return (r <= 1.0) & (r >= 0.3)
    raise ValueError(f"unknown shape {kind!r}")


def _texture(rng, size):
    base = rng.uniform(0.15, 0.6, size=3).astype(np.float32)
    grid = rng.normal(0, 0.12, size=(5, 5, 3)).astype(np.float32)
    # Smooth colour noise: a coarse random grid upsampled with bilinear interpolation.
    pos = np.linspace(0, 4, size, dtype=np.float32)
    i0 = np.minimum(pos.astype(int), 3)
    f = (pos - i0)[:, None]
    rows = grid[i0] * (1 - f[..., None]) + grid[i0 + 1] * f[..., None]
    smooth = rows[:, i0] * (1 - f[None, :, :]) + rows[:, i0 + 1] * f[None, :, :]
    angle = rng.uniform(0, np.pi)
    period = rng.uniform(4, 12)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    stripes = 0.06 * np.sin((xx * np.cos(angle) + yy * np.sin(angle)) * 2 * np.pi / period)
    noise = rng.normal(0, 0.04, size=(size, size, 3)).astype(np.float32)
    return np.clip(base + smooth + stripes[..., None] + noise, 0.0, 1.0)


@keras.saving.register_keras_serializable(package="kzoo")
class SyntheticDetection(keras.utils.PyDataset):
    """Coloured shapes on textured backgrounds, with boxes, as a ``keras.utils.PyDataset``.

    Each batch is ``(images, {"boxes", "labels"})``: ``images`` float32 ``(B, S, S, 3)``
    normalised with the ImageNet mean and std (as DETR expects), ``boxes`` ``(B, max_objects, 4)``
    normalised (cx, cy, w, h) padded with 0, ``labels`` int32 ``(B, max_objects)`` padded with -1.

    Args:
        num_images: Number of images.
        image_size: Side of the square images, in pixels.
        batch_size: Images per batch (the last batch may be smaller).
        num_classes: Number of shape classes, 1 to 6 (``SHAPES[:num_classes]``).
        min_objects: Fewest objects in an image (0 allows empty images).
        max_objects: Most objects in an image; also the padded target length.
        min_size: Smallest object side, as a fraction of ``image_size``.
        max_size: Largest object side, as a fraction of ``image_size``.
        seed: Seed; an image depends only on ``(seed, index)``.
        shuffle: Visit images in a new (seeded) order every epoch.
        **kwargs: ``workers``, ``use_multiprocessing``, ``max_queue_size`` of ``PyDataset``.

    Example:

    ```python
    train = kzoo.data.SyntheticDetection(num_images=512, image_size=64, batch_size=8)
    images, targets = train[0]
    coco = kzoo.data.SyntheticDetection(num_images=64, seed=1).coco_ground_truth()
    ```
    """

    def __init__(
        self,
        num_images=256,
        image_size=64,
        batch_size=8,
        num_classes=3,
        min_objects=0,
        max_objects=4,
        min_size=0.15,
        max_size=0.45,
        seed=0,
        shuffle=False,
        **kwargs,
    ):
        super().__init__(**kwargs)
        _check_int("num_images", num_images, 1)
        _check_int("image_size", image_size, 16)
        _check_int("batch_size", batch_size, 1)
        _check_int("num_classes", num_classes, 1)
        if num_classes > len(SHAPES):
            raise ValueError(f"num_classes must be at most {len(SHAPES)}; got {num_classes}.")
        _check_int("min_objects", min_objects, 0)
        _check_int("max_objects", max_objects, 1)
        if min_objects > max_objects:
            raise ValueError(
                f"min_objects ({min_objects}) must not exceed max_objects ({max_objects})."
            )
        for name, value in (("min_size", min_size), ("max_size", max_size)):
            if not isinstance(value, int | float) or not 0 < value <= 1:
                raise ValueError(f"{name} must be a fraction in (0, 1]; got {value!r}.")
        if min_size > max_size:
            raise ValueError(f"min_size ({min_size}) must not exceed max_size ({max_size}).")
        if min_size * image_size < 4:
            raise ValueError(
                f"min_size * image_size must be at least 4 pixels; got {min_size * image_size}."
            )
        _check_int("seed", seed, 0)
        self.num_images = num_images
        self.image_size = image_size
        self.batch_size = batch_size
        self.num_classes = num_classes
        self.min_objects = min_objects
        self.max_objects = max_objects
        self.min_size = float(min_size)
        self.max_size = float(max_size)
        self.seed = seed
        self.shuffle = shuffle
        self._order = np.arange(num_images)
        self._epoch = 0

    @property
    def class_names(self):
        return list(SHAPES[: self.num_classes])

    def __len__(self):
        return math.ceil(self.num_images / self.batch_size)

    @property
    def num_batches(self):
        return len(self)

    def sample(self, index):
        """Image ``index`` as ``(uint8 (S, S, 3), boxes (n, 4) xyxy pixels, labels (n,))``."""
        if not 0 <= index < self.num_images:
            raise IndexError(f"image index {index} out of range [0, {self.num_images}).")
        rng = np.random.default_rng([self.seed, int(index)])
        size = self.image_size
        image = _texture(rng, size)
        count = int(rng.integers(self.min_objects, self.max_objects + 1))
        boxes, labels = [], []
        for _ in range(count):
            for _attempt in range(30):
                side = rng.uniform(self.min_size, self.max_size) * size
                aspect = np.exp(rng.uniform(-0.35, 0.35))
                w = int(np.clip(round(side * aspect), 4, size))
                h = int(np.clip(round(side / aspect), 4, size))
                x0 = int(rng.integers(0, size - w + 1))
                y0 = int(rng.integers(0, size - h + 1))
                box = (x0, y0, x0 + w, y0 + h)
                # One pixel of clearance keeps shapes apart, so each is seen whole.
                if all(
                    box[0] > b[2] or b[0] > box[2] or box[1] > b[3] or b[1] > box[3] for b in boxes
                ):
                    break
            else:
                continue
            label = int(rng.integers(0, self.num_classes))
            hue = (_HUES[label] + rng.uniform(-15, 15)) % 360
            colour = _hsv_to_rgb(hue, rng.uniform(0.7, 1.0), rng.uniform(0.75, 1.0))
            mask = _shape_mask(SHAPES[label], h, w)
            region = image[y0 : y0 + h, x0 : x0 + w]
            shade = colour + rng.normal(0, 0.03, size=(h, w, 3)).astype(np.float32)
            region[mask] = np.clip(shade[mask], 0.0, 1.0)
            boxes.append(box)
            labels.append(label)
        image = np.round(image * 255).astype(np.uint8)
        boxes = np.array(boxes, np.float32).reshape(-1, 4)
        return image, boxes, np.array(labels, np.int32)

    def targets(self, boxes, labels):
        """Pad one image's pixel xyxy boxes and labels to DETR's training targets."""
        out_boxes = np.zeros((self.max_objects, 4), np.float32)
        out_labels = np.full((self.max_objects,), -1, np.int32)
        n = len(labels)
        if n:
            b = boxes / self.image_size
            out_boxes[:n] = np.stack(
                [
                    (b[:, 0] + b[:, 2]) / 2,
                    (b[:, 1] + b[:, 3]) / 2,
                    b[:, 2] - b[:, 0],
                    b[:, 3] - b[:, 1],
                ],
                -1,
            )
            out_labels[:n] = labels
        return out_boxes, out_labels

    @staticmethod
    def normalize(images):
        """uint8 images -> float32 normalised with the ImageNet mean and std."""
        return ((np.asarray(images, np.float32) / 255.0) - IMAGENET_MEAN) / IMAGENET_STD

    def __getitem__(self, batch_index):
        if not 0 <= batch_index < len(self):
            raise IndexError(f"batch index {batch_index} out of range [0, {len(self)}).")
        indices = self._order[
            batch_index * self.batch_size : min(
                (batch_index + 1) * self.batch_size, self.num_images
            )
        ]
        images, boxes, labels = [], [], []
        for i in indices:
            image, b, lab = self.sample(int(i))
            tb, tl = self.targets(b, lab)
            images.append(image)
            boxes.append(tb)
            labels.append(tl)
        return self.normalize(np.stack(images)), {
            "boxes": np.stack(boxes),
            "labels": np.stack(labels),
        }

    def on_epoch_end(self):
        self._epoch += 1
        if self.shuffle:
            self._order = np.random.default_rng([self.seed, 1_000_003, self._epoch]).permutation(
                self.num_images
            )

    def coco_ground_truth(self):
        """COCO-format ground truth (dict): image ids ``index + 1``, category ids ``label + 1``."""
        images, annotations = [], []
        for i in range(self.num_images):
            _, boxes, labels = self.sample(i)
            images.append(
                {
                    "id": i + 1,
                    "file_name": f"{i:06d}.png",
                    "width": self.image_size,
                    "height": self.image_size,
                }
            )
            for box, label in zip(boxes.tolist(), labels.tolist()):
                w, h = box[2] - box[0], box[3] - box[1]
                annotations.append(
                    {
                        "id": len(annotations) + 1,
                        "image_id": i + 1,
                        "category_id": label + 1,
                        "bbox": [box[0], box[1], w, h],
                        "area": w * h,
                        "iscrowd": 0,
                    }
                )
        categories = [
            {"id": k + 1, "name": name, "supercategory": "shape"}
            for k, name in enumerate(self.class_names)
        ]
        return {
            "info": {"description": f"kzoo SyntheticDetection seed={self.seed}"},
            "images": images,
            "annotations": annotations,
            "categories": categories,
        }

    def write_coco(self, path):
        """Write :meth:`coco_ground_truth` as a COCO JSON file, atomically."""
        with atomic_file(path, "w") as f:
            json.dump(self.coco_ground_truth(), f)
        return path

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def get_config(self):
        return {
            "num_images": self.num_images,
            "image_size": self.image_size,
            "batch_size": self.batch_size,
            "num_classes": self.num_classes,
            "min_objects": self.min_objects,
            "max_objects": self.max_objects,
            "min_size": self.min_size,
            "max_size": self.max_size,
            "seed": self.seed,
            "shuffle": self.shuffle,
        }


def _check_int(name, value, minimum):
    if not isinstance(value, int | np.integer) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}; got {value!r}.")
