"""DETR's augmentation: box transforms against rasterised masks and per-corner references.

The independent reference throughout: draw each box as a filled mask in its own image channel,
push the image through the same transform, and compare the mask's bounding box with the
transformed box (exactly for flips and crops of whole-pixel boxes, within a pixel or so after
bilinear resizing). A box dropped by a crop must have no mask pixels left in the crop.
"""

import keras
import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from kzoo.data import detr_transforms as T

SETTINGS = settings(max_examples=60, deadline=None)


@st.composite
def boxed_images(draw, min_side=4, max_side=40, min_box=1):
    """An (H, W, 3) image whose channel c is the filled mask of box c (integer corners)."""
    h = draw(st.integers(min_side, max_side))
    w = draw(st.integers(min_side, max_side))
    n = draw(st.integers(0, 3))
    boxes = []
    for _ in range(n):
        bw = draw(st.integers(min(min_box, w), w))
        bh = draw(st.integers(min(min_box, h), h))
        x0 = draw(st.integers(0, w - bw))
        y0 = draw(st.integers(0, h - bh))
        boxes.append((x0, y0, x0 + bw, y0 + bh))
    return _rasterise(h, w, boxes)


def _rasterise(h, w, boxes):
    image = np.zeros((h, w, 3), np.uint8)
    for c, (x0, y0, x1, y1) in enumerate(boxes):
        image[y0:y1, x0:x1, c] = 255
    return image, np.array(boxes, np.float32).reshape(-1, 4), np.arange(len(boxes))


def _mask_box(mask):
    """Bounding box (x0, y0, x1, y1), pixel edges, of a boolean mask; None if empty."""
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        return None
    return np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], np.float64)


def _detr_size_reference(h, w, size, max_size):
    """DETR's get_size_with_aspect_ratio, written from its documented rules."""
    if max_size is not None:
        short, long = min(h, w), max(h, w)
        if long / short * size > max_size:
            size = int(round(max_size * short / long))
    if min(h, w) == size:
        return h, w
    if w < h:
        return int(size * h / w), size
    return size, int(size * w / h)


@SETTINGS
@given(
    h=st.integers(1, 3000),
    w=st.integers(1, 3000),
    size=st.integers(1, 900),
    max_size=st.one_of(st.none(), st.integers(900, 1500)),
)
def test_resized_shape_follows_detr_rounding(h, w, size, max_size):
    assume(max(h, w) / min(h, w) < 50)  # DETR's formula reaches 0 pixels for thinner images
    expected = _detr_size_reference(h, w, size, max_size)
    assume(min(expected) >= 1)
    assert T.resized_shape(h, w, size, max_size) == expected


def test_resized_shape_known_values():
    # COCO-like 640x480 -> shorter side 800, longer int(800 * 640 / 480) = 1066.
    assert T.resized_shape(480, 640, 800, 1333) == (800, 1066)
    assert T.resized_shape(427, 640, 800, 1333) == (800, 1199)
    # 10:1: the long side would be 8000 > 1333, so short = round(1333 * 100 / 1000) = 133.
    assert T.resized_shape(100, 1000, 800, 1333) == (133, 1330)
    # Portrait, capped: round(1333 * 500 / 1000) = round(666.5) = 666 (round half to even).
    assert T.resized_shape(1000, 500, 800, 1333) == (1332, 666)
    assert T.resized_shape(800, 1000, 800, 1333) == (800, 1000)  # already there
    assert T.resized_shape(30, 40, (50, 60)) == (50, 60)


