"""Bounding-box arithmetic for detection: format conversion, area, pairwise IoU and GIoU.

Boxes are ``(..., 4)`` tensors, either ``cxcywh`` (centre x, centre y, width, height, as DETR
predicts them) or ``xyxy`` (left, top, right, bottom). Every function here is written with
``keras.ops`` and runs on every backend, eagerly and inside compiled functions.

Degenerate boxes (right < left or bottom < top, negative width or height) and NaN or infinite
coordinates make GIoU meaningless and make the Hungarian solver fail with an obscure message.
:func:`check_boxes` turns them into a clear ``ValueError``. It needs concrete values, so it runs
eagerly, or on the host inside the matcher's callback when the loss is compiled (see
:mod:`kzoo.models.detr.training.matcher`); it is plain numpy.
"""

import numpy as np
from keras import ops

# Guards divisions when both boxes of a pair have zero area; far below any real box area in
# normalised coordinates (a 1-pixel box in a 1000-pixel image has area 1e-6).
_EPS = 1e-12


def box_cxcywh_to_xyxy(boxes):
    """``(cx, cy, w, h)`` -> ``(x0, y0, x1, y1)`` along the last axis."""
    cx, cy, w, h = ops.unstack(ops.convert_to_tensor(boxes), 4, axis=-1)
    return ops.stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h], axis=-1)


def box_xyxy_to_cxcywh(boxes):
    """``(x0, y0, x1, y1)`` -> ``(cx, cy, w, h)`` along the last axis."""
    x0, y0, x1, y1 = ops.unstack(ops.convert_to_tensor(boxes), 4, axis=-1)
    return ops.stack([(x0 + x1) * 0.5, (y0 + y1) * 0.5, x1 - x0, y1 - y0], axis=-1)


def box_area(boxes):
    """Area of ``xyxy`` boxes: shape ``(...)``."""
    boxes = ops.convert_to_tensor(boxes)
    return (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])


def _inter_union(boxes1, boxes2):
    # Broadcasts like arithmetic: callers align or expand the box axes.
    area1 = box_area(boxes1)
    area2 = box_area(boxes2)
    lt = ops.maximum(boxes1[..., :2], boxes2[..., :2])
    rb = ops.minimum(boxes1[..., 2:], boxes2[..., 2:])
    wh = ops.maximum(rb - lt, 0.0)
    inter = wh[..., 0] * wh[..., 1]
    return inter, area1 + area2 - inter


def _giou(boxes1, boxes2):
    inter, union = _inter_union(boxes1, boxes2)
    iou = inter / ops.maximum(union, _EPS)
    lt = ops.minimum(boxes1[..., :2], boxes2[..., :2])
    rb = ops.maximum(boxes1[..., 2:], boxes2[..., 2:])
    wh = ops.maximum(rb - lt, 0.0)
    enclosing = wh[..., 0] * wh[..., 1]
    return iou - (enclosing - union) / ops.maximum(enclosing, _EPS)


def _pairs(boxes1, boxes2):
    boxes1 = ops.convert_to_tensor(boxes1)
    boxes2 = ops.convert_to_tensor(boxes2)
    return ops.expand_dims(boxes1, -2), ops.expand_dims(boxes2, -3)


def box_iou(boxes1, boxes2):
    """Pairwise IoU of ``xyxy`` boxes ``(..., N, 4)`` and ``(..., M, 4)``: ``(..., N, M)``.

    Example:

    ```python
    from kzoo.ops import box_ops
    a = np.array([[0.0, 0.0, 2.0, 2.0]])
    b = np.array([[1.0, 1.0, 3.0, 3.0]])
    box_ops.box_iou(a, b)  # [[1/7]]
    ```
    """
    inter, union = _inter_union(*_pairs(boxes1, boxes2))
    return inter / ops.maximum(union, _EPS)


def generalized_box_iou(boxes1, boxes2):
    """Pairwise generalised IoU (Rezatofighi et al. 2019) of ``xyxy`` boxes: ``(..., N, M)``.

    GIoU = IoU - (C - U) / C, where C is the area of the smallest box enclosing both and U the
    union. It lies in [-1, 1] and equals IoU when one box contains the other.

    Example:

    ```python
    a = np.array([[0.0, 0.0, 1.0, 1.0]])
    b = np.array([[2.0, 0.0, 3.0, 1.0]])
    box_ops.generalized_box_iou(a, b)  # [[-1/3]]
    ```
    """
    return _giou(*_pairs(boxes1, boxes2))


def aligned_generalized_box_iou(boxes1, boxes2):
    """GIoU of corresponding ``xyxy`` boxes (``boxes1[i]`` with ``boxes2[i]``): shape ``(...)``.

    The diagonal of :func:`generalized_box_iou`, without computing the rest of it.
    """
    return _giou(ops.convert_to_tensor(boxes1), ops.convert_to_tensor(boxes2))


def check_boxes(boxes, name="boxes", box_format="cxcywh", mask=None):
    """Raise ``ValueError`` if any box is NaN/infinite or degenerate; needs concrete values.

    Args:
        boxes: Array-like ``(..., 4)`` (numpy, or an eager tensor of any backend).
        name: What the boxes are, for the message (``"predicted boxes"``).
        box_format: ``"cxcywh"`` (width and height must be >= 0) or ``"xyxy"`` (right >= left,
            bottom >= top).
        mask: Optional boolean ``(...)``; only boxes where it is true are checked (padding is
            skipped).

    Example:

    ```python
    box_ops.check_boxes(np.array([[0.5, 0.5, -0.1, 0.2]]), "target boxes")  # ValueError
    ```
    """
    if box_format not in ("cxcywh", "xyxy"):
        raise ValueError(f"box_format must be 'cxcywh' or 'xyxy'; got {box_format!r}.")
    b = np.asarray(ops.convert_to_numpy(boxes) if not isinstance(boxes, np.ndarray) else boxes)
    if b.shape[-1:] != (4,):
        raise ValueError(f"{name} must have 4 coordinates in the last axis; got shape {b.shape}.")
    if mask is not None:
        m = np.asarray(ops.convert_to_numpy(mask) if not isinstance(mask, np.ndarray) else mask)
        b = b[m.astype(bool)]
    b = b.reshape(-1, 4)
    bad = ~np.isfinite(b).all(axis=-1)
    if bad.any():
        raise ValueError(
            f"{name} contain NaN or infinite coordinates ({int(bad.sum())} of {len(b)} boxes, "
            f"first {b[bad][0].tolist()}); a diverged model or a broken annotation produces "
            "these. Check the learning rate and the input data."
        )
    if box_format == "cxcywh":
        size = b[:, 2:]
        what = "a negative width or height"
    else:
        size = b[:, 2:] - b[:, :2]
        what = "right < left or bottom < top"
    bad = (size < 0).any(axis=-1)
    if bad.any():
        raise ValueError(
            f"{name} contain degenerate boxes with {what} ({int(bad.sum())} of {len(b)}, first "
            f"{b[bad][0].tolist()} in {box_format} format). Boxes must be "
            f"{'(cx, cy, w, h)' if box_format == 'cxcywh' else '(x0, y0, x1, y1)'}."
        )
