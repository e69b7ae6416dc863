"""``kzoo train detr``: train a DETR on the synthetic shapes set or on your COCO-format data.

Without ``--train-annotations`` it trains a small DETR from scratch on the built-in synthetic
shapes and reports COCO AP on held-out synthetic images. With ``--train-annotations A
--train-images DIR`` it trains on a COCO-format dataset (``kzoo.data.CocoDetection``), from
scratch or fine-tuning a preset (``--preset``), evaluating on ``--val-annotations`` /
``--val-images`` every ``--eval-every`` epochs. The flags become one
``kzoo.models.detr.TrainConfig`` and the work is ``kzoo.models.detr.train(config)``
(``kzoo.models.detr.training.engine``), which ``python scripts/train/detr.py`` and Python call
too. The run directory holds:

- ``backup/``: the state after the last finished epoch (``kzoo.training``'s
  ``AtomicBackupAndRestore``, written atomically); rerunning the same command after an
  interruption, even a ``kill -9``, resumes from it (``--fresh`` starts over);
- ``checkpoints/last.weights.h5``: the weights after the latest epoch, written atomically;
- ``preset/``: the trained model as a kzoo preset (``DETR.from_preset(".../preset")``), with
  its class names, category ids and image size in ``metadata.json``;
- ``eval.json``: the held-out (synthetic) or validation (COCO) metrics, steps and time;
- COCO path only: ``best/`` (the preset with the best validation AP), ``history.json`` (every
  epoch's losses and metrics) and ``curves.png`` (loss and AP curves).
"""

import argparse