@SETTINGS
@given(boxed_images())
def test_hflip_matches_the_flipped_masks_and_the_corner_reference(example):
    image, boxes, labels = example
    out, out_boxes, out_labels = T.hflip(image, boxes, labels)
    w = image.shape[1]
    np.testing.assert_array_equal(out, image[:, ::-1])
    np.testing.assert_array_equal(out_labels, labels)
    for box, c in zip(out_boxes, out_labels):
        np.testing.assert_array_equal(box, _mask_box(out[..., c] > 127))
    # Corner reference: both x corners map through x -> w - x, then re-sorted.
    xs = w - boxes[:, [0, 2]]
    ref = np.stack([xs.min(1), boxes[:, 1], xs.max(1), boxes[:, 3]], 1) if len(boxes) else boxes
    np.testing.assert_array_equal(out_boxes, ref)
    twice = T.hflip(out, out_boxes, out_labels)
    np.testing.assert_array_equal(twice[0], image)
    np.testing.assert_array_equal(twice[1], boxes)


@SETTINGS
@given(boxed_images(), st.data())
def test_crop_matches_the_cropped_masks_and_drops_what_left(example, data):
    image, boxes, labels = example
    img_h, img_w = image.shape[:2]
    top = data.draw(st.integers(0, img_h - 1))
    left = data.draw(st.integers(0, img_w - 1))
    height = data.draw(st.integers(1, img_h - top))
    width = data.draw(st.integers(1, img_w - left))
    out, out_boxes, out_labels = T.crop(image, boxes, labels, (top, left, height, width))
    np.testing.assert_array_equal(out, image[top : top + height, left : left + width])
    assert len(out_boxes) == len(out_labels)
    for c in range(len(labels)):
        reference = _mask_box(out[..., c] > 127)
        kept = np.flatnonzero(out_labels == c)
        if reference is None:
            assert len(kept) == 0, f"box {c} should have been dropped"
        else:
            assert len(kept) == 1, f"box {c} should have been kept"
            np.testing.assert_array_equal(out_boxes[kept[0]], reference)
    # Kept boxes keep their original order (labels stay aligned with boxes).
    assert list(out_labels) == sorted(out_labels)


@SETTINGS
@given(boxed_images(min_side=8, max_side=48, min_box=4), st.integers(8, 64))
def test_resize_boxes_match_the_resized_masks_within_a_pixel(example, size):
    image, boxes, labels = example
    h, w = image.shape[:2]
    out, out_boxes, out_labels = T.resize(image, boxes, labels, size)
    new_h, new_w = T.resized_shape(h, w, size)
    assert out.shape == (new_h, new_w, 3)
    ratio = np.array([new_w / w, new_h / h] * 2)
    np.testing.assert_allclose(out_boxes, boxes * ratio, rtol=1e-6, atol=1e-4)
    np.testing.assert_array_equal(out_labels, labels)
    for box, c in zip(out_boxes, out_labels):
        # Thin boxes blur below the threshold when shrunk; only compare those that can show.
        if min(box[2] - box[0], box[3] - box[1]) < 3:
            continue
        reference = _mask_box(out[..., c] >= 128)
        assert reference is not None
        assert np.abs(reference - box).max() <= 1.0, (reference, box)


def test_resize_keeps_an_image_already_at_size_and_caps_the_long_side():
    image, boxes, labels = _rasterise(20, 60, [(2, 3, 10, 12)])
    out, out_boxes, _ = T.resize(image, boxes, labels, 20)
    assert out is image or np.array_equal(out, image)
    np.testing.assert_array_equal(out_boxes, boxes)
    out, out_boxes, _ = T.resize(image, boxes, labels, 40, max_size=90)
    # 60/20 * 40 = 120 > 90: short = round(90 * 20 / 60) = 30, long = int(30 * 60 / 20) = 90.
    assert out.shape[:2] == (30, 90)
    np.testing.assert_allclose(out_boxes, [[3, 4.5, 15, 18]])


