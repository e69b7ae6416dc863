"""kzoo.data.CocoDetection and export_coco on real COCO-format files written by the tests.

The fixture writes images in the formats COCO-style datasets come in (RGB JPEG and PNG,
grayscale, 16-bit, CMYK, palette, float TIFF, a JPEG with an EXIF orientation tag, a file in a
subfolder) with non-contiguous category ids, a crowd box, a zero-area box, boxes partly and
wholly outside their image and an image without annotations. The expected targets are written
out by hand next to the annotations; the expected pixels come from the arrays the test wrote
(or, for lossy JPEGs, from PIL decoding the file without kzoo).
"""

import json
import os
import re
import time

import keras
import numpy as np
import pytest
from PIL import Image

from kzoo.data import CocoDetection, SyntheticDetection, evaluate_detections, export_coco
from kzoo.data.detr_transforms import DetrTrainTransform

# DETR's training step takes ~30 s to compile on JAX and TensorFlow here: those runs go to the
# slow CI step; torch (eager) runs it in the default one.
slow_unless_torch = pytest.mark.slow if keras.backend.backend() != "torch" else (lambda f: f)

MEAN = np.array([0.485, 0.456, 0.406])
STD = np.array([0.229, 0.224, 0.225])

# id, file name, (height, width) as decoded (upright for the EXIF image).
IMAGES = [
    (3, "a.jpg", (40, 56)),
    (7, "b.png", (48, 32)),
    (10, "gray.png", (30, 30)),
    (12, "deep.png", (24, 36)),
    (15, "cmyk.jpg", (32, 40)),
    (20, "rotated.jpg", (36, 28)),
    (21, "empty.png", (20, 24)),
    (25, "sub/pal.png", (26, 22)),
    (30, "float.tif", (16, 20)),
]
# Listed out of id order on purpose; labels are 0, 1, 2 for ids 1, 5, 90.
CATEGORIES = [{"id": 90, "name": "zebra"}, {"id": 1, "name": "person"}, {"id": 5, "name": "plane"}]
# (annotation id, image id, category id, bbox xywh, iscrowd), out of image order on purpose.
ANNOTATIONS = [
    (11, 7, 90, [4, 6, 10, 20], 0),
    (12, 3, 1, [5, 6, 20, 20], 0),
    (13, 3, 5, [50, 10, 20, 20], 0),  # runs past the right edge (width 56)
    (14, 3, 5, [0, 0, 30, 30], 1),  # crowd
    (15, 7, 1, [10, 10, 0, 5], 0),  # zero width
    (16, 7, 5, [40, 0, 5, 5], 0),  # wholly right of the image (width 32)
    (17, 10, 5, [-4, 2.5, 10, 10.25], 0),  # starts left of the image
    (18, 12, 1, [1, 1, 34, 22], 0),
    (19, 15, 90, [3, 4, 30, 20], 0),
    (20, 20, 1, [2, 20, 10, 12], 0),  # in upright coordinates
    (21, 20, 90, [20, 2, 8, 30], 0),
    (22, 25, 5, [1, 2, 20, 23], 0),
    (23, 30, 90, [0, 0, 20, 16], 0),
    (24, 7, 1, [0, 40, 32, 8], 0),
    (25, 12, 5, [30, 20, 10, 10], 0),  # runs past the bottom-right corner
]
# Training targets by hand: (x0, y0, x1, y1) pixels and label, in file order.
EXPECTED = {
    3: [([5, 6, 25, 26], 0), ([50, 10, 56, 30], 1)],
    7: [([4, 6, 14, 26], 2), ([0, 40, 32, 48], 0)],
    10: [([0, 2.5, 6, 12.75], 1)],
    12: [([1, 1, 35, 23], 0), ([30, 20, 36, 24], 1)],
    15: [([3, 4, 33, 24], 2)],
    20: [([2, 20, 12, 32], 0), ([20, 2, 28, 32], 2)],
    21: [],
    25: [([1, 2, 21, 25], 1)],
    30: [([0, 0, 20, 16], 2)],
}


