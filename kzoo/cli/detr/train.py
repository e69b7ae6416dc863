"""``kzoo train detr``: train a DETR on the synthetic shapes set or on your COCO-format data.

Without ``--train-annotations`` it trains a small DETR from scratch on the built-in synthetic
shapes and reports COCO AP on held-out synthetic images. With ``--train-annotations A
--train-images DIR`` it trains on a COCO-format dataset (``kzoo.data.CocoDetection``), from
scratch or fine-tuning a preset (``--preset``), evaluating on ``--val-annotations`` /
``--val-images`` every ``--eval-every`` epochs (see ``kzoo.models.detr.training.engine``). The same
code runs as ``python scripts/train_detr.py``. The run directory holds:

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
import json
import math
import os
import time

DEFAULTS = {
    "image_size": 96,
    "num_classes": 3,
    "max_objects": 4,
    "num_queries": 10,
    "d_model": 64,
    "num_heads": 4,
    "num_encoder_layers": 2,
    "num_decoder_layers": 3,
    "ffn_dim": 128,
}


DTYPE_POLICIES = ("float32", "mixed_bfloat16")


def add_arguments(p):
    p.add_argument("--out", default=os.path.join("runs", "detr"), help="run directory")
    coco = p.add_argument_group(
        "COCO-format data (without --train-annotations: the synthetic shapes set)"
    )
    coco.add_argument("--train-annotations", default=None, help="COCO JSON of the training set")
    coco.add_argument(
        "--train-images",
        default=None,
        help="with --train-annotations: the folder of the training images; without: the "
        "number of synthetic training images (4096)",
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
        default="small",
        choices=("small", "resnet50", "resnet101"),
        help="backbone of a DETR built without --preset (small)",
    )
    coco.add_argument(
        "--freeze-backbone", action="store_true", help="train everything but the backbone"
    )
    coco.add_argument(
        "--eval-every", type=int, default=1, help="evaluate on the validation set every N epochs"
    )
    coco.add_argument(
        "--augment",
        default="detr",
        choices=("detr", "flip", "none"),
        help="training augmentation: DETR's (flip, multi-scale resize, random crop; sizes scaled "
        "to --image-size), flip and resize to --image-size only, or resize only (detr)",
    )
    coco.add_argument(
        "--max-size",
        type=int,
        default=None,
        help="longest image side (default --image-size x 1333/800, as DETR's 800/1333)",
    )
    coco.add_argument(
        "--pad-multiple",
        type=int,
        default=32,
        help="pad each batch's height and width to a multiple of this, so that JAX and "
        "TensorFlow compile few step shapes; 0 pads to the batch's largest image (32)",
    )
    coco.add_argument("--workers", type=int, default=2, help="data loading threads (2)")
    coco.add_argument(
        "--force",
        action="store_true",
        help="replace --out/preset and --out/best even if they hold files that are not a "
        "kzoo preset (they are deleted); without it such directories are refused",
    )
    p.add_argument("--epochs", type=int, default=16, help="passes over the training set (16)")
    p.add_argument("--batch-size", type=int, default=8, help="images per batch (8)")
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
        help="learning rate (5e-4; fine-tuning a --preset: 1e-4, DETR's)",
    )
    p.add_argument(
        "--backbone-lr-scale",
        type=float,
        default=None,
        help="backbone learning rate relative to --lr (0.5 from scratch: the small backbone "
        "trains from scratch; fine-tuning a --preset: 0.1, DETR's recipe)",
    )
    p.add_argument("--weight-decay", type=float, default=1e-4, help="AdamW weight decay (1e-4)")
    p.add_argument("--clipnorm", type=float, default=0.1, help="global gradient norm clip (0.1)")
    p.add_argument(
        "--lr-drop",
        type=float,
        default=0.8,
        help="fraction of the steps after which the learning rate drops 10x (0.8)",
    )
    p.add_argument(
        "--image-size",
        type=int,
        default=None,
        help="synthetic: image side (96); COCO: shorter side images are resized to for "
        "evaluation, and the largest training scale (the preset's, else 800)",
    )
    p.add_argument(
        "--num-classes",
        type=int,
        default=None,
        help="synthetic: number of shape classes (3); COCO: read from the annotations",
    )
    p.add_argument(
        "--max-objects",
        type=int,
        default=None,
        help="synthetic: most objects per image (4); COCO: padded target length (default: the "
        "most boxes any training image has)",
    )
    p.add_argument("--eval-images", type=int, default=256, help="synthetic held-out set size (256)")
    p.add_argument("--num-queries", type=int, default=DEFAULTS["num_queries"])
    p.add_argument("--d-model", type=int, default=DEFAULTS["d_model"])
    p.add_argument("--num-heads", type=int, default=DEFAULTS["num_heads"])
    p.add_argument("--num-encoder-layers", type=int, default=DEFAULTS["num_encoder_layers"])
    p.add_argument("--num-decoder-layers", type=int, default=DEFAULTS["num_decoder_layers"])
    p.add_argument("--ffn-dim", type=int, default=DEFAULTS["ffn_dim"])
    p.add_argument(
        "--dropout",
        type=float,
        default=None,
        help="transformer dropout (0.0; with --preset: the preset's)",
    )
    p.add_argument(
        "--dtype-policy",
        default="float32",
        choices=DTYPE_POLICIES,
        help="keras dtype policy of the layers; mixed_bfloat16 computes in bfloat16 with "
        "float32 weights (the matching cost and the losses stay float32) (float32)",
    )
    p.add_argument(
        "--data-parallel",
        action="store_true",
        help="JAX: split every batch over all devices (keras.distribution.DataParallel); "
        "--batch-size is the global batch and must be a multiple of the device count",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the data and the weights")
    p.add_argument("--fresh", action="store_true", help="ignore a backup in --out; start over")
    p.add_argument("--verbose", type=int, default=1, help="keras progress bar: 0, 1 or 2")


def register(commands):
    p = commands["train"].add_parser(
        "detr",
        help="train a DETR on synthetic shapes or on COCO-format data (fine-tune a preset)",
        description=__doc__.split("\n\n")[0],
    )
    add_arguments(p)
    p.set_defaults(func=cmd_train)


def resolve_defaults(args):
    """Fill the options whose default depends on the data source (idempotent)."""
    coco = getattr(args, "train_annotations", None) is not None
    args.coco = coco
    preset = getattr(args, "preset", None) is not None
    if not coco:
        if args.train_images is None:
            args.train_images = 4096
        elif isinstance(args.train_images, str):
            try:
                args.train_images = int(args.train_images)
            except ValueError:
                raise ValueError(
                    f"--train-images {args.train_images!r}: without --train-annotations it is "
                    "the number of synthetic training images (an integer); a folder of images "
                    "needs --train-annotations FILE too."
                ) from None
        for name in ("image_size", "num_classes", "max_objects"):
            if getattr(args, name) is None:
                setattr(args, name, DEFAULTS[name])
    if args.dropout is None and not preset:
        args.dropout = 0.0
    if args.lr is None:
        args.lr = 1e-4 if preset else 5e-4
    if args.backbone_lr_scale is None:
        args.backbone_lr_scale = 0.1 if preset else 0.5
    return args


def _check(args):
    resolve_defaults(args)
    if not args.coco:
        for option in ("val_annotations", "val_images", "preset"):
            if getattr(args, option) is not None:
                raise ValueError(
                    f"--{option.replace('_', '-')} needs --train-annotations and --train-images "
                    "(training on COCO-format data)."
                )
        if args.freeze_backbone:
            raise ValueError("--freeze-backbone needs --train-annotations (and usually --preset).")
    positive = [
        "epochs",
        "batch_size",
        "eval_images",
        "num_queries",
        "d_model",
        "num_heads",
        "num_decoder_layers",
        "ffn_dim",
        "eval_every",
        "workers",
    ]
    positive += ["image_size", "num_classes", "max_objects", "max_size"]
    if not args.coco:
        positive.append("train_images")
    for name in positive:
        value = getattr(args, name)
        if value is not None and value < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1; got {value}.")
    if args.num_encoder_layers < 0:
        raise ValueError(f"--num-encoder-layers must be >= 0; got {args.num_encoder_layers}.")
    if args.pad_multiple < 0:
        raise ValueError(f"--pad-multiple must be >= 0; got {args.pad_multiple}.")
    if args.max_objects is not None and args.max_objects > args.num_queries and not args.preset:
        raise ValueError(
            f"--max-objects ({args.max_objects}) must not exceed --num-queries "
            f"({args.num_queries}): each object needs its own query."
        )
    if args.lr <= 0 or args.clipnorm <= 0 or args.weight_decay < 0:
        raise ValueError("--lr and --clipnorm must be > 0 and --weight-decay >= 0.")
    if not 0 <= args.backbone_lr_scale <= 1:
        raise ValueError(f"--backbone-lr-scale must be in [0, 1]; got {args.backbone_lr_scale}.")
    if args.dropout is not None and not 0 <= args.dropout < 1:
        raise ValueError(f"--dropout must be in [0, 1); got {args.dropout}.")
    if not 0 < args.lr_drop <= 1:
        raise ValueError(f"--lr-drop must be in (0, 1]; got {args.lr_drop}.")
    for option in ("time_limit", "cpu_time_limit"):
        value = getattr(args, option)
        if value is not None and value <= 0:
            raise ValueError(f"--{option.replace('_', '-')} must be > 0 minutes; got {value}.")
    if args.verbose not in (0, 1, 2):
        raise ValueError(f"--verbose must be 0, 1 or 2; got {args.verbose}.")


def build_datasets(args):
    from kzoo.data.detection import SyntheticDetection

    resolve_defaults(args)
    common = dict(
        image_size=args.image_size,
        batch_size=args.batch_size,
        num_classes=args.num_classes,
        max_objects=args.max_objects,
    )
    # Two threads render batches ahead of the training step.
    train = SyntheticDetection(
        num_images=args.train_images, seed=args.seed, shuffle=True, workers=2, **common
    )
    # A different seed: the held-out images share no generator state with the training ones.
    held_out = SyntheticDetection(num_images=args.eval_images, seed=args.seed + 1_000_000, **common)
    return train, held_out


def new_model(args, num_classes):
    """A DETR built from the architecture options (no preset)."""
    from kzoo.models.detr import DETR

    return DETR(
        num_classes=num_classes,
        num_queries=args.num_queries,
        d_model=args.d_model,
        num_heads=args.num_heads,
        num_encoder_layers=args.num_encoder_layers,
        num_decoder_layers=args.num_decoder_layers,
        ffn_dim=args.ffn_dim,
        dropout=args.dropout,
        backbone=getattr(args, "backbone", "small"),
        # The layers follow the global policy (--dtype-policy); the model itself stays float32,
        # so that a preset saved from a mixed-precision run loads as float32 by default.
        dtype="float32",
    )


def compile_model(model, args, steps_per_epoch):
    """DETR's optimizer with the run's learning rate, schedule, clipping and backbone scale."""
    import keras

    from kzoo.models.detr.training.optimizer import ScaledAdamW

    total = args.epochs * steps_per_epoch
    drop_at = max(1, int(total * args.lr_drop))
    schedule = (
        keras.optimizers.schedules.PiecewiseConstantDecay([drop_at], [args.lr, args.lr * 0.1])
        if drop_at < total
        else args.lr
    )
    if not model.built:
        model.build((None, None, None, 3))
    model.compile(
        optimizer=ScaledAdamW(
            learning_rate=schedule,
            weight_decay=args.weight_decay,
            global_clipnorm=args.clipnorm,
            # Matched against variable paths, which start with the model's name.
            learning_rate_scales={model.backbone_path_pattern(): args.backbone_lr_scale},
        )
    )
    return model


def build_model(args):
    """The synthetic run's compiled model."""
    resolve_defaults(args)
    model = new_model(args, args.num_classes)
    model.build((None, args.image_size, args.image_size, 3))
    return compile_model(model, args, math.ceil(args.train_images / args.batch_size))