def test_random_size_crop_draws_sizes_in_range_and_is_seeded():
    image, boxes, labels = _rasterise(50, 70, [(5, 5, 30, 40), (40, 10, 65, 45)])
    widths, heights = set(), set()
    for seed in range(60):
        out, b, lab = T.random_size_crop(image, boxes, labels, 20, 60, rng=seed)
        again = T.random_size_crop(image, boxes, labels, 20, 60, rng=np.random.default_rng(seed))
        np.testing.assert_array_equal(out, again[0])
        np.testing.assert_array_equal(b, again[1])
        h, w = out.shape[:2]
        assert 20 <= h <= 50 and 20 <= w <= 60
        widths.add(w)
        heights.add(h)
        assert len(b) == len(lab)
    assert len(widths) > 10 and len(heights) > 10
    # A side shorter than min_size is kept whole (DETR's randint would fail there).
    small, _, _ = _rasterise(10, 70, [])
    out, _, _ = T.random_size_crop(small, np.zeros((0, 4)), np.zeros((0,)), 20, 60, rng=0)
    assert out.shape[0] == 10 and 20 <= out.shape[1] <= 60


def test_random_hflip_probability_extremes():
    image, boxes, labels = _rasterise(6, 9, [(1, 1, 3, 5)])
    for seed in range(5):
        np.testing.assert_array_equal(
            T.random_hflip(image, boxes, labels, seed, p=1.0)[0], image[:, ::-1]
        )
        np.testing.assert_array_equal(T.random_hflip(image, boxes, labels, seed, p=0.0)[0], image)
    flips = sum(
        np.array_equal(T.random_hflip(image, boxes, labels, s)[0], image[:, ::-1])
        for s in range(200)
    )
    assert 70 < flips < 130


SMALL = dict(scales=(32, 40, 48), max_size=None, crop_resize=(32, 40), crop_size=(24, 32))


@SETTINGS
@given(boxed_images(min_side=24, max_side=48, min_box=6), st.integers(0, 2**32 - 1))
def test_train_transform_keeps_boxes_on_their_objects(example, seed):
    image, boxes, labels = example
    transform = T.DetrTrainTransform(**SMALL)
    out, out_boxes, out_labels = transform(image, boxes, labels, rng=np.random.default_rng(seed))
    assert min(out.shape[:2]) in SMALL["scales"]
    assert len(out_boxes) == len(out_labels) <= len(labels)
    assert list(out_labels) == sorted(out_labels)
    # One bilinear resize moves a thresholded edge by at most a pixel; the first resize's
    # pixel is then scaled by the final resize, at most 48 / 24 = 2 here.
    tol = 3.0
    out_h, out_w = out.shape[:2]
    for c in range(len(labels)):
        mask = out[..., c] >= 128
        kept = np.flatnonzero(out_labels == c)
        if len(kept):
            box = out_boxes[kept[0]]
            assert (box >= -1e-4).all() and box[2] <= out_w + 1e-3 and box[3] <= out_h + 1e-3
            if min(box[2] - box[0], box[3] - box[1]) >= 2 * tol:
                reference = _mask_box(mask)
                assert reference is not None
                assert np.abs(reference - box).max() <= tol, (reference, box)
        else:
            # Dropped by the crop: at most the blurred rim of the object reaches into it.
            ys, xs = np.nonzero(mask)
            near_edge = (xs < tol) | (xs >= out_w - tol) | (ys < tol) | (ys >= out_h - tol)
            assert near_edge.all()


def test_train_transform_is_deterministic_and_takes_both_branches():
    image, boxes, labels = _rasterise(60, 80, [(5, 5, 30, 40), (40, 10, 75, 55)])
    transform = T.DetrTrainTransform(**SMALL)
    shapes = set()
    for seed in range(40):
        a = transform(image, boxes, labels, rng=np.random.default_rng(seed))
        b = transform(image, boxes, labels, rng=np.random.default_rng(seed))
        for x, y in zip(a, b):
            np.testing.assert_array_equal(x, y)
        shapes.add(a[0].shape[:2])
    # The plain branch keeps the 3:4 aspect ratio; the crop branch changes it.
    aspects = {round(w / h, 2) for h, w in shapes}
    assert {round(80 / 60, 2)} < aspects
    # With a seed and no rng the transform has its own reproducible stream.
    s1 = T.DetrTrainTransform(**SMALL, seed=5)
    s2 = T.DetrTrainTransform(**SMALL, seed=5)
    for _ in range(3):
        np.testing.assert_array_equal(s1(image, boxes, labels)[0], s2(image, boxes, labels)[0])