def _write_dataset(root):
    """Write the images and the annotation JSON; returns (annotation file, image dir, pixels)."""
    rng = np.random.default_rng(0)
    image_dir = root / "images"
    (image_dir / "sub").mkdir(parents=True)
    pixels = {}

    def smooth_rgb(h, w):
        # Smooth content keeps JPEG close to the source, for the orientation check.
        yy, xx = np.mgrid[0:h, 0:w]
        return np.stack(
            [xx * 255 // max(w - 1, 1), yy * 255 // max(h - 1, 1), (xx + yy) % 256], -1
        ).astype(np.uint8)

    a = smooth_rgb(40, 56)
    Image.fromarray(a).save(image_dir / "a.jpg", quality=95)
    pixels[3] = np.asarray(Image.open(image_dir / "a.jpg").convert("RGB"))
    b = rng.integers(0, 256, (48, 32, 3), dtype=np.uint8)
    Image.fromarray(b).save(image_dir / "b.png")
    pixels[7] = b
    gray = rng.integers(0, 256, (30, 30), dtype=np.uint8)
    Image.fromarray(gray).save(image_dir / "gray.png")
    pixels[10] = np.repeat(gray[..., None], 3, -1)
    deep = rng.integers(0, 65536, (24, 36), dtype=np.uint16)
    deep[0, :4] = [65535, 128, 129, 300]
    Image.fromarray(deep).save(image_dir / "deep.png")
    assert Image.open(image_dir / "deep.png").mode.startswith("I")
    # Round half up in integers: v * 255 / 65535 never lands on .5 exactly.
    scaled = ((deep.astype(np.int64) * 255 + 32767) // 65535).astype(np.uint8)
    pixels[12] = np.repeat(scaled[..., None], 3, -1)
    Image.fromarray(smooth_rgb(32, 40)).convert("CMYK").save(image_dir / "cmyk.jpg", quality=95)
    cmyk = Image.open(image_dir / "cmyk.jpg")
    assert cmyk.mode == "CMYK"
    pixels[15] = np.asarray(cmyk.convert("RGB"))
    # Upright 36x28 image with four coloured quadrants; stored rotated 90 degrees
    # counter-clockwise, with orientation 6 ("rotate 90 clockwise to display").
    upright = np.zeros((36, 28, 3), np.uint8)
    upright[:18, :14] = (220, 30, 30)
    upright[:18, 14:] = (30, 220, 30)
    upright[18:, :14] = (30, 30, 220)
    upright[18:, 14:] = (220, 220, 30)
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(np.rot90(upright, 1)).save(
        image_dir / "rotated.jpg", exif=exif.tobytes(), quality=95
    )
    stored = np.asarray(Image.open(image_dir / "rotated.jpg").convert("RGB"))
    assert stored.shape == (28, 36, 3)
    pixels[20] = np.ascontiguousarray(np.rot90(stored, -1))
    assert np.abs(pixels[20].astype(int) - upright).mean() < 8
    empty = rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)
    Image.fromarray(empty).save(image_dir / "empty.png")
    pixels[21] = empty
    palette = np.array([[0, 0, 0], [255, 0, 0], [10, 200, 90], [40, 50, 250]], np.uint8)
    index = rng.integers(0, 4, (26, 22), dtype=np.uint8)
    pal = Image.fromarray(index)
    pal.putpalette(palette.ravel().tolist())
    assert pal.mode == "P"
    pal.save(image_dir / "sub" / "pal.png")
    pixels[25] = palette[index]
    values = rng.uniform(-0.2, 1.2, (16, 20)).astype(np.float32)
    Image.fromarray(values).save(image_dir / "float.tif")
    assert Image.open(image_dir / "float.tif").mode == "F"
    floats = np.clip(np.floor(values.astype(np.float64) * 255 + 0.5), 0, 255).astype(np.uint8)
    pixels[30] = np.repeat(floats[..., None], 3, -1)

    coco = {
        "images": [
            {"id": i, "file_name": name, "height": hw[0], "width": hw[1]}
            for i, name, hw in reversed(IMAGES)
        ],
        "annotations": [
            {
                "id": aid,
                "image_id": iid,
                "category_id": cid,
                "bbox": bbox,
                "area": bbox[2] * bbox[3],
                "iscrowd": crowd,
            }
            for aid, iid, cid, bbox, crowd in ANNOTATIONS
        ],
        "categories": CATEGORIES,
    }
    annotation_file = root / "instances.json"
    annotation_file.write_text(json.dumps(coco))
    return str(annotation_file), str(image_dir), pixels


@pytest.fixture(scope="module")
def coco_files(tmp_path_factory):
    return _write_dataset(tmp_path_factory.mktemp("coco"))


def _normalised(pixels):
    return (pixels.astype(np.float64) / 255.0 - MEAN) / STD


def test_batches_hold_the_expected_pixels_masks_and_targets(coco_files):
    annotation_file, image_dir, pixels = coco_files
    ds = CocoDetection(annotation_file, image_dir, batch_size=len(IMAGES))
    assert len(ds) == 1 and ds.num_images == 9
    assert ds.image_ids.tolist() == [i for i, _, _ in IMAGES]
    assert ds.max_objects == 3  # image 7: three non-crowd boxes with an area, before clipping
    x, y = ds[0]
    assert set(x) == {"images", "pixel_mask"} and set(y) == {"boxes", "labels"}
    assert x["images"].shape == (9, 48, 56, 3) and x["images"].dtype == np.float32
    assert x["pixel_mask"].shape == (9, 48, 56) and x["pixel_mask"].dtype == np.float32
    assert y["boxes"].shape == (9, 3, 4) and y["boxes"].dtype == np.float32
    assert y["labels"].shape == (9, 3) and y["labels"].dtype == np.int32
    for b, (image_id, name, (h, w)) in enumerate(IMAGES):
        np.testing.assert_allclose(
            x["images"][b, :h, :w], _normalised(pixels[image_id]), atol=1e-5, err_msg=name
        )
        assert (x["images"][b, h:] == 0).all() and (x["images"][b, :, w:] == 0).all()
        mask = np.zeros((48, 56), np.float32)
        mask[:h, :w] = 1
        np.testing.assert_array_equal(x["pixel_mask"][b], mask)
        expected = EXPECTED[image_id]
        n = len(expected)
        for k, (box, label) in enumerate(expected):
            x0, y0, x1, y1 = box
            cxcywh = [(x0 + x1) / 2 / w, (y0 + y1) / 2 / h, (x1 - x0) / w, (y1 - y0) / h]
            np.testing.assert_allclose(y["boxes"][b, k], cxcywh, atol=1e-6, err_msg=name)
            assert y["labels"][b, k] == label, name
        assert (y["boxes"][b, n:] == 0).all() and (y["labels"][b, n:] == -1).all()


def test_padding_is_per_batch_unless_pad_to_is_given(coco_files):
    annotation_file, image_dir, _ = coco_files
    ds = CocoDetection(annotation_file, image_dir, batch_size=2)
    assert len(ds) == 5
    shapes = [ds[i][0]["images"].shape for i in range(len(ds))]
    # Batches: (3, 7), (10, 12), (15, 20), (21, 25), (30,).
    assert shapes == [
        (2, 48, 56, 3),
        (2, 30, 36, 3),
        (2, 36, 40, 3),
        (2, 26, 24, 3),
        (1, 16, 20, 3),
    ]
    fixed = CocoDetection(annotation_file, image_dir, batch_size=2, pad_to=(50, 60))
    for i in range(len(fixed)):
        x, y = fixed[i]
        assert x["images"].shape[1:] == (50, 60, 3)
        np.testing.assert_array_equal(y["boxes"], ds[i][1]["boxes"])
    small = CocoDetection(annotation_file, image_dir, batch_size=2, pad_to=(40, 40))
    with pytest.raises(ValueError, match=re.escape("Batch 0 (image ids [3, 7])")):
        small[0]


def test_category_mapping_round_trip(coco_files):
    annotation_file, image_dir, _ = coco_files
    ds = CocoDetection(annotation_file, image_dir)
    assert ds.category_ids == [1, 5, 90] and ds.num_classes == 3
    assert ds.class_names == ["person", "plane", "zebra"]
    assert ds.label_to_category_id == {0: 1, 1: 5, 2: 90}
    for category_id in (1, 5, 90):
        assert ds.label_to_category_id[ds.category_id_to_label[category_id]] == category_id
    # Each kept box's label maps back to its annotation's category id.
    by_image = {iid: [a for a in ANNOTATIONS if a[1] == iid] for iid, _, _ in IMAGES}
    for index, (image_id, _, _) in enumerate(IMAGES):
        _, _, labels = ds.load_example(index)
        kept = [
            a
            for a in by_image[image_id]
            if a[0] in {12, 13, 11, 24, 17, 18, 25, 19, 20, 21, 22, 23}
        ]
        assert [ds.label_to_category_id[int(lab)] for lab in labels] == [a[2] for a in kept]


def test_annotations_match_pycocotools_own_parse(coco_files):
    from pycocotools.coco import COCO

    annotation_file, image_dir, _ = coco_files
    ds = CocoDetection(annotation_file, image_dir)
    reference = COCO(annotation_file)
    assert ds.image_ids.tolist() == sorted(reference.getImgIds())
    assert ds.category_ids == sorted(reference.getCatIds())
    for index, image_id in enumerate(ds.image_ids.tolist()):
        assert ds.annotation_ids(index) == reference.getAnnIds(imgIds=[image_id])
        image, boxes, labels = ds.load_example(index)
        h, w = image.shape[:2]
        expected = []
        for ann in reference.loadAnns(reference.getAnnIds(imgIds=[image_id], iscrowd=False)):
            x, y_, bw, bh = ann["bbox"]
            box = np.clip([x, y_, x + bw, y_ + bh], 0, [w, h, w, h])
            if box[2] > box[0] and box[3] > box[1]:
                expected.append((box, ds.category_id_to_label[ann["category_id"]]))
        np.testing.assert_allclose(
            boxes, np.array([e[0] for e in expected]).reshape(-1, 4), atol=1e-6
        )
        assert labels.tolist() == [e[1] for e in expected]
    # The dataset's own index is a full pycocotools COCO.
    assert ds.coco.getAnnIds(imgIds=[3], iscrowd=None) == reference.getAnnIds(
        imgIds=[3], iscrowd=None
    )


def test_exif_orientation_and_size_mismatch_warning(coco_files, tmp_path):
    annotation_file, image_dir, pixels = coco_files
    ds = CocoDetection(annotation_file, image_dir)
    image, boxes, _ = ds.load_example(5)
    assert image.shape == (36, 28, 3)
    assert [ds.image_size(i) for i in range(ds.num_images)] == [hw for _, _, hw in IMAGES]
    np.testing.assert_array_equal(image, pixels[20])
    np.testing.assert_array_equal(boxes, [[2, 20, 12, 32], [20, 2, 28, 32]])
    # Annotations drawn on the stored (unrotated) pixels: the JSON says 36 wide, 28 high.
    data = json.loads(open(annotation_file).read())
    for entry in data["images"]:
        if entry["id"] == 20:
            entry["width"], entry["height"] = 36, 28
    path = tmp_path / "raw_orientation.json"
    path.write_text(json.dumps(data))
    raw = CocoDetection(str(path), image_dir)
    with pytest.warns(UserWarning, match=r"image id 20 .* exif_transpose=False"):
        raw.load_example(5)
    stored = CocoDetection(str(path), image_dir, exif_transpose=False)
    image, _, _ = stored.load_example(5)
    np.testing.assert_array_equal(image, np.rot90(pixels[20], 1))
    assert stored.image_size(5) == (28, 36)


def test_shuffle_is_seeded_per_epoch_and_augmentation_is_reproducible(coco_files):
    annotation_file, image_dir, _ = coco_files
    transform = DetrTrainTransform(
        scales=(24, 32), max_size=64, crop_resize=(24,), crop_size=(16, 24)
    )
    make = lambda seed: CocoDetection(  # noqa: E731
        annotation_file, image_dir, batch_size=3, shuffle=True, seed=seed, transforms=transform
    )
    a, b, c = make(1), make(1), make(2)
    orders = []
    for _ in range(3):
        ids = [a.batch_image_ids(i) for i in range(len(a))]
        assert ids == [b.batch_image_ids(i) for i in range(len(b))]
        assert sorted(sum(ids, [])) == a.image_ids.tolist()
        for i in range(len(a)):
            for p, q in zip(keras.tree.flatten(a[i]), keras.tree.flatten(b[i])):
                np.testing.assert_array_equal(p, q)
        orders.append(sum(ids, []))
        a.on_epoch_end()
        b.on_epoch_end()
    assert len({tuple(o) for o in orders}) == 3
    assert [c.batch_image_ids(i) for i in range(len(c))] != [
        make(1).batch_image_ids(i) for i in range(3)
    ]
    # The same image is augmented differently in different epochs.
    fresh = make(1)
    first = fresh.example(0)
    fresh.set_epoch(1)
    assert not all(np.array_equal(p, q) for p, q in zip(first, fresh.example(0)))
    np.testing.assert_array_equal(fresh.example(0, epoch=0)[0], first[0])


@pytest.mark.parametrize("use_multiprocessing", [False, True])
def test_workers_give_the_same_batches(coco_files, use_multiprocessing):
    from keras.src.trainers.data_adapters.py_dataset_adapter import PyDatasetAdapter

    annotation_file, image_dir, _ = coco_files
    transform = DetrTrainTransform(
        scales=(24, 32), max_size=64, crop_resize=(24,), crop_size=(16, 24)
    )
    kwargs = dict(batch_size=2, shuffle=True, seed=4, transforms=transform)
    reference = CocoDetection(annotation_file, image_dir, **kwargs)
    ds = CocoDetection(
        annotation_file,
        image_dir,
        workers=2,
        use_multiprocessing=use_multiprocessing,
        max_queue_size=4,
        **kwargs,
    )
    adapter = PyDatasetAdapter(ds, shuffle=False)
    for epoch in range(2):
        adapter.on_epoch_begin()
        batches = list(adapter.get_numpy_iterator())
        adapter.on_epoch_end()
        assert len(batches) == len(reference)
        for i, batch in enumerate(batches):
            for p, q in zip(keras.tree.flatten(batch), keras.tree.flatten(reference[i])):
                np.testing.assert_array_equal(p, q, err_msg=f"epoch {epoch} batch {i}")
        reference.on_epoch_end()
    assert ds.epoch == 2


def _write_json(tmp_path, data, name="bad.json"):
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return str(path)


def _valid(image_dir):
    with open(os.path.join(os.path.dirname(image_dir), "instances.json")) as f:
        return json.load(f)


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda d: '{"images": [', r"not valid JSON: .* line 1"),
        (
            lambda d: d["images"][0].update(file_name="nope.jpg"),
            r"image id 30 names file 'nope.jpg', which is not in image_dir",
        ),
        (
            lambda d: d["annotations"][1].update(category_id=42),
            r"annotation id 12 \(image id 3\) has category_id 42, which is not in 'categories' \(ids 1, 5, 90\)",
        ),
        (
            lambda d: d["annotations"][2].update(bbox=[1, 2, -3, 4]),
            r"annotation id 13 \(image id 3\) has bbox \[1, 2, -3, 4\]; expected 4 finite numbers",
        ),
        (
            lambda d: d["annotations"][3].update(bbox=[1, 2, 3]),
            r"annotation id 14 \(image id 3\) has bbox \[1, 2, 3\]",
        ),
        (
            lambda d: d["annotations"][3].update(bbox=["1", 2, 3, 4]),
            r"annotation id 14 \(image id 3\) has bbox \['1', 2, 3, 4\]",
        ),
        (
            lambda d: d["annotations"][0].update(bbox=[1, 2, 3, 4, 5]),
            r"annotation id 11 \(image id 7\) has bbox",
        ),
        (
            lambda d: d["annotations"][4].update(image_id=999),
            r"annotation id 15 refers to image id 999, which is not in 'images'",
        ),
        (lambda d: d["annotations"][5].update(id=11), r"annotation id 11 appears more than once"),
        (lambda d: d["images"][2].update(id=3), r"image id 3 appears 2 times"),
        (lambda d: d.pop("categories"), r"'categories' must be a list; it is missing"),
        (lambda d: d["annotations"][0].update(iscrowd=2), r"annotation id 11 has iscrowd 2"),
        (
            lambda d: d["annotations"][0].pop("image_id"),
            r"annotation id 11 needs an integer 'image_id'",
        ),
    ],
)
def test_bad_annotation_files_are_named_errors(coco_files, tmp_path, edit, message):
    _, image_dir, _ = coco_files
    data = _valid(image_dir)
    result = edit(data)
    path = _write_json(tmp_path, result if isinstance(result, str) else data)
    with pytest.raises(ValueError, match=re.escape(path) + ": " + message):
        CocoDetection(path, image_dir)


