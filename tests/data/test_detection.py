"""The synthetic detection dataset: determinism, target format, boxes and COCO annotations."""

import json

import numpy as np
import pytest

from kzoo.data.detection import SHAPES, SyntheticDetection, _shape_mask


def test_batches_have_the_training_format():
    ds = SyntheticDetection(num_images=10, image_size=48, batch_size=4, max_objects=5)
    assert len(ds) == 3
    images, targets = ds[0]
    assert images.shape == (4, 48, 48, 3) and images.dtype == np.float32
    assert targets["boxes"].shape == (4, 5, 4) and targets["boxes"].dtype == np.float32
    assert targets["labels"].shape == (4, 5) and targets["labels"].dtype == np.int32
    assert ds[2][0].shape[0] == 2  # last, partial batch
    # Normalised with the ImageNet statistics: uint8 0..255 maps into about [-2.2, 2.7].
    assert images.min() >= -2.2 and images.max() <= 2.7
    for b in range(4):
        _, boxes, labels = ds.sample(b)
        n = len(labels)
        np.testing.assert_array_equal(targets["labels"][b, :n], labels)
        assert (targets["labels"][b, n:] == -1).all() and (targets["boxes"][b, n:] == 0).all()
        cx, cy, w, h = targets["boxes"][b, :n].T
        np.testing.assert_allclose(cx - w / 2, boxes[:, 0] / 48, atol=1e-6)
        np.testing.assert_allclose(cy + h / 2, boxes[:, 3] / 48, atol=1e-6)


def test_deterministic_and_seed_dependent():
    a = SyntheticDetection(num_images=6, seed=3)
    b = SyntheticDetection(num_images=6, seed=3)
    c = SyntheticDetection(num_images=6, seed=4)
    for i in range(6):
        np.testing.assert_array_equal(a.sample(i)[0], b.sample(i)[0])
    assert any(not np.array_equal(a.sample(i)[0], c.sample(i)[0]) for i in range(6))
    np.testing.assert_array_equal(a[0][0], b[0][0])


def test_object_counts_sizes_classes_and_no_overlap():
    ds = SyntheticDetection(
        num_images=60, image_size=64, num_classes=4, max_objects=4, min_size=0.2, max_size=0.4
    )
    counts, seen = [], set()
    for i in range(ds.num_images):
        image, boxes, labels = ds.sample(i)
        assert image.dtype == np.uint8 and image.shape == (64, 64, 3)
        counts.append(len(labels))
        seen.update(labels.tolist())
        w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
        assert ((w >= 4) & (h >= 4)).all() and (boxes >= 0).all() and (boxes <= 64).all()
        assert (np.maximum(w, h) <= 0.4 * 64 * 1.5).all()
        for p in range(len(boxes)):
            for q in range(p):
                a, b = boxes[p], boxes[q]
                assert a[0] > b[2] or b[0] > a[2] or a[1] > b[3] or b[1] > a[3]
    assert min(counts) == 0 and max(counts) == 4
    assert seen == {0, 1, 2, 3}


@pytest.mark.parametrize("kind", SHAPES)
def test_shapes_touch_every_side_of_their_box(kind):
    for h, w in ((4, 4), (7, 10), (16, 11), (25, 25)):
        m = _shape_mask(kind, h, w)
        assert m[0].any() and m[-1].any() and m[:, 0].any() and m[:, -1].any()
        assert 0.2 < m.mean() <= 1.0


def test_objects_are_drawn_where_their_boxes_are():
    ds = SyntheticDetection(num_images=8, min_objects=2, max_objects=2, min_size=0.3)
    for i in range(8):
        image, boxes, labels = ds.sample(i)
        for box, label in zip(boxes.astype(int), labels):
            region = image[box[1] : box[3], box[0] : box[2]].astype(float)
            mask = _shape_mask(SHAPES[label], box[3] - box[1], box[2] - box[0])
            # Object pixels share one colour (small noise); the background varies more.
            assert region[mask].std(axis=0).max() < 12


def test_shuffle_is_seeded_and_changes_per_epoch():
    a = SyntheticDetection(num_images=8, batch_size=8, shuffle=True, seed=1)
    b = SyntheticDetection(num_images=8, batch_size=8, shuffle=True, seed=1)
    first = a[0][0]
    a.on_epoch_end()
    b.on_epoch_end()
    np.testing.assert_array_equal(a[0][0], b[0][0])
    assert not np.array_equal(a[0][0], first)
    assert sorted(a._order.tolist()) == list(range(8))


def test_coco_annotations(tmp_path):
    ds = SyntheticDetection(num_images=5, image_size=32, min_size=0.2, num_classes=2)
    gt = ds.coco_ground_truth()
    assert [img["id"] for img in gt["images"]] == [1, 2, 3, 4, 5]
    assert [c["name"] for c in gt["categories"]] == ["rectangle", "ellipse"]
    total = sum(len(ds.sample(i)[2]) for i in range(5))
    assert len(gt["annotations"]) == total
    ann = gt["annotations"][0]
    _, boxes, labels = ds.sample(ann["image_id"] - 1)
    assert ann["bbox"] == pytest.approx([*boxes[0, :2], *(boxes[0, 2:] - boxes[0, :2])])
    assert ann["category_id"] == labels[0] + 1 and ann["id"] >= 1
    path = ds.write_coco(tmp_path / "gt.json")
    assert json.loads(path.read_text()) == json.loads(json.dumps(gt))
    from pycocotools.coco import COCO  # the file loads in the reference tool

    assert len(COCO(str(path)).getAnnIds()) == total


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="num_classes"):
        SyntheticDetection(num_classes=7)
    with pytest.raises(ValueError, match="min_objects"):
        SyntheticDetection(min_objects=5, max_objects=2)
    with pytest.raises(ValueError, match="max_size"):
        SyntheticDetection(max_size=1.5)
    with pytest.raises(ValueError, match="image_size"):
        SyntheticDetection(image_size=8)
    with pytest.raises(IndexError):
        SyntheticDetection(num_images=2)[5]
    restored = SyntheticDetection.from_config(SyntheticDetection(seed=9).get_config())
    assert restored.seed == 9
