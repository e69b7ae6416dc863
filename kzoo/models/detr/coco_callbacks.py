"""Deprecated: ``kzoo.models.detr.coco_callbacks`` is now ``kzoo.models.detr.training.callbacks``
(the callbacks) and ``kzoo.models.detr.training.evaluation`` (the evaluation); this path works for
one release. It re-exports the public names it held and warns once, when first imported.
"""

import warnings

from kzoo.models.detr.training.callbacks import CocoEvaluation, DatasetEpoch
from kzoo.models.detr.training.evaluation import EVAL_METRICS, evaluate_coco, predict_coco

__all__ = ["EVAL_METRICS", "CocoEvaluation", "DatasetEpoch", "evaluate_coco", "predict_coco"]

warnings.warn(
    "kzoo.models.detr.coco_callbacks is deprecated; import CocoEvaluation and DatasetEpoch from "
    "kzoo.models.detr.training.callbacks, evaluate_coco and predict_coco from "
    "kzoo.models.detr.training.evaluation.",
    DeprecationWarning,
    stacklevel=2,
)