def test_bad_arguments_and_unreadable_images(coco_files, tmp_path):
    annotation_file, image_dir, _ = coco_files
    with pytest.raises(ValueError, match="does not exist"):
        CocoDetection(str(tmp_path / "missing.json"), image_dir)
    with pytest.raises(ValueError, match="image_dir"):
        CocoDetection(annotation_file, str(tmp_path / "nowhere"))
    with pytest.raises(ValueError, match=r"max_objects=2 is too small: image id 7"):
        CocoDetection(annotation_file, image_dir, max_objects=2)
    for kwargs, match in (
        ({"batch_size": 0}, "batch_size"),
        ({"shuffle": 1}, "shuffle"),
        ({"transforms": "flip"}, "transforms"),
        ({"pad_to": (10,)}, "pad_to"),
        ({"seed": -1}, "seed"),
    ):
        with pytest.raises(ValueError, match=match):
            CocoDetection(annotation_file, image_dir, **kwargs)
    # A file that exists but is not an image fails when loaded, naming the image.
    data = _valid(image_dir)
    junk_dir = tmp_path / "junk"
    junk_dir.mkdir()
    (junk_dir / "junk.png").write_bytes(b"not a png")
    data = {
        "images": [{"id": 5, "file_name": "junk.png"}],
        "annotations": [],
        "categories": data["categories"],
    }
    ds = CocoDetection(_write_json(tmp_path, data), str(junk_dir))
    with pytest.raises(ValueError, match=r"image id 5 .*junk.png.* cannot be read"):
        ds[0]
    # A transform that breaks the contract is named with the image.
    bad = CocoDetection(
        annotation_file, image_dir, transforms=lambda im, b, lab: (im, b[:, :2], lab)
    )
    with pytest.raises(ValueError, match=r"transforms output for image id 3"):
        bad[0]


