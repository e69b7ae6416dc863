"""COCO evaluation through pycocotools: perfect, shifted, missing and wrong-class detections."""

import numpy as np
import pytest

from kzoo.data.coco_eval import evaluate_detections
from kzoo.data.detection import SyntheticDetection


@pytest.fixture(scope="module")
def data():
    ds = SyntheticDetection(num_images=12, image_size=64, min_objects=1, max_objects=3, seed=7)
    samples = [ds.sample(i) for i in range(ds.num_images)]
    return ds.coco_ground_truth(), samples


def perfect(samples, shift=0.0):
    out = []
    for _, boxes, labels in samples:
        b = boxes.copy()
        b[:, [0, 2]] += shift * (b[:, 2:3] - b[:, 0:1])
        out.append({"boxes": b, "scores": np.ones(len(labels)), "labels": labels})
    return out


def test_perfect_predictions_score_one(data):
    gt, samples = data
    result = evaluate_detections(perfect(samples), gt)
    assert result == pytest.approx({"AP": 1.0, "AP50": 1.0, "AP75": 1.0})


def test_known_shift_passes_iou_half_but_not_three_quarters(data):
    gt, samples = data
    # Shifting a box by a fraction s of its width gives IoU (1 - s) / (1 + s): 0.538 for
    # s = 0.3, above 0.5 and below 0.55, so AP50 stays 1 and AP75 drops to 0.
    result = evaluate_detections(perfect(samples, shift=0.3), gt)
    assert result["AP50"] == pytest.approx(1.0)
    assert result["AP75"] == pytest.approx(0.0)
    # AP averages the ten IoU thresholds 0.50:0.95; only 0.50 passes.
    assert result["AP"] == pytest.approx(0.1, abs=1e-6)
    # s = 0.1 gives IoU 0.818: AP75 passes too, and 0.80 is the last threshold (7 of 10).
    result = evaluate_detections(perfect(samples, shift=0.1), gt)
    assert result["AP75"] == pytest.approx(1.0)
    assert result["AP"] == pytest.approx(0.7, abs=1e-6)


def test_wrong_labels_missing_images_and_no_detections(data):
    gt, samples = data
    wrong = perfect(samples)
    for d in wrong:
        d["labels"] = (d["labels"] + 1) % 3
    assert evaluate_detections(wrong, gt)["AP50"] < 0.05
    half = perfect(samples)
    for d in half[::2]:
        d.update(boxes=np.zeros((0, 4)), scores=np.zeros(0), labels=np.zeros(0, int))
    # Precision stays 1, so AP50 is each class's recall (on COCO's 101-point grid), averaged.
    recalls = []
    for c in range(3):
        kept = sum((s[2] == c).sum() for s in samples[1::2])
        recalls.append(kept / sum((s[2] == c).sum() for s in samples))
    grid = np.linspace(0, 1, 101)
    expected = np.mean([(grid <= r + 1e-9).sum() / 101 for r in recalls])
    result = evaluate_detections(half, gt)
    assert 0.0 < result["AP50"] < 1.0
    assert result["AP50"] == pytest.approx(expected, abs=1e-6)
    empty = [{"boxes": np.zeros((0, 4)), "scores": [], "labels": []} for _ in samples]
    assert evaluate_detections(empty, gt) == {"AP": 0.0, "AP50": 0.0, "AP75": 0.0}


def test_low_scored_false_positives_do_not_hurt_ap50_much(data):
    gt, samples = data
    dets = perfect(samples)
    for d in dets:
        d["boxes"] = np.concatenate([d["boxes"], [[0, 0, 5, 5]]])
        d["scores"] = np.concatenate([d["scores"], [0.01]])
        d["labels"] = np.concatenate([d["labels"], [0]])
    assert evaluate_detections(dets, gt)["AP50"] == pytest.approx(1.0)


def test_bad_input_raises(data):
    gt, samples = data
    with pytest.raises(ValueError, match="same length"):
        evaluate_detections(
            [{"boxes": np.zeros((2, 4)), "scores": [1], "labels": [0]}], gt, image_ids=[1]
        )
    with pytest.raises(ValueError, match="labels must lie"):
        evaluate_detections(
            [{"boxes": np.zeros((1, 4)), "scores": [1], "labels": [5]}], gt, image_ids=[1]
        )
    with pytest.raises(ValueError, match="COCO dict"):
        evaluate_detections([], {"images": []})
    with pytest.raises(ValueError, match="detections for 1 images"):
        evaluate_detections(perfect(samples)[:1], gt)


