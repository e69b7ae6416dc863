"""``kzoo.models.detr.train(config)`` called from Python: the same run as ``kzoo train detr``."""

import json

import pytest

from kzoo.models.detr import DETR, TrainConfig, train
from kzoo.models.detr.training.engine import run_arguments

TINY = dict(
    epochs=1, batch_size=2, train_images=2, eval_images=2, image_size=32, num_queries=4,
    max_objects=2, d_model=16, num_heads=2, num_encoder_layers=1, num_decoder_layers=2,
    ffn_dim=16, verbose=0,
)  # fmt: skip


# One training step; JAX and TensorFlow would spend their time compiling it (the CLI tests train
# on every backend).
@pytest.mark.backends("torch")
def test_a_synthetic_run_from_python(tmp_path):
    config = TrainConfig(out=str(tmp_path / "run"), **TINY)
    result = train(config)
    assert result["steps"] == 1 and 0.0 <= result["AP50"] <= 1.0
    assert config == TrainConfig(out=str(tmp_path / "run"), **TINY)  # read, never changed
    assert json.loads((tmp_path / "run" / "eval.json").read_text()) == result
    assert result["args"] == run_arguments(config.resolved())
    assert result["args"]["lr"] == 5e-4 and result["args"]["coco"] is False
    model = DETR.from_preset(str(tmp_path / "run" / "preset"))
    assert (model.num_classes, model.num_queries) == (3, 4)
    assert not (tmp_path / "run" / "backup").exists()


def test_mistakes_are_refused_before_anything_is_written(tmp_path):
    out = tmp_path / "run"
    with pytest.raises(ValueError, match="--preset needs --train-annotations"):
        train(TrainConfig(out=str(out), preset="detr_resnet50_coco"))
    with pytest.raises(ValueError, match="--train-annotations needs --train-images DIR"):
        train(TrainConfig(out=str(out), train_annotations=str(tmp_path / "a.json")))
    with pytest.raises(ValueError, match="takes a TrainConfig; got dict"):
        train({"epochs": 1})
    assert not out.exists()
