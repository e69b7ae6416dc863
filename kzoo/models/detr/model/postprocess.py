"""DETR's post-processing: class probabilities without "no object", boxes in pixels. No NMS.

As the original ``PostProcess``: softmax over all logits, drop the last ("no object") column,
take each query's best class and its probability as the score; scale the normalised (cx, cy, w,
h) box to (x0, y0, x1, y1) in the pixels of the original image size.
"""

import numpy as np
from keras import ops


def _softmax(logits):
    shifted = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(shifted)
    return e / e.sum(axis=-1, keepdims=True)


def outputs_to_detections(logits, boxes, target_sizes, threshold=0.5):
    """Turn model outputs into per-image detections.

    Args:
        logits: (B, Q, num_classes + 1) array.
        boxes: (B, Q, 4) normalised (cx, cy, w, h).
        target_sizes: (B, 2) (height, width) in pixels that the boxes are scaled to.
        threshold: Keep detections whose score is strictly above this.

    Returns a list of B dicts with ``boxes`` (N, 4) float32 pixel (x0, y0, x1, y1), ``scores`` (N,)
    float32 and ``labels`` (N,) int32, sorted by decreasing score.
    """
    logits = np.asarray(logits, dtype=np.float32)
    boxes = np.asarray(boxes, dtype=np.float32)
    sizes = np.asarray(target_sizes, dtype=np.float32)
    if logits.ndim != 3 or boxes.shape != (*logits.shape[:2], 4):
        raise ValueError(
            f"logits must be (B, Q, C+1) and boxes (B, Q, 4); got {logits.shape} and {boxes.shape}."
        )
    if sizes.shape != (logits.shape[0], 2):
        raise ValueError(
            f"target_sizes must be ({logits.shape[0]}, 2) (height, width) per image; got "
            f"{sizes.shape}."
        )
    probs = _softmax(logits)[..., :-1]
    labels = probs.argmax(axis=-1)
    scores = probs.max(axis=-1)
    cx, cy, w, h = np.moveaxis(boxes, -1, 0)
    xyxy = np.stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h], axis=-1)
    scale = np.stack([sizes[:, 1], sizes[:, 0], sizes[:, 1], sizes[:, 0]], axis=-1)
    xyxy = xyxy * scale[:, None, :]
    results = []
    for i in range(logits.shape[0]):
        keep = np.nonzero(scores[i] > threshold)[0]
        keep = keep[np.argsort(-scores[i][keep], kind="stable")]
        results.append(
            {
                "boxes": xyxy[i][keep].astype(np.float32),
                "scores": scores[i][keep].astype(np.float32),
                "labels": labels[i][keep].astype(np.int32),
            }
        )
    return results


def predict_detections(
    model, images, threshold=0.5, target_sizes=None, pixel_mask=None, batch_size=None
):
    """Run ``model`` and post-process: per image a dict of ``boxes``, ``scores``, ``labels``.

    Args:
        model: A ``DETR``.
        images: (B, H, W, 3) normalised float images (padded if of different sizes), or a dict
            ``{"images": ..., "pixel_mask": ...}``.
        threshold: Score threshold in [0, 1).
        target_sizes: (B, 2) (height, width) of the original images, to scale boxes to. Defaults
            to each image's unpadded size in the input (from ``pixel_mask``, else (H, W)).
            Boxes are relative to the unpadded image, as in DETR, so pass the original size
            when the images were resized.
        pixel_mask: (B, H, W) mask, when not given inside ``images``.
        batch_size: Passed to ``model.predict``.
    """
    if (
        isinstance(threshold, bool)
        or not isinstance(threshold, (int, float))
        or not (0 <= threshold < 1)
    ):
        raise ValueError(f"threshold must be a float in [0, 1); got {threshold!r}.")
    if isinstance(images, dict):
        if pixel_mask is not None:
            raise ValueError("Give pixel_mask either inside the images dict or as an argument.")
        pixel_mask = images.get("pixel_mask")
        images = images.get("images")
    images = np.asarray(ops.convert_to_numpy(images))
    if images.ndim == 3:
        images = images[None]
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(
            f"images must be (batch, height, width, 3) normalised floats; got {images.shape}."
        )
    if not np.issubdtype(images.dtype, np.floating):
        raise ValueError(
            f"images must be normalised floats (see kzoo.data.images); got dtype {images.dtype}."
        )
    batch = images.shape[0]
    inputs = {"images": images}
    if pixel_mask is not None:
        pixel_mask = np.asarray(ops.convert_to_numpy(pixel_mask))
        if pixel_mask.ndim == 2:
            pixel_mask = pixel_mask[None]
        if pixel_mask.shape != images.shape[:3]:
            raise ValueError(
                f"pixel_mask must be (batch, height, width) = {images.shape[:3]}; got "
                f"{pixel_mask.shape}."
            )
        from kzoo.models.detr.model.pixel_mask import mask_summary_numpy, raise_for_summary

        # Before target_sizes are derived from it: a bad mask is reported as the mask's fault.
        raise_for_summary(mask_summary_numpy(pixel_mask))
        inputs["pixel_mask"] = pixel_mask.astype(images.dtype)
    if target_sizes is None:
        if pixel_mask is None:
            target_sizes = np.tile(np.asarray(images.shape[1:3], np.float32), (batch, 1))
        else:
            valid = pixel_mask > 0
            target_sizes = np.stack(
                [valid.any(axis=2).sum(axis=1), valid.any(axis=1).sum(axis=1)], axis=1
            )
    target_sizes = np.asarray(target_sizes, dtype=np.float32)
    if target_sizes.ndim == 1:
        target_sizes = target_sizes[None]
    if target_sizes.shape != (batch, 2) or not np.all(target_sizes > 0):
        raise ValueError(
            f"target_sizes must be ({batch}, 2) positive (height, width) per image; got "
            f"{target_sizes.tolist() if target_sizes.size < 20 else target_sizes.shape}."
        )
    if batch_size is None and batch <= 32:
        outputs = model.predict_on_batch(inputs if "pixel_mask" in inputs else images)
    else:
        outputs = model.predict(
            inputs if "pixel_mask" in inputs else images, batch_size=batch_size, verbose=0
        )
    return outputs_to_detections(outputs["logits"], outputs["boxes"], target_sizes, threshold)
