"""COCO evaluation during training: evaluate_coco, CocoEvaluation and DatasetEpoch."""

import json
import os

import keras
import numpy as np
import pytest
from PIL import Image

from kzoo.data import CocoDetection, evaluate_detections
from kzoo.data.detr_transforms import DetrEvalTransform
from kzoo.models import DETR
from kzoo.models.detr.training.callbacks import CocoEvaluation, DatasetEpoch
from kzoo.models.detr.training.evaluation import evaluate_coco, predict_coco
from kzoo.presets import preset_io
from tests.models.detr.coco_files import tiny_detr, write_coco_dataset

# JAX and TensorFlow compile DETR's training step for ~30 s here: slow CI step for them.
slow_unless_torch = pytest.mark.slow if keras.backend.backend() != "torch" else (lambda f: f)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("coco")
    return write_coco_dataset(root, 6, 0, "train"), write_coco_dataset(root, 4, 1, "val")


def test_evaluate_coco_matches_predicting_each_original_image(files):
    from kzoo.data.images import preprocess_images

    _, (val_json, val_dir) = files
    val = CocoDetection(
        val_json, val_dir, batch_size=3, transforms=DetrEvalTransform(64, 107), pad_to_multiple=32
    )
    model = tiny_detr()
    detections, image_ids = predict_coco(model, val)
    assert image_ids == val.image_ids.tolist()
    # The independent route: each file on its own through kzoo.data.images, DETR's resize,
    # boxes scaled to the original size by predict_detections.
    for det, image_id in zip(detections, image_ids):
        info = val.coco.imgs[image_id]
        batch = preprocess_images(
            [os.path.join(val_dir, info["file_name"])], shortest_edge=64, longest_edge=107
        )
        assert tuple(batch.original_sizes[0]) == (info["height"], info["width"])
        alone = model.predict_detections(
            batch.model_inputs(), threshold=0.0, target_sizes=batch.original_sizes
        )[0]
        np.testing.assert_allclose(det["scores"], alone["scores"], rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(det["boxes"], alone["boxes"], atol=2e-2)
        np.testing.assert_array_equal(det["labels"], alone["labels"])
    metrics = evaluate_coco(model, val, all_metrics=True)
    expected = evaluate_detections(
        detections, val.ground_truth, category_ids=[3, 8, 42], image_ids=image_ids, all_metrics=True
    )
    assert metrics == expected and len(metrics) == 12
    with pytest.raises(ValueError, match="category ids"):
        evaluate_coco(model, val, category_ids=[3, 8])


class RecordingCoco(CocoDetection):
    """A CocoDetection that records the epoch and image ids of every batch it serves."""

    served = None

    def __getitem__(self, batch_index):
        self.served.append((self.epoch, tuple(self.batch_image_ids(batch_index))))
        return super().__getitem__(batch_index)


@slow_unless_torch
def test_dataset_epoch_gives_a_resumed_run_its_epoch_order(files):
    (train_json, train_dir), _ = files
    common = dict(batch_size=2, shuffle=True, seed=5, transforms=DetrEvalTransform(64, 107))
    # Every batch padded to 128 x 128: one step shape, one compilation on JAX and TensorFlow.
    train = RecordingCoco(train_json, train_dir, pad_to_multiple=128, **common)
    train.served = []
    model = tiny_detr()
    model.compile()
    # As after a resume at epoch 2: fit starts there, and the data must be in epoch 2's order.
    # shuffle=False: keras would shuffle the batches again, from its global generator.
    model.fit(
        train,
        epochs=3,
        initial_epoch=2,
        verbose=0,
        shuffle=False,
        callbacks=[DatasetEpoch(train)],
    )
    # (TensorFlow reads two batches before training to learn their structure.)
    served = [ids for epoch, ids in train.served if epoch == 2]
    reference = CocoDetection(train_json, train_dir, **common)
    reference.set_epoch(2)
    assert served == [tuple(reference.batch_image_ids(b)) for b in range(len(reference))]
    reference.set_epoch(1)
    assert served != [tuple(reference.batch_image_ids(b)) for b in range(len(reference))]
    with pytest.raises(ValueError, match="set_epoch"):
        DatasetEpoch(object())


@slow_unless_torch
def test_coco_evaluation_logs_metrics_keeps_the_best_and_draws_curves(files, tmp_path):
    (train_json, train_dir), (val_json, val_dir) = files
    resize = DetrEvalTransform(64, 107)
    train = CocoDetection(
        train_json, train_dir, batch_size=3, transforms=resize, pad_to_multiple=128
    )
    val = CocoDetection(val_json, val_dir, batch_size=4, transforms=resize, pad_to_multiple=128)
    model = tiny_detr()
    model.compile()
    log_file, curves, best = tmp_path / "history.json", tmp_path / "curves.png", tmp_path / "best"
    evaluation = CocoEvaluation(
        val,
        every=2,
        best_preset=best,
        log_file=log_file,
        curves=curves,
        extra_metadata={"class_names": val.class_names},
        verbose=0,
    )
    history = model.fit(train, epochs=3, verbose=0, callbacks=[evaluation])
    # Evaluated at epoch 2 (every 2) and 3 (the last), into the History like any metric.
    assert len(history.history["loss"]) == 3 and len(history.history["val_AP50"]) == 2
    records = json.loads(log_file.read_text())
    assert [r["epoch"] for r in records] == [1, 2, 3]
    assert "val_AP" not in records[0] and {"val_AP", "val_AP50", "val_AP75"} <= set(records[1])
    np.testing.assert_allclose([r["loss"] for r in records], history.history["loss"], rtol=1e-6)
    # The best preset is a complete preset whose recorded metrics are its own.
    assert preset_io.is_preset_directory(best)
    meta = preset_io.read_metadata(best)
    assert meta["epoch"] in (2, 3) and meta["class_names"] == ["square", "bar", "disc"]
    assert meta["val_metrics"]["AP"] == max(records[1]["val_AP"], records[2]["val_AP"])
    reloaded = DETR.from_preset(best)
    assert evaluate_coco(reloaded, val) == pytest.approx(meta["val_metrics"], abs=1e-6)
    with Image.open(curves) as im:
        assert im.format == "PNG" and im.size[0] > 600
        assert len(set(np.asarray(im.convert("L")).ravel().tolist())) > 10

    # A run resumed at epoch 1 keeps epoch 1's record and replaces the later ones.
    resumed = CocoEvaluation(val, every=5, log_file=log_file, verbose=0)
    model.fit(train, epochs=2, initial_epoch=1, verbose=0, callbacks=[resumed])
    records = json.loads(log_file.read_text())
    assert [r["epoch"] for r in records] == [1, 2]
    assert records[0]["loss"] == pytest.approx(history.history["loss"][0])


def test_coco_evaluation_checks_its_arguments(files):
    _, (val_json, val_dir) = files
    val = CocoDetection(val_json, val_dir)
    for kwargs, message in (
        ({"every": 0}, "every"),
        ({"monitor": "AR"}, "monitor"),
    ):
        with pytest.raises(ValueError, match=message):
            CocoEvaluation(val, **kwargs)
    with pytest.raises(ValueError, match="CocoDetection"):
        CocoEvaluation([1, 2])
