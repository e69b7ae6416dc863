"""An independent float64 numpy/torch reference of DETR's matcher and loss, image by image.

Written from the paper's definitions, the way facebookresearch/detr computes them (per image
cost matrices of the image's own targets, scipy assignment, torch's weighted cross-entropy);
it shares no code with kzoo.
"""

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment


def to_xyxy(b):
    cx, cy, w, h = b[..., 0], b[..., 1], b[..., 2], b[..., 3]
    return np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], -1)


def giou_pairs(a, b):
    """GIoU of every box in a (N, 4 xyxy) with every box in b (M, 4 xyxy), by loops."""
    out = np.zeros((len(a), len(b)))
    for i, p in enumerate(a):
        for j, q in enumerate(b):
            iw = max(0.0, min(p[2], q[2]) - max(p[0], q[0]))
            ih = max(0.0, min(p[3], q[3]) - max(p[1], q[1]))
            inter = iw * ih
            union = (p[2] - p[0]) * (p[3] - p[1]) + (q[2] - q[0]) * (q[3] - q[1]) - inter
            hull = (max(p[2], q[2]) - min(p[0], q[0])) * (max(p[3], q[3]) - min(p[1], q[1]))
            out[i, j] = inter / union - (hull - union) / hull
    return out


def softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def match_image(logits, boxes, tgt_boxes, tgt_labels, w_class=1.0, w_bbox=5.0, w_giou=2.0):
    """Query index for each of the image's own targets."""
    if len(tgt_labels) == 0:
        return np.zeros((0,), np.int64)
    prob = softmax(logits.astype(np.float64))
    cost = (
        -w_class * prob[:, tgt_labels]
        + w_bbox * np.abs(boxes[:, None, :] - tgt_boxes[None, :, :]).sum(-1)
        - w_giou * giou_pairs(to_xyxy(boxes), to_xyxy(tgt_boxes))
    )
    rows, cols = linear_sum_assignment(cost)
    query = np.empty(len(tgt_labels), np.int64)
    query[cols] = rows
    return query


def match_batch(logits, boxes, tgt_boxes, labels):
    """List per image of (valid target slots, matched queries)."""
    out = []
    for b in range(len(logits)):
        slots = np.nonzero(labels[b] >= 0)[0]
        q = match_image(logits[b], boxes[b], tgt_boxes[b][slots], labels[b][slots])
        out.append((slots, q))
    return out


def single_output_loss(logits, boxes, tgt_boxes, labels, eos_coef=0.1):
    """(loss_ce, loss_bbox, loss_giou) for one decoder output, like facebookresearch/detr."""
    bsz, nq, nl = logits.shape
    matches = match_batch(logits, boxes, tgt_boxes, labels)
    num_boxes = max(int((labels >= 0).sum()), 1)
    target_classes = np.full((bsz, nq), nl - 1, np.int64)
    l1 = 0.0
    giou = 0.0
    for b, (slots, q) in enumerate(matches):
        target_classes[b, q] = labels[b, slots]
        if len(slots):
            src = boxes[b, q].astype(np.float64)
            tgt = tgt_boxes[b, slots].astype(np.float64)
            l1 += np.abs(src - tgt).sum()
            giou += (1 - np.diag(giou_pairs(to_xyxy(src), to_xyxy(tgt)))).sum()
    weight = torch.ones(nl, dtype=torch.float64)
    weight[-1] = eos_coef
    ce = torch.nn.functional.cross_entropy(
        torch.tensor(logits, dtype=torch.float64).transpose(1, 2),
        torch.tensor(target_classes),
        weight,
    ).item()
    return ce, l1 / num_boxes, giou / num_boxes


def detr_loss(y_pred, labels, tgt_boxes, weights=(1.0, 5.0, 2.0), eos_coef=0.1):
    outputs = [(y_pred["logits"], y_pred["boxes"])]
    for i in range(y_pred["aux_logits"].shape[1]):
        outputs.append((y_pred["aux_logits"][:, i], y_pred["aux_boxes"][:, i]))
    total = 0.0
    terms = []
    for logits, boxes in outputs:
        t = single_output_loss(np.asarray(logits), np.asarray(boxes), tgt_boxes, labels, eos_coef)
        terms.append(t)
        total += sum(w * v for w, v in zip(weights, t))
    return total, terms
