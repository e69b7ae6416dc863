"""COCO evaluation of a DETR: on a ``CocoDetection`` set, and on the synthetic held-out set.

- :func:`evaluate_coco`: predict every image of a dataset and score the detections with
  pycocotools (three or twelve metrics);
- :func:`predict_coco`: the detections of every image of a dataset, in its original pixels;
- :func:`evaluate_synthetic`: COCO AP on held-out ``SyntheticDetection`` images.
"""

import keras
import numpy as np

EVAL_METRICS = ("AP", "AP50", "AP75")


def evaluate_coco(model, dataset, category_ids=None, threshold=0.0, all_metrics=False, verbose=0):
    """COCO box metrics of ``model`` on every image of a ``CocoDetection`` set.

    Args:
        model: A ``kzoo.models.DETR``.
        dataset: A ``kzoo.data.CocoDetection`` (its ``transforms`` should be deterministic,
            e.g. ``DetrEvalTransform``); its batches are predicted in order and the boxes scaled
            back to each image's original size.
        category_ids: ``category_ids[label]`` is the dataset category id of the model's label;
            default: ``dataset.category_ids`` (the model was trained on this label mapping).
        threshold: Detections scoring at most this are dropped (COCO evaluation wants them all:
            0).
        all_metrics: All twelve metrics (``kzoo.data.coco_eval.COCO_METRICS``) rather than AP,
            AP50 and AP75.
        verbose: 1 shows a progress bar.

    Returns:
        The metrics dict of ``kzoo.data.evaluate_detections``.

    Example:

    ```python
    val = CocoDetection("val.json", "val_images", batch_size=8, transforms=DetrEvalTransform())
    print(evaluate_coco(model, val))  # {"AP": ..., "AP50": ..., "AP75": ...}
    ```
    """
    detections, image_ids = predict_coco(model, dataset, threshold=threshold, verbose=verbose)
    from kzoo.data.coco_eval import evaluate_detections

    if category_ids is None:
        category_ids = dataset.category_ids
    if len(category_ids) != model.num_classes:
        raise ValueError(
            f"The model has {model.num_classes} classes but {len(category_ids)} category ids "
            "were given for its labels."
        )
    return evaluate_detections(
        detections,
        dataset.ground_truth,
        category_ids=category_ids,
        image_ids=image_ids,
        all_metrics=all_metrics,
    )


def predict_coco(model, dataset, threshold=0.0, verbose=0):
    """Detections of ``model`` for every image of ``dataset``: ``(detections, image_ids)``.

    Boxes are in the pixels of each original image; labels are the model's.
    """
    if getattr(dataset, "drop_remainder", False):
        raise ValueError("Evaluate on a dataset with drop_remainder=False: every image counts.")
    detections, image_ids = [], []
    multiple = _batch_multiple()
    progress = keras.utils.Progbar(len(dataset), unit_name="batch") if verbose else None
    for b in range(len(dataset)):
        inputs, _ = dataset[b]
        ids = dataset.batch_image_ids(b)
        index = dataset.image_ids.searchsorted(ids)
        sizes = np.array([dataset.image_size(int(i)) for i in index], np.float32)
        extra = -len(ids) % multiple
        if extra:
            # A data-parallel step splits the batch evenly over the devices: repeat the last
            # image, and drop its extra detections.
            inputs = {
                k: np.concatenate([v, np.repeat(v[-1:], extra, 0)]) for k, v in inputs.items()
            }
            sizes = np.concatenate([sizes, np.repeat(sizes[-1:], extra, 0)])
        found = model.predict_detections(inputs, threshold=threshold, target_sizes=sizes)
        detections += found[: len(ids)]
        image_ids += ids
        if progress is not None:
            progress.update(b + 1)
    return detections, image_ids


def _batch_multiple():
    """How many parts the active keras distribution splits a batch into (1 without one)."""
    distribution = keras.distribution.distribution()
    mesh = getattr(distribution, "device_mesh", None)
    name = getattr(distribution, "batch_dim_name", None)
    if mesh is None or name not in mesh.axis_names:
        return 1
    return int(mesh.shape[list(mesh.axis_names).index(name)])


def evaluate_synthetic(model, held_out, batch_size=32):
    """COCO AP of ``model`` on a ``SyntheticDetection`` set (all queries kept, scored)."""
    from kzoo.data.coco_eval import evaluate_detections

    detections = []
    for start in range(0, held_out.num_images, batch_size):
        idx = range(start, min(start + batch_size, held_out.num_images))
        images = held_out.normalize(np.stack([held_out.sample(i)[0] for i in idx]))
        detections += model.predict_detections(images, threshold=0.0)
    return evaluate_detections(detections, held_out.coco_ground_truth())
