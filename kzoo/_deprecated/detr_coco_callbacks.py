"""Deprecated: ``kzoo.models.detr.coco_callbacks`` is now ``kzoo.models.detr.training.callbacks``
(the callbacks) and ``kzoo.models.detr.training.evaluation`` (the evaluation); this path works
for one release. It gathers the public names it held; ``kzoo._deprecated`` warns once when it is
imported by its old path.
"""

from kzoo.models.detr.training.callbacks import CocoEvaluation, DatasetEpoch
from kzoo.models.detr.training.evaluation import EVAL_METRICS, evaluate_coco, predict_coco

__all__ = ["EVAL_METRICS", "CocoEvaluation", "DatasetEpoch", "evaluate_coco", "predict_coco"]
