"""A small COCO-format detection dataset written to disk, for the training and CLI tests.

JPEG and PNG files of different sizes, category ids that are not contiguous (3, 8, 42; listed
out of order), a crowd annotation, an image without any object, boxes of coloured rectangles
and discs on a noisy background (so that a model can learn something in a few steps).
"""

import json

import numpy as np
from PIL import Image

CATEGORIES = [{"id": 42, "name": "disc"}, {"id": 3, "name": "square"}, {"id": 8, "name": "bar"}]
COLOURS = {3: (230, 40, 40), 8: (40, 200, 60), 42: (50, 80, 230)}


def _draw(image, category, box):
    x, y, w, h = (int(v) for v in box)
    if category == 42:
        yy, xx = np.mgrid[0:h, 0:w]
        inside = ((xx - w / 2 + 0.5) / (w / 2)) ** 2 + ((yy - h / 2 + 0.5) / (h / 2)) ** 2 <= 1
        image[y : y + h, x : x + w][inside] = COLOURS[category]
    else:
        image[y : y + h, x : x + w] = COLOURS[category]


def write_coco_dataset(root, num_images=6, seed=0, name="train"):
    """Write ``root/<name>.json`` and ``root/<name>/`` images; returns ``(json path, folder)``.

    Image 1 is empty (no annotation); image 2 has a crowd annotation next to a normal one;
    even image ids are PNG, odd ones JPEG; sizes vary between 64 and 96 pixels per side.
    """
    rng = np.random.default_rng(seed)
    folder = root / name
    folder.mkdir(parents=True)
    images, annotations = [], []
    for k in range(num_images):
        image_id = 10 + 7 * k  # not contiguous either
        height, width = int(rng.integers(64, 97)), int(rng.integers(64, 97))
        pixels = rng.integers(90, 160, (height, width, 3)).astype(np.uint8)
        boxes = []
        if k != 0:
            for _ in range(1 + k % 2):
                category = int(rng.choice([3, 8, 42]))
                w = int(rng.integers(16, 30)) * (2 if category == 8 else 1)
                h = int(rng.integers(16, 30))
                w = min(w, width - 2)
                x = int(rng.integers(0, width - w))
                y = int(rng.integers(0, height - h))
                boxes.append((category, [x, y, w, h], 0))
                _draw(pixels, category, [x, y, w, h])
        if k == 1:
            boxes.append((3, [0, 0, 20, 20], 1))  # a crowd region
        ext = "png" if k % 2 == 0 else "jpg"
        file_name = f"img_{image_id}.{ext}"
        if ext == "png":
            Image.fromarray(pixels).save(folder / file_name)
        else:
            Image.fromarray(pixels).save(folder / file_name, quality=92)
        images.append({"id": image_id, "file_name": file_name, "height": height, "width": width})
        for category, box, crowd in boxes:
            annotations.append(
                {
                    "id": 100 + len(annotations),
                    "image_id": image_id,
                    "category_id": category,
                    "bbox": box,
                    "area": box[2] * box[3],
                    "iscrowd": crowd,
                }
            )
    path = root / f"{name}.json"
    path.write_text(
        json.dumps({"images": images, "annotations": annotations, "categories": CATEGORIES})
    )
    return str(path), str(folder)


def tiny_detr(num_classes=3):
    """The smallest DETR the COCO tests train: the small backbone, d_model 16, 5 queries, built."""
    from kzoo.models import DETR

    model = DETR(
        num_classes=num_classes,
        num_queries=5,
        d_model=16,
        num_heads=2,
        num_encoder_layers=1,
        num_decoder_layers=2,
        ffn_dim=16,
        dropout=0.0,
        backbone="small",
    )
    model.build((None, None, None, 3))
    return model