def test_validation_of_ten_thousand_annotations_is_fast(tmp_path):
    rng = np.random.default_rng(0)
    image_dir = tmp_path / "images"
    image_dir.mkdir()
    images = []
    for i in range(1000):
        (image_dir / f"{i:05d}.jpg").touch()  # validation checks existence, not contents
        images.append({"id": i * 3 + 1, "file_name": f"{i:05d}.jpg", "height": 480, "width": 640})
    xy = rng.uniform(0, 400, (10_000, 2))
    wh = rng.uniform(1, 200, (10_000, 2))
    annotations = [
        {
            "id": k + 1,
            "image_id": int(rng.integers(1000)) * 3 + 1,
            "category_id": int(rng.choice([1, 5, 90])),
            "bbox": [float(xy[k, 0]), float(xy[k, 1]), float(wh[k, 0]), float(wh[k, 1])],
            "area": float(wh[k, 0] * wh[k, 1]),
            "iscrowd": int(k % 50 == 0),
        }
        for k in range(10_000)
    ]
    data = {"images": images, "annotations": annotations, "categories": CATEGORIES}
    path = _write_json(tmp_path, data, "big.json")
    start = time.perf_counter()
    ds = CocoDetection(path, str(image_dir), batch_size=4)
    seconds = time.perf_counter() - start
    print(f"\nCocoDetection construction, 10,000 annotations / 1,000 images: {seconds:.3f} s")
    assert seconds < 2.0
    assert ds.num_images == 1000 and sum(len(ds.annotation_ids(i)) for i in range(1000)) == 10_000
    # The bad annotation is the last one: the whole file is checked, not a prefix.
    annotations[-1]["bbox"][2] = -1.0
    with pytest.raises(ValueError, match="annotation id 10000"):
        CocoDetection(_write_json(tmp_path, data, "big_bad.json"), str(image_dir))


