"""One-to-one matching of DETR's predictions to the ground truth (Carion et al. 2020).

The cost of giving query q target t is ``cost_class * -p_q(label_t) + cost_bbox * |b_q - b_t|_1
+ cost_giou * -GIoU(b_q, b_t)`` (boxes as normalised cx, cy, w, h for L1, corners for GIoU). The
cost matrices are computed with ``keras.ops`` on the device; the exact assignment is solved on the
host by scipy (see :mod:`kzoo.ops.hungarian`), in the same host call that checks the boxes, so
NaN or degenerate boxes raise a ``ValueError`` naming them instead of an obscure solver error.
Eagerly (torch, or any backend outside ``jit``) that is a plain ``ValueError``; inside
``jax.jit`` / ``tf.function`` the framework re-raises it as its runtime error carrying the
``ValueError`` text.

Padded target slots (label -1) are handled without per-image shapes: their columns get cost 0.
A constant column adds the same amount to every complete assignment, and with T <= Q every
assignment of the real columns extends to one of the padded columns, so the optimum over the real
columns is exactly the optimum of the image's own (Q, T_i) problem.
"""

import keras
import numpy as np
from keras import ops

from kzoo.ops import box_ops
from kzoo.ops.host_call import host_call
from kzoo.ops.hungarian import solve_numpy


def _match_on_host(cost, pred_boxes, target_boxes, valid):
    valid = valid.astype(bool)
    box_ops.check_boxes(pred_boxes, "DETR's predicted boxes")
    box_ops.check_boxes(target_boxes, "The target boxes", mask=valid)
    rows, cols = solve_numpy(cost)
    query_for_target = np.empty_like(rows)
    np.put_along_axis(query_for_target, cols, rows, axis=-1)
    return (query_for_target,)


@keras.saving.register_keras_serializable(package="kzoo")
class HungarianMatcher:
    """Match each target box to one DETR query by minimum total cost (exact).

    Args:
        cost_class: Weight of the class cost (minus the predicted probability of the target
            class).
        cost_bbox: Weight of the L1 distance between normalised (cx, cy, w, h) boxes.
        cost_giou: Weight of minus the generalised IoU.

    Calling it with ``logits (B, Q, C+1)``, ``pred_boxes (B, Q, 4)``, ``target_boxes (B, T, 4)``
    and ``target_labels (B, T)`` (padded with -1; T <= Q) returns ``(B, T)`` int32: the query
    matched to each target slot (meaningless for padded slots). No gradient flows through it.

    Example:

    ```python
    matcher = kzoo.models.detr.HungarianMatcher()
    out = model(images)
    query = matcher(out["logits"], out["boxes"], y["boxes"], y["labels"])
    ```
    """

    def __init__(self, cost_class=1.0, cost_bbox=5.0, cost_giou=2.0):
        for name, value in (
            ("cost_class", cost_class),
            ("cost_bbox", cost_bbox),
            ("cost_giou", cost_giou),
        ):
            if not isinstance(value, int | float) or value < 0 or not np.isfinite(value):
                raise ValueError(f"{name} must be a finite number >= 0; got {value!r}.")
        if cost_class == 0 and cost_bbox == 0 and cost_giou == 0:
            raise ValueError("At least one of cost_class, cost_bbox, cost_giou must be > 0.")
        self.cost_class = float(cost_class)
        self.cost_bbox = float(cost_bbox)
        self.cost_giou = float(cost_giou)

    def cost_matrix(self, logits, pred_boxes, target_boxes, target_labels):
        """The ``(B, Q, T)`` matching cost; padded target columns are 0."""
        logits = ops.stop_gradient(ops.cast(logits, "float32"))
        pred_boxes = ops.stop_gradient(ops.cast(pred_boxes, "float32"))
        target_boxes = ops.cast(target_boxes, "float32")
        labels = ops.cast(target_labels, "int32")
        valid = labels >= 0
        num_logits = logits.shape[-1]
        prob = ops.softmax(logits, axis=-1)
        onehot = ops.one_hot(ops.maximum(labels, 0), num_logits, dtype="float32")
        cost_class = -ops.einsum("bqc,btc->bqt", prob, onehot)
        cost_bbox = ops.sum(
            ops.abs(ops.expand_dims(pred_boxes, 2) - ops.expand_dims(target_boxes, 1)), axis=-1
        )
        cost_giou = -box_ops.generalized_box_iou(
            box_ops.box_cxcywh_to_xyxy(pred_boxes), box_ops.box_cxcywh_to_xyxy(target_boxes)
        )
        cost = (
            self.cost_bbox * cost_bbox + self.cost_class * cost_class + self.cost_giou * cost_giou
        )
        return ops.where(ops.expand_dims(valid, 1), cost, 0.0)

    def __call__(self, logits, pred_boxes, target_boxes, target_labels):
        pred_boxes = ops.convert_to_tensor(pred_boxes)
        target_labels = ops.convert_to_tensor(target_labels)
        q, t = pred_boxes.shape[1], target_labels.shape[1]
        if q is not None and t is not None and t > q:
            raise ValueError(
                f"The targets are padded to {t} boxes per image but the model has only {q} "
                "queries; DETR matches each target to its own query, so pad targets to at most "
                "num_queries (and have no image with more objects than queries)."
            )
        cost = self.cost_matrix(logits, pred_boxes, target_boxes, target_labels)
        valid = ops.cast(ops.cast(target_labels, "int32") >= 0, "int32")
        (query,) = host_call(
            _match_on_host,
            [
                ops.stop_gradient(cost),
                ops.stop_gradient(ops.cast(pred_boxes, "float32")),
                ops.cast(target_boxes, "float32"),
                valid,
            ],
            out_shapes=[tuple(target_labels.shape)],
            out_dtypes=["int32"],
        )
        return query

    def get_config(self):
        return {
            "cost_class": self.cost_class,
            "cost_bbox": self.cost_bbox,
            "cost_giou": self.cost_giou,
        }

    @classmethod
    def from_config(cls, config):
        return cls(**config)
