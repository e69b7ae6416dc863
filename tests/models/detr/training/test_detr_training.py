"""DETRLoss inside model.fit: a tiny DETR overfits two images and then finds their boxes."""

import time

import keras
import numpy as np
import pytest

from kzoo.data.detection import SyntheticDetection
from kzoo.models.detr.training.optimizer import ScaledAdamW
from kzoo.ops import box_ops

# Two epochs of STEPS // 2 steps; the learning rate drops 10x for the last quarter so that the
# final boxes settle instead of jittering around the targets.
STEPS = 120


@pytest.fixture
def one_torch_thread():
    # The tiny model's ops are far too small to gain from threads; on a busy 2-core machine
    # torch's thread synchronisation made each step 5x slower. Other backends are unaffected.
    if keras.backend.backend() != "torch":
        yield
        return
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.usefixtures("one_torch_thread")
def test_overfits_two_images_and_predicts_their_boxes():
    from kzoo.models import DETR

    data = SyntheticDetection(
        num_images=2,
        image_size=64,
        batch_size=2,
        min_objects=1,
        max_objects=2,
        min_size=0.3,
        seed=3,
    )
    images, targets = data[0]
    model = DETR(
        num_classes=3,
        num_queries=4,
        d_model=32,
        num_heads=2,
        # No encoder and one decoder layer: the smallest DETR that still has to match and
        # regress, and the fastest to compile (JAX and TensorFlow spend most of this test there).
        num_encoder_layers=0,
        num_decoder_layers=1,
        ffn_dim=64,
        dropout=0.0,
        backbone="small",
    )
    schedule = keras.optimizers.schedules.PiecewiseConstantDecay([STEPS * 3 // 4], [2e-3, 2e-4])
    model.compile(optimizer=ScaledAdamW(schedule, weight_decay=1e-4, global_clipnorm=1.0))
    reps = STEPS // 2
    x = np.tile(images, (reps, 1, 1, 1))
    y = {k: np.tile(v, (reps,) + (1,) * (v.ndim - 1)) for k, v in targets.items()}
    start = time.time()
    history = model.fit(x, y, batch_size=2, epochs=2, verbose=0, shuffle=False)
    elapsed = time.time() - start
    losses = history.history["loss"]
    assert np.isfinite(losses).all() and losses[-1] < losses[0]
    detections = model.predict_detections(images, threshold=0.3)
    for i, det in enumerate(detections):
        _, gt_boxes, gt_labels = data.sample(i)
        assert len(det["boxes"]), f"no detection in image {i} after {elapsed:.0f}s"
        iou = keras.ops.convert_to_numpy(box_ops.box_iou(gt_boxes, det["boxes"]))
        for g in range(len(gt_boxes)):
            best = iou[g].argmax()
            assert iou[g, best] >= 0.7, (i, g, iou[g], losses[-1])
            assert det["labels"][best] == gt_labels[g]