def test_config_round_trip(coco_files):
    annotation_file, image_dir, _ = coco_files
    transform = DetrTrainTransform(scales=(24, 32), max_size=64, crop_resize=None)
    ds = CocoDetection(
        annotation_file,
        image_dir,
        batch_size=3,
        shuffle=True,
        seed=2,
        transforms=transform,
        pad_to=(64, 64),
    )
    config = ds.get_config()
    again = CocoDetection.from_config(json.loads(json.dumps(config)))
    assert again.get_config() == config
    for p, q in zip(keras.tree.flatten(ds[1]), keras.tree.flatten(again[1])):
        np.testing.assert_array_equal(p, q)
    with pytest.raises(ValueError, match="get_config"):
        CocoDetection(annotation_file, image_dir, transforms=lambda *a: a).get_config()


def test_export_coco_round_trips_synthetic_detection(tmp_path):
    synthetic = SyntheticDetection(
        num_images=6, image_size=32, batch_size=6, min_objects=1, max_objects=3, min_size=0.2
    )
    out = tmp_path / "shapes"
    annotation_file, image_dir = export_coco(synthetic, out, verbose=0)
    assert sorted(os.listdir(out)) == ["annotations.json", "images"]
    assert sorted(os.listdir(image_dir)) == [f"{i:06d}.png" for i in range(6)]
    with open(annotation_file) as f:
        assert json.load(f) == json.loads(json.dumps(synthetic.coco_ground_truth()))
    ds = CocoDetection(annotation_file, image_dir, batch_size=6, max_objects=3)
    x, y = ds[0]
    images, targets = synthetic[0]
    np.testing.assert_array_equal(x["images"], images)
    assert (x["pixel_mask"] == 1).all()
    np.testing.assert_allclose(y["boxes"], targets["boxes"], atol=1e-6)
    np.testing.assert_array_equal(y["labels"], targets["labels"])
    # Perfect detections score AP 1 through pycocotools with the dataset's category mapping.
    detections = []
    for index in range(ds.num_images):
        _, boxes, labels = ds.load_example(index)
        detections.append({"boxes": boxes, "scores": np.ones(len(labels)), "labels": labels})
    metrics = evaluate_detections(
        detections, ds.ground_truth, category_ids=ds.category_ids, image_ids=ds.image_ids.tolist()
    )
    assert metrics["AP"] == pytest.approx(1.0)