def test_train_transform_without_the_crop_branch_is_a_plain_multiscale_resize():
    image, boxes, labels = _rasterise(30, 50, [(5, 5, 20, 25)])
    transform = T.DetrTrainTransform(scales=(16, 24), max_size=30, crop_resize=None, flip_prob=0)
    for seed in range(10):
        out, out_boxes, _ = transform(image, boxes, labels, rng=seed)
        expected = {T.resized_shape(30, 50, s, 30) for s in (16, 24)}
        assert out.shape[:2] in expected
        h, w = out.shape[:2]
        np.testing.assert_allclose(out_boxes, boxes * [w / 50, h / 30, w / 50, h / 30], rtol=1e-6)


def test_eval_transform_is_detr_resize():
    image, boxes, labels = _rasterise(30, 50, [(5, 5, 20, 25)])
    out, out_boxes, out_labels = T.DetrEvalTransform(size=40, max_size=60)(image, boxes, labels)
    # 50/30 * 40 = 66.7 > 60: short = round(60 * 30 / 50) = 36, long = int(36 * 50 / 30) = 60.
    assert out.shape == (36, 60, 3)
    np.testing.assert_allclose(out_boxes, boxes * [60 / 50, 36 / 30, 60 / 50, 36 / 30], rtol=1e-6)
    np.testing.assert_array_equal(out_labels, labels)


def test_configs_round_trip_through_keras_serialization():
    for transform in (
        T.DetrTrainTransform(scales=(32, 48), max_size=64, crop_resize=None, seed=3),
        T.DetrTrainTransform(),
        T.DetrEvalTransform(size=128, max_size=200),
    ):
        config = keras.saving.serialize_keras_object(transform)
        again = keras.saving.deserialize_keras_object(config)
        assert type(again) is type(transform) and again.get_config() == transform.get_config()
    assert T.DetrTrainTransform().get_config()["scales"] == list(range(480, 801, 32))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"scales": ()}, "scales must be a non-empty sequence of positive ints"),
        ({"scales": (32, 0)}, "scales"),
        ({"scales": (800,), "max_size": 600}, "max_size"),
        ({"crop_size": (600, 384)}, "crop_size"),
        ({"crop_resize": (400, 50.5)}, "crop_resize"),
        ({"flip_prob": 1.5}, "flip_prob"),
        ({"select_prob": -0.1}, "select_prob"),
        ({"seed": -1}, "seed"),
    ],
)
def test_train_transform_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        T.DetrTrainTransform(**kwargs)


def test_functions_reject_bad_inputs():
    image, boxes, labels = _rasterise(10, 12, [(1, 1, 4, 4)])
    with pytest.raises(ValueError, match="uint8"):
        T.hflip(image.astype(np.float32), boxes, labels)
    with pytest.raises(ValueError, match=r"boxes must be \(N, 4\)"):
        T.hflip(image, boxes[:, :3], labels)
    with pytest.raises(ValueError, match="labels must be"):
        T.hflip(image, boxes, np.arange(2))
    with pytest.raises(ValueError, match="inside"):
        T.crop(image, boxes, labels, (5, 5, 10, 4))
    with pytest.raises(ValueError, match="max_size"):
        T.resize(image, boxes, labels, 20, max_size=10)
    with pytest.raises(ValueError, match="rng"):
        T.random_hflip(image, boxes, labels, rng="seed")
    with pytest.raises(ValueError, match="min_size"):
        T.random_size_crop(image, boxes, labels, 8, 4, rng=0)
    with pytest.raises(ValueError, match="size"):
        T.DetrEvalTransform(size=0)
