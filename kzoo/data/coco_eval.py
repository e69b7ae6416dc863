"""COCO box evaluation (AP, AP50, AP75, or all twelve metrics) of detections through pycocotools."""

import contextlib
import copy
import io

import numpy as np

# pycocotools' ``COCOeval.stats``, in its order: AP@[.5:.95], AP@.5, AP@.75, AP for small /
# medium / large objects, AR with 1 / 10 / 100 detections per image, AR small / medium / large.
COCO_METRICS = (
    "AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl",
)  # fmt: skip
# What pycocotools' summarize() prints for each metric.
COCO_METRIC_DESCRIPTIONS = {
    "AP": "Average Precision  (AP) @[ IoU=0.50:0.95 | area=   all | maxDets=100 ]",
    "AP50": "Average Precision  (AP) @[ IoU=0.50      | area=   all | maxDets=100 ]",
    "AP75": "Average Precision  (AP) @[ IoU=0.75      | area=   all | maxDets=100 ]",
    "APs": "Average Precision  (AP) @[ IoU=0.50:0.95 | area= small | maxDets=100 ]",
    "APm": "Average Precision  (AP) @[ IoU=0.50:0.95 | area=medium | maxDets=100 ]",
    "APl": "Average Precision  (AP) @[ IoU=0.50:0.95 | area= large | maxDets=100 ]",
    "AR1": "Average Recall     (AR) @[ IoU=0.50:0.95 | area=   all | maxDets=  1 ]",
    "AR10": "Average Recall     (AR) @[ IoU=0.50:0.95 | area=   all | maxDets= 10 ]",
    "AR100": "Average Recall     (AR) @[ IoU=0.50:0.95 | area=   all | maxDets=100 ]",
    "ARs": "Average Recall     (AR) @[ IoU=0.50:0.95 | area= small | maxDets=100 ]",
    "ARm": "Average Recall     (AR) @[ IoU=0.50:0.95 | area=medium | maxDets=100 ]",
    "ARl": "Average Recall     (AR) @[ IoU=0.50:0.95 | area= large | maxDets=100 ]",
}


def detections_to_coco_results(detections, image_ids, category_ids):
    """Per-image detections -> the COCO results list pycocotools reads.

    Args:
        detections: One entry per image: a dict with ``boxes`` ``(n, 4)`` xyxy in pixels,
            ``scores`` ``(n,)`` and ``labels`` ``(n,)`` (class indices of the model).
        image_ids: The COCO image id of each entry.
        category_ids: ``category_ids[label]`` is the COCO category id of class ``label``.
    """
    if len(detections) != len(image_ids):
        raise ValueError(
            f"Got detections for {len(detections)} images but {len(image_ids)} image ids."
        )
    results = []
    for det, image_id in zip(detections, image_ids):
        try:
            boxes = np.asarray(det["boxes"], np.float64).reshape(-1, 4)
            scores = np.asarray(det["scores"], np.float64).reshape(-1)
            labels = np.asarray(det["labels"]).reshape(-1).astype(np.int64)
        except (KeyError, TypeError) as e:
            raise ValueError(
                f"Each detection must be a dict with 'boxes', 'scores' and 'labels'; got {e!r}."
            ) from None
        if not len(boxes) == len(scores) == len(labels):
            raise ValueError(
                f"Image {image_id}: {len(boxes)} boxes, {len(scores)} scores and "
                f"{len(labels)} labels; they must have the same length."
            )
        if len(labels) and (labels.min() < 0 or labels.max() >= len(category_ids)):
            raise ValueError(
                f"Image {image_id}: labels must lie in [0, {len(category_ids)}); got "
                f"{labels.min()}..{labels.max()}."
            )
        for box, score, label in zip(boxes, scores, labels):
            results.append(
                {
                    "image_id": int(image_id),
                    "category_id": int(category_ids[label]),
                    "bbox": [box[0], box[1], box[2] - box[0], box[3] - box[1]],
                    "score": float(score),
                }
            )
    return results


def evaluate_detections(
    detections, ground_truth, category_ids=None, image_ids=None, all_metrics=False
):
    """COCO box AP of detections against COCO-format ground truth.

    Args:
        detections: One dict per image (``boxes`` xyxy pixels, ``scores``, ``labels``), in the
            order of ``ground_truth["images"]`` unless ``image_ids`` is given; or a ready COCO
            results list (dicts with ``image_id``, ``category_id``, ``bbox``, ``score``).
        ground_truth: A COCO dict (``images``, ``annotations``, ``categories``) or the path of a
            COCO JSON file.
        category_ids: Category id of each model label; default: the ground truth's category ids
            in ascending order (label 0 is the smallest id).
        image_ids: The image id of each entry of ``detections``.
        all_metrics: Return all twelve of pycocotools' metrics (``COCO_METRICS``: AP, AP50,
            AP75, APs, APm, APl, AR1, AR10, AR100, ARs, ARm, ARl) instead of the first three.

    Returns:
        ``{"AP": AP@[.5:.95], "AP50": AP@.5, "AP75": AP@.75}`` as floats (area ``all``, 100
        detections per image), computed by pycocotools' ``COCOeval``; with ``all_metrics``
        the twelve. pycocotools gives -1 for a metric without ground truth (no small objects,
        say); it is returned as it is.

    Example:

    ```python
    data = kzoo.data.SyntheticDetection(num_images=32, seed=1)
    detections = model.predict_detections(images, threshold=0.0)
    kzoo.data.evaluate_detections(detections, data.coco_ground_truth())  # {"AP": ...}
    ```
    """
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    if isinstance(ground_truth, str):
        import json

        with open(ground_truth) as f:
            ground_truth = json.load(f)
    if not isinstance(ground_truth, dict) or not {"images", "annotations", "categories"} <= set(
        ground_truth
    ):
        raise ValueError(
            "ground_truth must be a COCO dict with 'images', 'annotations' and 'categories' "
            "(or the path of a COCO JSON file)."
        )
    if not ground_truth["annotations"]:
        raise ValueError("The ground truth has no annotations; AP is undefined.")
    if category_ids is None:
        category_ids = sorted(c["id"] for c in ground_truth["categories"])
    if detections and isinstance(detections[0], dict) and "image_id" in detections[0]:
        results = list(detections)
    else:
        if image_ids is None:
            image_ids = [img["id"] for img in ground_truth["images"]]
        results = detections_to_coco_results(detections, image_ids, category_ids)
    names = COCO_METRICS if all_metrics else COCO_METRICS[:3]
    if not results:
        return dict.fromkeys(names, 0.0)
    # pycocotools prints progress and adds keys to the dicts it is given.
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = copy.deepcopy(ground_truth)
        gt.createIndex()
        dt = gt.loadRes(copy.deepcopy(results))
        evaluator = COCOeval(gt, dt, iouType="bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return {name: float(v) for name, v in zip(names, evaluator.stats)}