def add_arguments(p):
    """Add ``kzoo train detr``'s flags to the parser ``p`` (one per ``TrainConfig`` field)."""
    from kzoo.models.detr import recipe
    from kzoo.models.detr.training import config as config_lib

    default = config_lib.TrainConfig()
    synthetic, eval_size, max_size = recipe.SYNTHETIC, recipe.EVAL_SIZE, recipe.MAX_SIZE

    p.add_argument("--out", default=default.out, help="run directory")
    coco = p.add_argument_group(
        "COCO-format data (without --train-annotations: the synthetic shapes set)"
    )
    coco.add_argument("--train-annotations", default=None, help="COCO JSON of the training set")
    coco.add_argument(
        "--train-images",
        default=None,
        help="with --train-annotations: the folder of the training images; without: the "
        f"number of synthetic training images ({recipe.SYNTHETIC_TRAIN_IMAGES})",
    )
    coco.add_argument("--val-annotations", default=None, help="COCO JSON of the validation set")
    coco.add_argument("--val-images", default=None, help="folder of the validation images")
    coco.add_argument(
        "--preset",
        default=None,
        help="fine-tune this DETR preset (a name such as detr_resnet50_coco, a directory, or "
        "hf://owner/repo[@revision]); "
        "its class head is re-initialised when the data has another number of classes. "
        "Without it a DETR is built from the architecture options below",
    )
    coco.add_argument(
        "--backbone",
        default=default.backbone,
        choices=config_lib.BACKBONES,
        help=f"backbone of a DETR built without --preset ({default.backbone})",
    )
    coco.add_argument(
        "--freeze-backbone", action="store_true", help="train everything but the backbone"
    )
    coco.add_argument(
        "--eval-every",
        type=int,
        default=default.eval_every,
        help="evaluate on the validation set every N epochs",
    )
    coco.add_argument(
        "--augment",
        default=default.augment,
        choices=config_lib.AUGMENTATIONS,
        help="training augmentation: DETR's (flip, multi-scale resize, random crop; sizes scaled "
        "to --image-size), flip and resize to --image-size only, or resize only "
        f"({default.augment})",
    )
    coco.add_argument(
        "--max-size",
        type=int,
        default=None,
        help=f"longest image side (default --image-size x {max_size}/{eval_size}, as DETR's "
        f"{eval_size}/{max_size})",
    )
    coco.add_argument(
        "--pad-multiple",
        type=int,
        default=default.pad_multiple,
        help="pad each batch's height and width to a multiple of this, so that JAX and "
        "TensorFlow compile few step shapes; 0 pads to the batch's largest image "
        f"({default.pad_multiple})",
    )
    coco.add_argument(
        "--workers",
        type=int,
        default=default.workers,
        help=f"data loading threads ({default.workers})",
    )
    coco.add_argument(
        "--force",
        action="store_true",
        help="replace --out/preset and --out/best even if they hold files that are not a "
        "kzoo preset (they are deleted); without it such directories are refused",
    )
    p.add_argument(
        "--epochs",
        type=int,
        default=default.epochs,
        help=f"passes over the training set ({default.epochs})",
    )
    p.add_argument(
        "--batch-size",
        type=int,
        default=default.batch_size,
        help=f"images per batch ({default.batch_size})",
    )
    p.add_argument("--time-limit", type=float, default=None, help="stop after this many minutes")
    p.add_argument(
        "--cpu-time-limit",
        type=float,
        default=None,
        help="stop after this many minutes of the process's CPU time (all threads; the measure "
        "for a shared machine)",
    )
    p.add_argument(
        "--lr",
        type=float,
        default=None,
        help=f"learning rate ({_sci(recipe.SCRATCH_LEARNING_RATE)}; fine-tuning a --preset: "
        f"{_sci(recipe.LEARNING_RATE)}, DETR's)",
    )
    p.add_argument(
        "--backbone-lr-scale",
        type=float,
        default=None,
        help="backbone learning rate relative to --lr "
        f"({recipe.SCRATCH_BACKBONE_LR_SCALE:g} from scratch: the small backbone trains from "
        f"scratch; fine-tuning a --preset: {recipe.BACKBONE_LR_SCALE:g}, DETR's recipe)",
    )
    p.add_argument(
        "--weight-decay",
        type=float,
        default=default.weight_decay,
        help=f"AdamW weight decay ({_sci(default.weight_decay)})",
    )
    p.add_argument(
        "--clipnorm",
        type=float,
        default=default.clipnorm,
        help=f"global gradient norm clip ({default.clipnorm:g})",
    )
    p.add_argument(
        "--lr-drop",
        type=float,
        default=default.lr_drop,
        help="fraction of the steps after which the learning rate drops "
        f"{1 / recipe.LR_DROP_FACTOR:g}x ({default.lr_drop:g})",
    )
    p.add_argument(
        "--image-size",
        type=int,
        default=None,
        help=f"synthetic: image side ({synthetic['image_size']}); COCO: shorter side images are "
        "resized to for evaluation, and the largest training scale (the preset's, else "
        f"{eval_size})",
    )
    p.add_argument(
        "--num-classes",
        type=int,
        default=None,
        help=f"synthetic: number of shape classes ({synthetic['num_classes']}); COCO: read from "
        "the annotations",
    )
    p.add_argument(
        "--max-objects",
        type=int,
        default=None,
        help=f"synthetic: most objects per image ({synthetic['max_objects']}); COCO: padded "
        "target length (default: the most boxes any training image has)",
    )
    p.add_argument(
        "--eval-images",
        type=int,
        default=default.eval_images,
        help=f"synthetic held-out set size ({default.eval_images})",
    )
    for name in (
        "num_queries",
        "d_model",
        "num_heads",
        "num_encoder_layers",
        "num_decoder_layers",
        "ffn_dim",
    ):
        p.add_argument(config_lib.flag(name), type=int, default=getattr(default, name))
    p.add_argument(
        "--dropout",
        type=float,
        default=None,
        help=f"transformer dropout ({recipe.SCRATCH_DROPOUT}; with --preset: the preset's)",
    )
    p.add_argument(
        "--dtype-policy",
        default=default.dtype_policy,
        choices=config_lib.DTYPE_POLICIES,
        help="keras dtype policy of the layers; mixed_bfloat16 computes in bfloat16 with "
        f"float32 weights (the matching cost and the losses stay float32) ({default.dtype_policy})",
    )
    faster = p.add_argument_group(
        "training-only queries (faster convergence; the trained model is a plain DETR)"
    )
    faster.add_argument(
        "--denoising-groups",
        type=int,
        default=default.denoising_groups,
        help="DN-DETR denoising groups: noised copies of the ground truth fed as extra decoder "
        f"queries that learn to reconstruct it (0: off; DN-DETR uses {recipe.DN_GROUPS})",
    )
    faster.add_argument(
        "--box-noise-scale",
        type=float,
        default=default.box_noise_scale,
        help="denoising box noise: centre shifts up to this times half the box, sizes scaled "
        f"within 1 +- it ({default.box_noise_scale:g})",
    )
    faster.add_argument(
        "--label-noise-ratio",
        type=float,
        default=default.label_noise_ratio,
        help=f"denoising: share of labels replaced at random ({default.label_noise_ratio:g})",
    )
    faster.add_argument(
        "--query-groups",
        type=int,
        default=default.query_groups,
        help="Group DETR: groups of object queries in training, each matched one-to-one, "
        "self-attention blocked between groups; inference keeps group 0 (1: off; LW-DETR "
        "uses 13)",
    )
    p.add_argument(
        "--data-parallel",
        action="store_true",
        help="JAX: split every batch over all devices (keras.distribution.DataParallel); "
        "--batch-size is the global batch and must be a multiple of the device count",
    )
    p.add_argument(
        "--seed", type=int, default=default.seed, help="seed of the data and the weights"
    )
    p.add_argument("--fresh", action="store_true", help="ignore a backup in --out; start over")
    p.add_argument(
        "--verbose", type=int, default=default.verbose, help="keras progress bar: 0, 1 or 2"
    )


def _sci(value):
    """``5e-4`` rather than ``0.0005``, as the help texts write learning rates."""
    return f"{value:.0e}".replace("e-0", "e-")


def register(commands):
    p = commands["train"].add_parser(
        "detr",
        help="train a DETR on synthetic shapes or on COCO-format data (fine-tune a preset)",
        description=__doc__.split("\n\n")[0],
    )
    add_arguments(p)
    p.set_defaults(func=cmd_train)


def config_from_args(args):
    """The ``TrainConfig`` of parsed ``kzoo train detr`` flags (an ``argparse.Namespace``)."""
    import dataclasses

    from kzoo.models.detr.training.config import TrainConfig

    return TrainConfig.from_flags(
        {field.name: getattr(args, field.name) for field in dataclasses.fields(TrainConfig)}
    )


def cmd_train(args):
    from kzoo.models.detr.training.engine import train

    train(config_from_args(args))
    return 0


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="scripts/train/detr.py", description=__doc__.split("\n\n")[0]
    )
    add_arguments(parser)
    return cmd_train(parser.parse_args(argv))