class _FailingDataset(SyntheticDetection):
    """A dataset whose fourth image cannot be produced."""

    def sample(self, index):
        if index == 3:
            raise RuntimeError("image 3 is unavailable")
        return super().sample(index)


def test_export_coco_refuses_non_empty_directories_and_is_atomic(tmp_path):
    synthetic = SyntheticDetection(num_images=3, image_size=24, min_size=0.2)
    out = tmp_path / "out"
    out.mkdir()  # an existing empty directory is fine
    export_coco(synthetic, out, verbose=0)
    before = sorted(os.listdir(out / "images"))
    with pytest.raises(ValueError, match="not empty; pass overwrite=True"):
        export_coco(synthetic, out, verbose=0)
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="not a directory"):
        export_coco(synthetic, tmp_path / "file", verbose=0)
    failing = _FailingDataset(num_images=5, image_size=24, min_size=0.2)
    with pytest.raises(RuntimeError, match="unavailable"):
        export_coco(failing, out, overwrite=True, verbose=0)
    assert sorted(os.listdir(out / "images")) == before  # the old export is untouched
    with pytest.raises(RuntimeError):
        export_coco(failing, tmp_path / "new", verbose=0)
    assert sorted(os.listdir(tmp_path)) == ["file", "out"]  # no half export, no temporaries
    export_coco(
        SyntheticDetection(num_images=4, image_size=24, min_size=0.2),
        out,
        overwrite=True,
        verbose=0,
    )
    assert len(os.listdir(out / "images")) == 4
    with pytest.raises(ValueError, match="coco_ground_truth"):
        export_coco(object(), tmp_path / "x", verbose=0)


