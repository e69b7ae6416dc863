"""Box conversions, IoU and GIoU: properties (hypothesis) and a float64 reference."""

import keras
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from kzoo.ops import box_ops

coord = st.floats(0.0, 1.0)
size = st.floats(0.01, 1.0)


@st.composite
def xyxy_boxes(draw, n=3):
    # A fixed count: JAX compiles its eager ops once per shape.
    x0 = np.array([draw(coord) for _ in range(n)])
    y0 = np.array([draw(coord) for _ in range(n)])
    w = np.array([draw(size) for _ in range(n)])
    h = np.array([draw(size) for _ in range(n)])
    return np.stack([x0, y0, x0 + w, y0 + h], -1).astype(np.float32)


def np_(x):
    return keras.ops.convert_to_numpy(x)


def reference_giou(a, b):
    """Pairwise IoU and GIoU in float64, written out box by box."""
    iou = np.zeros((len(a), len(b)))
    giou = np.zeros((len(a), len(b)))
    for i, p in enumerate(a.astype(np.float64)):
        for j, q in enumerate(b.astype(np.float64)):
            iw = max(0.0, min(p[2], q[2]) - max(p[0], q[0]))
            ih = max(0.0, min(p[3], q[3]) - max(p[1], q[1]))
            inter = iw * ih
            union = (p[2] - p[0]) * (p[3] - p[1]) + (q[2] - q[0]) * (q[3] - q[1]) - inter
            hull = (max(p[2], q[2]) - min(p[0], q[0])) * (max(p[3], q[3]) - min(p[1], q[1]))
            iou[i, j] = inter / union
            giou[i, j] = inter / union - (hull - union) / hull
    return iou, giou


@settings(max_examples=12, deadline=None)
@given(xyxy_boxes(), xyxy_boxes(n=4))
def test_giou_matches_reference_and_is_bounded(a, b):
    iou = np_(box_ops.box_iou(a, b))
    giou = np_(box_ops.generalized_box_iou(a, b))
    ref_iou, ref_giou = reference_giou(a, b)
    np.testing.assert_allclose(iou, ref_iou, atol=1e-5)
    np.testing.assert_allclose(giou, ref_giou, atol=1e-5)
    assert giou.shape == (len(a), len(b))
    assert (giou >= -1 - 1e-6).all() and (giou <= 1 + 1e-6).all()
    assert (giou <= iou + 1e-6).all()


@settings(max_examples=12, deadline=None)
@given(xyxy_boxes(), xyxy_boxes(n=4))
def test_giou_is_symmetric(a, b):
    np.testing.assert_allclose(
        np_(box_ops.generalized_box_iou(a, b)), np_(box_ops.generalized_box_iou(b, a)).T, atol=1e-6
    )


@settings(max_examples=12, deadline=None)
@given(xyxy_boxes(n=1), st.floats(0.0, 1.0), st.floats(0.0, 1.0), st.floats(0.05, 1.0))
def test_giou_equals_iou_when_one_box_contains_the_other(outer, fx, fy, scale):
    x0, y0, x1, y1 = outer[0].astype(np.float64)
    w, h = (x1 - x0) * scale, (y1 - y0) * scale
    ix0 = x0 + fx * (x1 - x0 - w)
    iy0 = y0 + fy * (y1 - y0 - h)
    inner = np.array([[ix0, iy0, ix0 + w, iy0 + h]], np.float32)
    inner = np.clip(inner, outer[0, :2].tolist() * 2, outer[0, 2:].tolist() * 2).astype(np.float32)
    for p, q in ((outer, inner), (inner, outer)):
        giou = np_(box_ops.generalized_box_iou(p, q))
        iou = np_(box_ops.box_iou(p, q))
        np.testing.assert_allclose(giou, iou, atol=1e-5)
    np.testing.assert_allclose(np_(box_ops.generalized_box_iou(outer, outer)), 1.0, atol=1e-6)


@settings(max_examples=12, deadline=None)
@given(arrays(np.float32, (3, 4), elements=st.floats(-2.0, 2.0, width=32)))
def test_conversions_round_trip(x):
    x = x.copy()
    x[:, 2:] = np.abs(x[:, 2:])  # (cx, cy, w, h) with w, h >= 0
    xyxy = box_ops.box_cxcywh_to_xyxy(x)
    back = np_(box_ops.box_xyxy_to_cxcywh(xyxy))
    np.testing.assert_allclose(back, x, atol=1e-5)
    xyxy = np_(xyxy)
    np.testing.assert_allclose(xyxy[:, 2] - xyxy[:, 0], x[:, 2], atol=1e-5)
    np.testing.assert_allclose(np_(box_ops.box_area(xyxy)), x[:, 2] * x[:, 3], atol=1e-4)


def test_known_values_and_batched_shapes():
    a = np.array([[0.0, 0.0, 2.0, 2.0]], np.float32)
    b = np.array([[1.0, 1.0, 3.0, 3.0], [2.0, 0.0, 3.0, 2.0]], np.float32)
    np.testing.assert_allclose(np_(box_ops.box_iou(a, b)), [[1 / 7, 0.0]], atol=1e-6)
    # Second pair: disjoint, hull 3x2 = 6, union 4 + 2 = 6 -> GIoU 0.
    np.testing.assert_allclose(
        np_(box_ops.generalized_box_iou(a, b)), [[1 / 7 - 2 / 9, 0.0]], atol=1e-6
    )
    batched = np_(box_ops.generalized_box_iou(np.stack([a, a]), np.stack([b, b])))
    assert batched.shape == (2, 1, 2)


def test_zero_size_boxes_stay_finite():
    p = np.array([[0.5, 0.5, 0.5, 0.5]], np.float32)
    assert np.isfinite(np_(box_ops.generalized_box_iou(p, p))).all()


@pytest.mark.parametrize(
    "box,fmt,match",
    [
        ([0.5, 0.5, np.nan, 0.1], "cxcywh", "NaN or infinite"),
        ([0.5, np.inf, 0.1, 0.1], "cxcywh", "NaN or infinite"),
        ([0.5, 0.5, -0.1, 0.1], "cxcywh", "negative width or height"),
        ([0.5, 0.5, 0.4, 0.6], "xyxy", "right < left"),
    ],
)
def test_check_boxes_rejects_bad_boxes(box, fmt, match):
    boxes = np.array([[0.5, 0.5, 0.2, 0.2], box], np.float32)
    boxes = np.array([[0.1, 0.1, 0.2, 0.2], box], np.float32) if fmt == "xyxy" else boxes
    with pytest.raises(ValueError, match=match):
        box_ops.check_boxes(keras.ops.convert_to_tensor(boxes), "target boxes", box_format=fmt)


def test_check_boxes_skips_masked_padding_and_validates_arguments():
    boxes = np.array([[[0.5, 0.5, 0.2, 0.2], [np.nan, 0, 0, 0]]], np.float32)
    box_ops.check_boxes(boxes, mask=np.array([[True, False]]))
    with pytest.raises(ValueError, match="NaN"):
        box_ops.check_boxes(boxes)
    with pytest.raises(ValueError, match="box_format"):
        box_ops.check_boxes(boxes, box_format="xywh")
    with pytest.raises(ValueError, match="4 coordinates"):
        box_ops.check_boxes(np.zeros((2, 3)))
