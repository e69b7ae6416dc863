"""DETR's recipe is the one source of its sizes and defaults: the data layer's defaults, the
training config's and the model's compile() agree with it."""

import inspect

import pytest

from kzoo.data import detr_transforms, images
from kzoo.models.detr import DETR, TrainConfig, recipe


def test_the_data_layer_defaults_are_the_recipes():
    # kzoo.data cannot import kzoo.models: it keeps the same numbers, which DETR's code also
    # passes explicitly.
    assert (images.DEFAULT_SHORTEST_EDGE, images.DEFAULT_LONGEST_EDGE) == (800, 1333)
    assert (recipe.EVAL_SIZE, recipe.MAX_SIZE) == (800, 1333)
    assert detr_transforms.DEFAULT_SCALES == recipe.TRAIN_SCALES
    assert detr_transforms.DEFAULT_CROP_RESIZE == recipe.CROP_RESIZE
    assert detr_transforms.DEFAULT_CROP_SIZE == recipe.CROP_SIZE
    evaluation = detr_transforms.DetrEvalTransform()
    assert (evaluation.size, evaluation.max_size) == (recipe.EVAL_SIZE, recipe.MAX_SIZE)
    for function in (images.detr_resize_shape, images.resize_image, images.preprocess_images):
        parameters = inspect.signature(function).parameters
        assert parameters["shortest_edge"].default == recipe.EVAL_SIZE
        assert parameters["longest_edge"].default == recipe.MAX_SIZE


def test_scaled_sizes():
    # At DETR's own evaluation size the recipe is unchanged; at 96 pixels it shrinks with it.
    assert recipe.scaled(recipe.TRAIN_SCALES, 800) == tuple(range(480, 801, 32))
    assert recipe.scaled(recipe.TRAIN_SCALES, 96) == (58, 61, 65, 69, 73, 77, 81, 84, 88, 92, 96)
    assert recipe.scaled((1, 2), 1) == (1,)  # at least one pixel, distinct
    assert recipe.default_max_size(800) == 1333
    assert recipe.default_max_size(96) == 160
    assert recipe.default_max_size(1) == 2


def test_training_and_compile_defaults_come_from_the_recipe():
    config = TrainConfig()
    assert (config.weight_decay, config.clipnorm, config.lr_drop) == (1e-4, 0.1, 0.8)
    assert config.eval_images == recipe.SYNTHETIC_EVAL_IMAGES
    assert {k: getattr(config, k) for k in ("num_queries", "d_model", "ffn_dim")} == {
        k: recipe.SYNTHETIC[k] for k in ("num_queries", "d_model", "ffn_dim")
    }
    model = DETR(num_classes=2, num_queries=3, d_model=16, num_heads=2, num_encoder_layers=1,
                 num_decoder_layers=1, ffn_dim=16, backbone="small")  # fmt: skip
    model.compile()
    optimizer = model.optimizer
    assert float(optimizer.learning_rate) == pytest.approx(recipe.LEARNING_RATE)
    assert optimizer.decoupled_weight_decay == pytest.approx(recipe.WEIGHT_DECAY)
    assert optimizer.global_clipnorm == pytest.approx(recipe.CLIP_NORM)
    assert list(optimizer.learning_rate_scales.values()) == [recipe.BACKBONE_LR_SCALE]