@slow_unless_torch
def test_detr_fits_two_steps_on_a_coco_dataset(tmp_path):
    from kzoo.models import DETR

    rng = np.random.default_rng(1)
    image_dir = tmp_path / "images"
    image_dir.mkdir()
    images, annotations = [], []
    for i in range(4):
        Image.fromarray(rng.integers(0, 256, (64, 80, 3), dtype=np.uint8)).save(
            image_dir / f"{i}.png"
        )
        images.append({"id": i + 1, "file_name": f"{i}.png", "height": 64, "width": 80})
        for k in range(i % 3):
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": i + 1,
                    "category_id": (2, 7)[k % 2],
                    "bbox": [8 + 20 * k, 10, 16, 24],
                    "area": 384,
                    "iscrowd": 0,
                }
            )
    data = {
        "images": images,
        "annotations": annotations,
        "categories": [{"id": 7, "name": "b"}, {"id": 2, "name": "a"}],
    }
    # Scale 64 keeps the 64x80 size: only flips, so every step has the same input shape.
    flip = DetrTrainTransform(scales=(64,), max_size=80, crop_resize=None)
    ds = CocoDetection(
        _write_json(tmp_path, data, "train.json"),
        str(image_dir),
        batch_size=2,
        shuffle=True,
        transforms=flip,
    )
    model = DETR(
        num_classes=ds.num_classes,
        num_queries=5,
        d_model=16,
        num_heads=4,
        num_encoder_layers=1,
        num_decoder_layers=2,
        ffn_dim=24,
        backbone="small",
    )
    model.compile()
    history = model.fit(ds, epochs=1, verbose=0)
    assert int(keras.ops.convert_to_numpy(model.optimizer.iterations)) == 2
    assert np.isfinite(history.history["loss"]).all()


@pytest.mark.backends("torch")
def test_loader_benchmark_script_runs():
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    out = subprocess.run(
        [
            sys.executable,
            os.path.join(root, "scripts", "bench", "coco_loader.py"),
            "--images=8",
            "--image-size=32",
            "--size=48",
            "--workers=1",
            "--repeats=1",
        ],
        capture_output=True,
        text=True,
        check=True,
        env=dict(
            os.environ,
            KERAS_BACKEND=keras.backend.backend(),
            PYTHONPATH=os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p),
        ),
    )
    rows = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    assert [r["pipeline"] for r in rows] == ["plain", "eval", "train"]
    assert all(r["images_per_second"] > 0 for r in rows)