def test_all_metrics_are_pycocotools_twelve_stats_in_order(data):
    import contextlib
    import copy
    import io

    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    from kzoo.data.coco_eval import COCO_METRIC_DESCRIPTIONS, COCO_METRICS

    gt, samples = data
    detections = perfect(samples, shift=0.2)
    for k, d in enumerate(detections):
        d["scores"] = np.linspace(0.9, 0.5, len(d["labels"])) - 0.01 * k
    result = evaluate_detections(detections, gt, all_metrics=True)
    assert list(result) == list(COCO_METRICS) == list(COCO_METRIC_DESCRIPTIONS)
    # pycocotools run directly on the same detections, written out by hand.
    results = []
    for image, d in zip(gt["images"], detections):
        for box, score, label in zip(d["boxes"], d["scores"], d["labels"]):
            x0, y0, x1, y1 = (float(v) for v in box)
            category = sorted(c["id"] for c in gt["categories"])[int(label)]
            results.append(
                {
                    "image_id": image["id"],
                    "category_id": category,
                    "bbox": [x0, y0, x1 - x0, y1 - y0],
                    "score": float(score),
                }
            )
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO()
        coco.dataset = copy.deepcopy(gt)
        coco.createIndex()
        evaluator = COCOeval(coco, coco.loadRes(results), iouType="bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    np.testing.assert_allclose([result[k] for k in COCO_METRICS], evaluator.stats, atol=1e-12)
    # The three-metric default is the first three of them.
    assert evaluate_detections(detections, gt) == {k: result[k] for k in COCO_METRICS[:3]}
    # A ready results list gives the same numbers.
    assert evaluate_detections(results, gt, all_metrics=True) == result


def test_default_category_ids_sort_categories_listed_out_of_order(data):
    """Issue #24 item 13: with ``category_ids=None`` label k is the k-th smallest category id,
    whatever order ``categories`` lists them in; checked against pycocotools on the same
    detections with the mapping written out by hand."""
    import contextlib
    import copy
    import io

    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    gt, samples = data
    # The synthetic set's ids ascend with its labels; give them non-contiguous ids, listed in
    # neither ascending nor descending order.
    old_ids = sorted(c["id"] for c in gt["categories"])
    assert len(old_ids) == 3
    new_id = dict(zip(old_ids, (3, 8, 42)))
    by_label = {0: 3, 1: 8, 2: 42}
    gt = copy.deepcopy(gt)
    gt["categories"] = [
        {**c, "id": new_id[c["id"]]} for c in sorted(gt["categories"], key=lambda c: c["id"])
    ]
    gt["categories"] = [gt["categories"][k] for k in (2, 0, 1)]  # ids 42, 3, 8
    assert [c["id"] for c in gt["categories"]] == [42, 3, 8]
    for ann in gt["annotations"]:
        ann["category_id"] = new_id[ann["category_id"]]
    detections = perfect(samples, shift=0.15)
    for k, d in enumerate(detections):
        d["scores"] = np.linspace(0.95, 0.4, len(d["labels"])) - 0.02 * k
    result = evaluate_detections(detections, gt, all_metrics=True)
    results = []
    for image, d in zip(gt["images"], detections):
        for box, score, label in zip(d["boxes"], d["scores"], d["labels"]):
            x0, y0, x1, y1 = (float(v) for v in box)
            results.append(
                {
                    "image_id": image["id"],
                    "category_id": by_label[int(label)],
                    "bbox": [x0, y0, x1 - x0, y1 - y0],
                    "score": float(score),
                }
            )
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO()
        coco.dataset = copy.deepcopy(gt)
        coco.createIndex()
        evaluator = COCOeval(coco, coco.loadRes(results), iouType="bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    np.testing.assert_allclose(list(result.values()), evaluator.stats, atol=1e-12)
    assert result["AP50"] > 0.9  # the right classes: near-perfect boxes score
    # Passing the same mapping explicitly gives the same numbers.
    assert evaluate_detections(detections, gt, category_ids=[3, 8, 42], all_metrics=True) == result
