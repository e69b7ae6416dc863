"""DETR's set prediction loss: Hungarian matching, then classification and box losses.

For the final output and each auxiliary decoder output: match queries to targets
(:class:`HungarianMatcher`, recomputed per output), then

- cross-entropy over all queries, unmatched ones labelled "no object" (the last logit), with
  weight ``eos_coef`` on that class, normalised like torch's weighted mean (divided by the sum of
  the weights, not the number of queries);
- L1 between matched (cx, cy, w, h) boxes and ``1 - GIoU`` of the matched pairs, both summed and
  divided by the number of target boxes in the batch (at least 1).

The total is ``class_weight * CE + bbox_weight * L1 + giou_weight * GIoU`` summed over outputs.
"""

import keras
from keras import ops

from kzoo.models.detr.training.matcher import HungarianMatcher
from kzoo.ops import box_ops

_TERMS = ("loss_ce", "loss_bbox", "loss_giou")


@keras.saving.register_keras_serializable(package="kzoo")
class DETRLoss(keras.losses.Loss):
    """The DETR set loss, for ``model.compile(loss=DETRLoss())`` on every backend.

    Args:
        num_classes: Number of object classes (the model has ``num_classes + 1`` logits). ``None``
            takes it from the logits.
        eos_coef: Cross-entropy weight of the "no object" class.
        class_weight: Weight of the cross-entropy term (also the matcher's class cost).
        bbox_weight: Weight of the L1 box term (also the matcher's L1 cost).
        giou_weight: Weight of the GIoU term (also the matcher's GIoU cost).
        aux_loss: Add the same loss for every auxiliary decoder output.
        matcher: The :class:`HungarianMatcher` (or its config dict); default costs class 1,
            L1 5, GIoU 2, independent of the loss weights, as in facebookresearch/detr.

    ``y_true`` is ``{"boxes": (B, T, 4) normalised cx, cy, w, h padded with 0, "labels": (B, T)
    padded with -1}``; ``y_pred`` the model's output dict (``logits``, ``boxes``, and
    ``aux_logits (B, L-1, Q, C+1)``, ``aux_boxes (B, L-1, Q, 4)``). Returns a scalar.

    Example:

    ```python
    loss = kzoo.models.detr.DETRLoss(num_classes=3)
    value = loss({"boxes": boxes, "labels": labels}, model(images))
    ```
    """

    def __init__(
        self,
        num_classes=None,
        eos_coef=0.1,
        class_weight=1.0,
        bbox_weight=5.0,
        giou_weight=2.0,
        aux_loss=True,
        matcher=None,
        name="detr_loss",
        **kwargs,
    ):
        super().__init__(name=name, **kwargs)
        if num_classes is not None and (
            not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 1
        ):
            raise ValueError(f"num_classes must be a positive int or None; got {num_classes!r}.")
        if not isinstance(eos_coef, int | float) or not 0 < eos_coef <= 1:
            raise ValueError(f"eos_coef must be a number in (0, 1]; got {eos_coef!r}.")
        if not isinstance(aux_loss, bool):
            raise ValueError(f"aux_loss must be True or False; got {aux_loss!r}.")
        self.num_classes = num_classes
        self.eos_coef = float(eos_coef)
        self.class_weight = float(class_weight)
        self.bbox_weight = float(bbox_weight)
        self.giou_weight = float(giou_weight)
        self.aux_loss = aux_loss
        for arg, value in (
            ("class_weight", class_weight),
            ("bbox_weight", bbox_weight),
            ("giou_weight", giou_weight),
        ):
            if not isinstance(value, int | float) or not value >= 0:
                raise ValueError(f"{arg} must be a number >= 0; got {value!r}.")
        if matcher is None:
            matcher = HungarianMatcher()
        elif isinstance(matcher, dict):
            matcher = HungarianMatcher.from_config(matcher)
        elif not isinstance(matcher, HungarianMatcher):
            raise ValueError(
                f"matcher must be a HungarianMatcher or its config dict; got {matcher!r}."
            )
        self.matcher = matcher

    def _outputs(self, y_pred, grouped=False):
        if not isinstance(y_pred, dict) or "logits" not in y_pred or "boxes" not in y_pred:
            raise ValueError(
                "DETRLoss expects the model's output dict with 'logits' and 'boxes'; got "
                f"{type(y_pred).__name__}"
                + (f" with keys {sorted(y_pred)}" if isinstance(y_pred, dict) else "")
                + "."
            )
        prefix = "group_" if grouped else ""
        outputs = [(y_pred[f"{prefix}logits"], y_pred[f"{prefix}boxes"])]
        if self.aux_loss and f"{prefix}aux_logits" in y_pred:
            num_aux = y_pred[f"{prefix}aux_logits"].shape[1]
            for i in range(num_aux):
                outputs.append(
                    (y_pred[f"{prefix}aux_logits"][:, i], y_pred[f"{prefix}aux_boxes"][:, i])
                )
        if grouped:
            # (B, K, Q, ...) -> (B * K, Q, ...): group k of image b is row b * K + k.
            outputs = [
                tuple(ops.reshape(x, (-1, *tuple(x.shape[2:]))) for x in pair) for pair in outputs
            ]
        return outputs

    def _targets(self, y_true):
        if not isinstance(y_true, dict) or "boxes" not in y_true or "labels" not in y_true:
            raise ValueError(
                "DETRLoss expects targets {'boxes': (B, T, 4), 'labels': (B, T)}; got "
                f"{type(y_true).__name__}"
                + (f" with keys {sorted(y_true)}" if isinstance(y_true, dict) else "")
                + "."
            )
        boxes = ops.cast(y_true["boxes"], "float32")
        labels = ops.cast(y_true["labels"], "int32")
        if len(boxes.shape) != 3 or boxes.shape[-1] != 4 or len(labels.shape) != 2:
            raise ValueError(
                "Target boxes must be (batch, max_boxes, 4) and labels (batch, max_boxes); got "
                f"{tuple(boxes.shape)} and {tuple(labels.shape)}."
            )
        return boxes, labels

    def components(self, y_true, y_pred):
        """The unweighted terms per output: ``{"loss_ce": [final, aux_0, ...], ...}``.

        With query groups (``group_logits`` in ``y_pred``) the matched terms cover every group,
        each matched on its own, averaged over the groups; with denoising queries (``dn_logits``)
        the reconstruction terms ``loss_ce_dn``, ``loss_bbox_dn``, ``loss_giou_dn`` come too.
        """
        target_boxes, labels = self._targets(y_true)
        terms = {k: [] for k in _TERMS}
        grouped = isinstance(y_pred, dict) and "group_logits" in y_pred
        if grouped:
            groups = y_pred["group_logits"].shape[1]
            # Each group is a DETR of its own: group k of image b is image b * K + k, with the
            # targets repeated, so one batched matching solves every group.
            target_boxes = ops.repeat(target_boxes, groups, axis=0)
            labels = ops.repeat(labels, groups, axis=0)
        valid = labels >= 0
        valid_f = ops.cast(valid, "float32")
        num_boxes = ops.maximum(ops.sum(valid_f), 1.0)
        for logits, pred_boxes in self._outputs(y_pred, grouped):
            logits = ops.cast(logits, "float32")
            pred_boxes = ops.cast(pred_boxes, "float32")
            self._check_logits(logits)
            num_queries = pred_boxes.shape[1]
            query = self.matcher(logits, pred_boxes, target_boxes, labels)
            # (B, T, Q): target slot t of image b is matched to query q (padded slots: none).
            assign = ops.one_hot(query, num_queries, dtype="float32") * valid_f[..., None]
            for key, value in self.pair_terms(
                logits, pred_boxes, target_boxes, labels, assign, num_boxes
            ).items():
                terms[key].append(value)
        if "dn_logits" in y_pred:
            terms.update(self.denoising_components(y_true, y_pred))
        return terms

    def pair_terms(self, logits, pred_boxes, target_boxes, labels, assign, num_boxes):
        """The three terms of an assignment ``assign`` (B, T, Q) of targets to queries.

        Cross-entropy over every query (unassigned ones: "no object", weight ``eos_coef``;
        divided by the sum of the weights), L1 and ``1 - GIoU`` over the assigned pairs divided
        by ``num_boxes``.
        """
        num_logits = logits.shape[-1]
        valid_f = ops.cast(labels >= 0, "float32")
        is_matched = ops.sum(assign, axis=1)
        matched_label = ops.sum(assign * ops.cast(labels, "float32")[..., None], axis=1)
        no_object = num_logits - 1
        target_class = ops.where(is_matched > 0, ops.cast(matched_label, "int32"), no_object)
        log_prob = ops.log_softmax(logits, axis=-1)
        nll = -ops.sum(ops.one_hot(target_class, num_logits) * log_prob, axis=-1)
        weight = ops.where(target_class == no_object, self.eos_coef, 1.0)
        matched_boxes = ops.einsum("btq,bqd->btd", assign, pred_boxes)
        l1 = ops.sum(ops.abs(matched_boxes - target_boxes), axis=-1)
        giou = box_ops.aligned_generalized_box_iou(
            box_ops.box_cxcywh_to_xyxy(matched_boxes), box_ops.box_cxcywh_to_xyxy(target_boxes)
        )
        return {
            "loss_ce": ops.sum(weight * nll) / ops.sum(weight),
            "loss_bbox": ops.sum(l1 * valid_f) / num_boxes,
            "loss_giou": ops.sum((1.0 - giou) * valid_f) / num_boxes,
        }

    def denoising_components(self, y_true, y_pred):
        """DN-DETR's reconstruction terms: DN query (g, t) answers for target t, no matching.

        The matched loss's terms on those fixed pairs: cross-entropy (every DN query has a real
        class, weight 1), L1 and ``1 - GIoU``, each summed over the real (unpadded) slots and
        divided by their number, G times the number of targets (at least 1); for the final and
        every auxiliary output. ``{"loss_ce_dn": [final, aux_0, ...], ...}``.
        """
        target_boxes, labels = self._targets(y_true)
        slots = labels.shape[1]
        groups = y_pred["dn_logits"].shape[1] // slots
        target_boxes = ops.tile(target_boxes, (1, groups, 1))
        labels = ops.tile(labels, (1, groups))
        valid_f = ops.cast(labels >= 0, "float32")
        count = ops.maximum(ops.sum(valid_f), 1.0)
        outputs = [(y_pred["dn_logits"], y_pred["dn_boxes"])]
        if self.aux_loss and "dn_aux_logits" in y_pred:
            for i in range(y_pred["dn_aux_logits"].shape[1]):
                outputs.append((y_pred["dn_aux_logits"][:, i], y_pred["dn_aux_boxes"][:, i]))
        terms = {f"{k}_dn": [] for k in _TERMS}
        for logits, pred_boxes in outputs:
            logits = ops.cast(logits, "float32")
            pred_boxes = ops.cast(pred_boxes, "float32")
            self._check_logits(logits)
            num_logits = logits.shape[-1]
            log_prob = ops.log_softmax(logits, axis=-1)
            onehot = ops.one_hot(ops.maximum(labels, 0), num_logits, dtype="float32")
            nll = -ops.sum(onehot * log_prob, axis=-1)
            terms["loss_ce_dn"].append(ops.sum(nll * valid_f) / count)
            l1 = ops.sum(ops.abs(pred_boxes - target_boxes), axis=-1)
            terms["loss_bbox_dn"].append(ops.sum(l1 * valid_f) / count)
            giou = box_ops.aligned_generalized_box_iou(
                box_ops.box_cxcywh_to_xyxy(pred_boxes), box_ops.box_cxcywh_to_xyxy(target_boxes)
            )
            terms["loss_giou_dn"].append(ops.sum((1.0 - giou) * valid_f) / count)
        return terms

    def _check_logits(self, logits):
        num_logits = logits.shape[-1]
        if self.num_classes is not None and num_logits != self.num_classes + 1:
            raise ValueError(
                f"DETRLoss(num_classes={self.num_classes}) expects {self.num_classes + 1} "
                f"logits per query (the last is 'no object'); the model gives {num_logits}."
            )

    def call(self, y_true, y_pred):
        terms = self.components(y_true, y_pred)
        weights = {
            "loss_ce": self.class_weight,
            "loss_bbox": self.bbox_weight,
            "loss_giou": self.giou_weight,
        }
        total = 0.0
        for key, values in terms.items():
            for value in values:
                total = total + weights[key.removesuffix("_dn")] * value
        return total

    def get_config(self):
        config = super().get_config()
        config.update(
            num_classes=self.num_classes,
            eos_coef=self.eos_coef,
            class_weight=self.class_weight,
            bbox_weight=self.bbox_weight,
            giou_weight=self.giou_weight,
            aux_loss=self.aux_loss,
            matcher=self.matcher.get_config(),
        )
        return config