def test_pad_to_multiple_rounds_each_batch_up(coco_files):
    annotation_file, image_dir, _ = coco_files
    plain = CocoDetection(annotation_file, image_dir, batch_size=2)
    ds = CocoDetection(annotation_file, image_dir, batch_size=2, pad_to_multiple=16)
    for i in range(len(ds)):
        (x, y), (px, py) = ds[i], plain[i]
        h, w = px["images"].shape[1:3]
        assert x["images"].shape[1:3] == (-(-h // 16) * 16, -(-w // 16) * 16)
        np.testing.assert_array_equal(x["images"][:, :h, :w], px["images"])
        assert not x["images"][:, h:].any() and not x["pixel_mask"][:, h:].any()
        np.testing.assert_array_equal(y["boxes"], py["boxes"])
    assert ds.get_config()["pad_to_multiple"] == 16
    with pytest.raises(ValueError, match="pad_to_multiple"):
        CocoDetection(annotation_file, image_dir, pad_to_multiple=0)


def test_drop_remainder_leaves_out_the_last_partial_batch(coco_files):
    annotation_file, image_dir, _ = coco_files
    ds = CocoDetection(annotation_file, image_dir, batch_size=4, drop_remainder=True, shuffle=True)
    assert ds.num_images == 9 and len(ds) == 2
    for epoch in range(3):
        ds.set_epoch(epoch)
        ids = [ds.batch_image_ids(b) for b in range(len(ds))]
        assert all(len(batch) == 4 for batch in ids) and len(set(sum(ids, []))) == 8
    with pytest.raises(IndexError):
        ds[2]
    assert CocoDetection.from_config(ds.get_config()).drop_remainder is True
    with pytest.raises(ValueError, match="fewer than batch_size"):
        CocoDetection(annotation_file, image_dir, batch_size=10, drop_remainder=True)
    with pytest.raises(ValueError, match="drop_remainder"):
        CocoDetection(annotation_file, image_dir, drop_remainder=1)


def _one_category_set(root, file_names, make_dir=True):
    """An annotation file naming ``file_names`` (image ids 1, 2, ...), without annotations."""
    image_dir = root / "images"
    if make_dir:
        image_dir.mkdir(parents=True, exist_ok=True)
    coco = {
        "images": [{"id": k + 1, "file_name": name} for k, name in enumerate(file_names)],
        "annotations": [],
        "categories": [{"id": 1, "name": "thing"}],
    }
    path = root / "instances.json"
    path.write_text(json.dumps(coco))
    return str(path), str(image_dir)


def test_every_exif_orientation_gives_the_size_and_pixels_a_viewer_shows(tmp_path):
    """Issue #24 item 12: orientations 5 to 8 all turn the image by 90 degrees (5 and 7
    transpose), not only 6 and 8; the sizes come from the header, the pixels from decoding."""
    from PIL import ImageOps

    rng = np.random.default_rng(3)
    names = [f"o{orientation}.png" for orientation in range(1, 9)]
    annotation_file, image_dir = _one_category_set(tmp_path, names)
    for orientation, name in zip(range(1, 9), names):
        exif = Image.Exif()
        exif[0x0112] = orientation
        stored = rng.integers(0, 256, (12, 20, 3), dtype=np.uint8)  # 20 wide, 12 high
        Image.fromarray(stored).save(os.path.join(image_dir, name), exif=exif.tobytes())
    ds = CocoDetection(annotation_file, image_dir)
    raw = CocoDetection(annotation_file, image_dir, exif_transpose=False)
    # By hand: 1-4 keep the stored 12x20 (mirrors, 180 degrees), 5-8 swap height and width.
    assert [ds.image_size(i) for i in range(8)] == [(12, 20)] * 4 + [(20, 12)] * 4
    assert [raw.image_size(i) for i in range(8)] == [(12, 20)] * 8
    for index, name in enumerate(names):
        with Image.open(os.path.join(image_dir, name)) as im:
            assert im.getexif().get(0x0112) == index + 1
            upright = np.asarray(ImageOps.exif_transpose(im).convert("RGB"))
            stored = np.asarray(im.convert("RGB"))
        assert ds.image_size(index) == upright.shape[:2]
        np.testing.assert_array_equal(ds.load_example(index)[0], upright)
        np.testing.assert_array_equal(raw.load_example(index)[0], stored)


@pytest.mark.parametrize(
    "file_name",
    ["../outside.png", "sub/../../outside.png", "{outside}", "/etc/passwd", "../images/a.png"],
)
def test_file_names_outside_image_dir_are_refused_before_any_is_read(tmp_path, file_name):
    """Issue #24 item 8: a file_name may not leave image_dir (``..``, absolute paths)."""
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "outside.png")
    file_name = file_name.format(outside=tmp_path / "outside.png")
    annotation_file, image_dir = _one_category_set(tmp_path, ["a.png", file_name])
    (tmp_path / "images" / "sub").mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "images" / "a.png")
    message = f"image id 2 names file {file_name!r}, which is outside image_dir"
    with pytest.raises(ValueError, match=re.escape(message)):
        CocoDetection(annotation_file, image_dir)


def test_links_and_absolute_names_inside_image_dir_are_followed(tmp_path):
    # The documented rule: what the user put inside image_dir is theirs to point anywhere.
    outside = np.full((6, 10, 3), 77, np.uint8)
    Image.fromarray(outside).save(tmp_path / "cache.png")
    inside = np.full((8, 8, 3), 5, np.uint8)
    absolute = str(tmp_path / "images" / "b.png")
    annotation_file, image_dir = _one_category_set(tmp_path, ["link.png", absolute, "..b.png"])
    os.symlink(tmp_path / "cache.png", tmp_path / "images" / "link.png")
    Image.fromarray(inside).save(absolute)
    Image.fromarray(inside).save(tmp_path / "images" / "..b.png")
    ds = CocoDetection(annotation_file, image_dir)
    np.testing.assert_array_equal(ds.load_example(0)[0], outside)
    np.testing.assert_array_equal(ds.load_example(1)[0], inside)
    np.testing.assert_array_equal(ds.load_example(2)[0], inside)


def test_decompression_bomb_names_the_image_id_and_file(tmp_path, monkeypatch):
    """Issue #24 item 9: PIL's DecompressionBombError becomes a ValueError naming the image."""
    annotation_file, image_dir = _one_category_set(tmp_path, ["small.png", "big.png"])
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(os.path.join(image_dir, "small.png"))
    Image.fromarray(np.zeros((40, 60, 3), np.uint8)).save(os.path.join(image_dir, "big.png"))
    # Twice the limit is PIL's error (below that, a warning): 2400 pixels > 2 * 1000.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    ds = CocoDetection(annotation_file, image_dir, batch_size=2)
    message = r"image id 2 \(.*big\.png\) cannot be read: .*too large to decode safely"
    for read in (lambda: ds.load_example(1), lambda: ds.image_size(1), lambda: ds[0]):
        with pytest.raises(ValueError, match=message):
            read()
    assert ds.image_size(0) == (8, 8)
