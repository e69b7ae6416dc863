"""TrainConfig: the typed options of ``kzoo train detr``, their defaults and their checks."""

import argparse
import dataclasses

import pytest

from kzoo.cli.detr import train as train_cli
from kzoo.models.detr import TrainConfig, recipe
from kzoo.models.detr.training.engine import run_arguments

# What eval.json's "args" held before TrainConfig (the parsed flags, "coco", and the command):
# scripts and notebooks may read them, so the keys stay.
ARGS_KEYS = {
    "command", "target", "out", "train_annotations", "train_images", "val_annotations",
    "val_images", "preset", "backbone", "freeze_backbone", "eval_every", "augment", "max_size",
    "pad_multiple", "workers", "force", "epochs", "batch_size", "time_limit", "cpu_time_limit",
    "lr", "backbone_lr_scale", "weight_decay", "clipnorm", "lr_drop", "image_size",
    "num_classes", "max_objects", "eval_images", "num_queries", "d_model", "num_heads",
    "num_encoder_layers", "num_decoder_layers", "ffn_dim", "dropout", "dtype_policy",
    "data_parallel", "seed", "fresh", "verbose", "coco", "denoising_groups",
    "box_noise_scale", "label_noise_ratio", "query_groups",
}  # fmt: skip


def parse(*argv):
    parser = argparse.ArgumentParser()
    train_cli.add_arguments(parser)
    return parser.parse_args(list(argv))


def test_the_flags_build_the_config_with_its_own_defaults():
    assert train_cli.config_from_args(parse()) == TrainConfig()
    config = train_cli.config_from_args(parse("--epochs", "3", "--backbone", "resnet50"))
    assert (config.epochs, config.backbone) == (3, "resnet50")
    # One flag per field, and eval.json's arguments keep their keys.
    assert set(vars(parse())) == {f.name for f in dataclasses.fields(TrainConfig)}
    assert set(run_arguments(config.resolved())) == ARGS_KEYS
    with pytest.raises(ValueError, match="Unknown TrainConfig options: command"):
        TrainConfig.from_flags({"command": "train", "epochs": 2})


def test_training_query_flags_build_and_check_the_config():
    from kzoo.models.detr.training.engine import model_definition, training_query_options

    config = train_cli.config_from_args(
        parse("--denoising-groups", "5", "--box-noise-scale", "0.3", "--query-groups", "11")
    )
    assert (config.denoising_groups, config.box_noise_scale, config.query_groups) == (5, 0.3, 11)
    options = training_query_options(config)
    assert options["query_groups"] == 11
    assert options["denoising"].get_config() == {
        "groups": 5,
        "box_noise_scale": 0.3,
        "label_noise_ratio": 0.2,
    }
    assert training_query_options(TrainConfig()) == {"denoising": None, "query_groups": 1}
    # Backups record them only when they are on (older backups still match plain runs).
    plain = model_definition(TrainConfig().resolved(), 3)
    assert "query_groups" not in plain and "denoising_groups" not in plain
    assert model_definition(config.resolved(), 3)["query_groups"] == 11
    for argv, message in (
        (("--denoising-groups", "-1"), "--denoising-groups must be >= 0"),
        (("--query-groups", "0"), "--query-groups must be >= 1"),
        (("--box-noise-scale", "1.5"), "--box-noise-scale must be in"),
        (("--label-noise-ratio", "-0.1"), "--label-noise-ratio must be in"),
    ):
        with pytest.raises(ValueError, match=message):
            train_cli.config_from_args(parse(*argv)).validate()


def test_resolved_fills_the_defaults_of_the_data_source():
    config = TrainConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.epochs = 3
    synthetic = config.resolved()
    assert synthetic is not config and config.lr is None  # a new config, the old one unchanged
    assert (synthetic.train_images, synthetic.image_size, synthetic.num_classes) == (4096, 96, 3)
    assert (synthetic.max_objects, synthetic.dropout) == (4, 0.0)
    assert (synthetic.lr, synthetic.backbone_lr_scale) == (5e-4, 0.5)
    assert synthetic.resolved() == synthetic and not synthetic.coco
    assert TrainConfig(train_images="12").resolved().train_images == 12
    coco = TrainConfig(train_annotations="a.json", train_images="images", preset="p").resolved()
    assert coco.coco and (coco.lr, coco.backbone_lr_scale) == (1e-4, 0.1)
    # The preset's dropout and image size; the engine reads them from the preset.
    assert coco.dropout is None and coco.image_size is None and coco.train_images == "images"
    assert TrainConfig(lr=3e-4, dropout=0.2).resolved().lr == 3e-4


@pytest.mark.parametrize(
    "options, message",
    [
        ({"epochs": 0}, "--epochs must be >= 1; got 0."),
        ({"num_encoder_layers": -1}, "--num-encoder-layers must be >= 0; got -1."),
        ({"preset": "p"}, "--preset needs --train-annotations and --train-images"),
        ({"freeze_backbone": True}, "--freeze-backbone needs --train-annotations"),
        ({"train_images": "pics"}, "--train-images 'pics': without --train-annotations"),
        ({"max_objects": 20, "num_queries": 10}, "--max-objects (20) must not exceed"),
        ({"backbone_lr_scale": 2.0}, "--backbone-lr-scale must be in [0, 1]; got 2.0."),
        ({"lr": 0.0}, "--lr and --clipnorm must be > 0"),
        ({"lr_drop": 0.0}, "--lr-drop must be in (0, 1]"),
        ({"cpu_time_limit": 0.0}, "--cpu-time-limit must be > 0 minutes"),
        ({"verbose": 3}, "--verbose must be 0, 1 or 2; got 3."),
        # What argparse checks on the command line, checked for configs built in Python.
        ({"epochs": "3"}, "--epochs must be an int; got '3'."),
        ({"epochs": True}, "--epochs must be an int; got True."),
        ({"dropout": "0.1"}, "--dropout must be a number or None; got '0.1'."),
        ({"train_images": 2.5}, "--train-images must be an int or a str or None; got 2.5."),
        ({"fresh": 1}, "--fresh must be True or False; got 1."),
        ({"backbone": "vgg"}, "--backbone must be one of small, resnet50, resnet101; got 'vgg'."),
        ({"augment": "mixup"}, "--augment must be one of detr, flip, none"),
    ],
)
def test_validate_names_the_option(options, message):
    with pytest.raises(ValueError) as info:
        TrainConfig(**options).validate()
    assert message in str(info.value)


def test_valid_configs_pass():
    TrainConfig().validate()
    TrainConfig(lr=1, dropout=0, time_limit=5).validate()  # ints where floats are expected
    TrainConfig(train_annotations="a.json", train_images="images", preset="p").validate()
    assert TrainConfig().eval_images == recipe.SYNTHETIC_EVAL_IMAGES