def set_up_backend(args):
    """Seed, dtype policy and distribution, before any model is built."""
    import keras

    distribution = None
    if args.data_parallel:
        from kzoo.backends import environment

        if not environment.supports_distribution():
            raise ValueError(
                "--data-parallel needs KERAS_BACKEND=jax (keras.distribution distributes on JAX "
                f"only); the backend is {environment.backend_name()}."
            )
        devices = keras.distribution.list_devices()
        if args.batch_size % len(devices):
            raise ValueError(
                f"--batch-size {args.batch_size} must be a multiple of the {len(devices)} "
                "devices --data-parallel splits it over."
            )
        distribution = keras.distribution.DataParallel(devices=devices)
    keras.utils.set_random_seed(args.seed)
    keras.config.set_dtype_policy(args.dtype_policy)
    if distribution is not None:
        keras.distribution.set_distribution(distribution)


def prepare_run_directory(args, destinations):
    """Check the output presets before any work; returns the absolute run directory."""
    from kzoo.presets import preset_io

    out = os.path.abspath(args.out)
    # Refuse output presets that hold a user's files now, not after the training.
    for path in destinations:
        preset_io.check_destination(
            path, force=getattr(args, "force", False), options={"force": "pass --force"}
        )
    return out


def start_run(out, args, definition=None):
    """The run's backup callback, once every check has passed: drops the backup on --fresh,
    refuses a backup made for another model (before anything is built).

    ``definition`` is the ``{option: value}`` that defines the model (default: the synthetic
    run's ``ARCHITECTURE_KEYS``); the backups record it.
    """
    from kzoo.training.callbacks import AtomicBackupAndRestore

    if definition is None:
        definition = {key: getattr(args, key) for key in ARCHITECTURE_KEYS}
    backup = AtomicBackupAndRestore(
        os.path.join(out, "backup"),
        config=definition,
        option_names={key: f"--{key.replace('_', '-')}" for key in definition},
    )
    if args.fresh:
        backup.clear()
    latest = backup.latest()
    legacy = os.path.isdir(backup.backup_dir) and bool(os.listdir(backup.backup_dir))
    if legacy and (latest is None or latest.state is None):
        # Files of a kzoo that recorded the definition beside its backups, in architecture.json.
        try:
            with open(os.path.join(out, ARCHITECTURE_FILE)) as f:
                recorded = json.load(f)
        except (OSError, ValueError):
            recorded = None
        backup.check_config(recorded)
    return backup


def fit_resumable(model, data, args, callbacks):
    """``model.fit`` of the run: ``callbacks`` end with the backup (see ``start_run``)."""
    # The datasets shuffle by their own seed and epoch; keras' shuffle of the batch order
    # would draw from the global generator, which a resumed run cannot reproduce.
    return model.fit(
        data, epochs=args.epochs, callbacks=callbacks, verbose=args.verbose, shuffle=False
    )


def train(args):
    """Train, save, evaluate; returns the ``eval.json`` dict."""
    _check(args)
    if args.coco:
        from kzoo.models.detr.training.engine import train_coco

        return train_coco(args)
    import keras

    from kzoo.presets import preset_io
    from kzoo.training.callbacks import AtomicCheckpoint

    preset_dir = os.path.join(os.path.abspath(args.out), "preset")
    out = prepare_run_directory(args, [preset_dir])
    set_up_backend(args)
    train_data, held_out = build_datasets(args)
    model = build_model(args)
    backup = start_run(out, args)
    time_limit = time_limit_callback(args)
    callbacks = [
        backup,
        AtomicCheckpoint(os.path.join(out, "checkpoints", "last.weights.h5")),
        time_limit,
    ]
    print(
        f"training DETR ({model.count_params():,} parameters, backend "
        f"{keras.backend.backend()}) on {args.train_images} synthetic {args.image_size}px "
        f"images: {args.epochs} epochs x {len(train_data)} steps, batch {args.batch_size}",
        flush=True,
    )
    start = time.time()
    history = fit_resumable(model, train_data, args, callbacks)
    train_seconds = time.time() - start
    steps = int(keras.ops.convert_to_numpy(model.optimizer.iterations))
    preset_io.save_preset(
        model,
        preset_dir,
        force=args.force,
        extra_metadata={
            "class_names": train_data.class_names,
            # SyntheticDetection's COCO ground truth numbers its categories label + 1.
            "category_ids": [k + 1 for k in range(args.num_classes)],
            "image_size": args.image_size,
            "max_size": args.image_size,
            "trained_steps": steps,
        },
    )
    from kzoo.models.detr.training.evaluation import evaluate_synthetic

    metrics = evaluate_synthetic(model, held_out)
    result = {
        **metrics,
        "steps": steps,
        "train_seconds": round(train_seconds, 1),
        "stopped_by_time_limit": time_limit.stopped,
        "final_loss": float(history.history["loss"][-1]) if history.history.get("loss") else None,
        "backend": keras.backend.backend(),
        "eval_images": args.eval_images,
        "args": run_arguments(args),
    }
    from kzoo.utils.files import atomic_file

    with atomic_file(os.path.join(out, "eval.json"), "w") as f:
        json.dump(result, f, indent=2)
    print(
        f"held-out COCO AP {metrics['AP']:.3f}  AP50 {metrics['AP50']:.3f}  "
        f"AP75 {metrics['AP75']:.3f}  ({args.eval_images} images; {steps} steps in "
        f"{train_seconds / 60:.1f} min)\npreset: {preset_dir}",
        flush=True,
    )
    return result


def time_limit_callback(args):
    from kzoo.training.callbacks import TimeLimit

    return TimeLimit(
        args.time_limit * 60 if args.time_limit else None,
        cpu_seconds=args.cpu_time_limit * 60 if args.cpu_time_limit else None,
    )


def run_arguments(args):
    """The parsed arguments as JSON-ready values (for eval.json)."""
    return {k: v for k, v in vars(args).items() if not callable(v) and k != "func"}


# Where kzoo before the shared backups recorded the model definition (read for their backups).
ARCHITECTURE_FILE = "architecture.json"
ARCHITECTURE_KEYS = (
    "num_classes",
    "num_queries",
    "d_model",
    "num_heads",
    "num_encoder_layers",
    "num_decoder_layers",
    "ffn_dim",
)


def cmd_train(args):
    train(args)
    return 0


def main(argv=None):
    parser = argparse.ArgumentParser(prog="train_detr.py", description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    return cmd_train(parser.parse_args(argv))
