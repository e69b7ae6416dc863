"""``kzoo train detr``: train a small DETR on the synthetic shapes set and report COCO AP.

The same code runs as ``python scripts/train_detr.py``. The run directory holds:

- ``backup/``: ``keras.callbacks.BackupAndRestore`` state; rerunning the same command after an
  interruption resumes from the last finished epoch (``--fresh`` starts over);
- ``checkpoints/last.weights.h5``: the weights after the latest epoch, written atomically;
- ``preset/``: the trained model as a kzoo preset (``DETR.from_preset(".../preset")``; it works
  with ``kzoo predict detr --preset .../preset --shortest-edge 96 --longest-edge 96``);
- ``eval.json``: AP, AP50 and AP75 on a held-out synthetic set, steps and wall time.
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


def add_arguments(p):
    p.add_argument("--out", default=os.path.join("runs", "detr"), help="run directory")
    p.add_argument("--epochs", type=int, default=16, help="passes over the training set (16)")
    p.add_argument("--batch-size", type=int, default=8, help="images per batch (8)")
    p.add_argument("--time-limit", type=float, default=None, help="stop after this many minutes")
    p.add_argument("--lr", type=float, default=5e-4, help="learning rate (5e-4)")
    p.add_argument(
        "--backbone-lr-scale",
        type=float,
        default=0.5,
        help="backbone learning rate relative to --lr (0.5; DETR's ImageNet-pretrained R50 "
        "uses 0.1, the small backbone here trains from scratch)",
    )
    p.add_argument("--weight-decay", type=float, default=1e-4, help="AdamW weight decay (1e-4)")
    p.add_argument("--clipnorm", type=float, default=0.1, help="global gradient norm clip (0.1)")
    p.add_argument(
        "--lr-drop",
        type=float,
        default=0.8,
        help="fraction of the steps after which the learning rate drops 10x (0.8)",
    )
    p.add_argument("--image-size", type=int, default=DEFAULTS["image_size"])
    p.add_argument("--num-classes", type=int, default=DEFAULTS["num_classes"])
    p.add_argument("--max-objects", type=int, default=DEFAULTS["max_objects"])
    p.add_argument("--train-images", type=int, default=4096, help="training set size (4096)")
    p.add_argument("--eval-images", type=int, default=256, help="held-out set size (256)")
    p.add_argument("--num-queries", type=int, default=DEFAULTS["num_queries"])
    p.add_argument("--d-model", type=int, default=DEFAULTS["d_model"])
    p.add_argument("--num-heads", type=int, default=DEFAULTS["num_heads"])
    p.add_argument("--num-encoder-layers", type=int, default=DEFAULTS["num_encoder_layers"])
    p.add_argument("--num-decoder-layers", type=int, default=DEFAULTS["num_decoder_layers"])
    p.add_argument("--ffn-dim", type=int, default=DEFAULTS["ffn_dim"])
    p.add_argument("--dropout", type=float, default=0.0, help="transformer dropout (0.0)")
    p.add_argument("--seed", type=int, default=0, help="seed of the data and the weights")
    p.add_argument("--fresh", action="store_true", help="ignore a backup in --out; start over")
    p.add_argument("--verbose", type=int, default=1, help="keras progress bar: 0, 1 or 2")


def register(commands):
    p = commands["train"].add_parser(
        "detr",
        help="train a small DETR on synthetic shapes and report COCO AP",
        description=__doc__.split("\n\n")[0],
    )
    add_arguments(p)
    p.set_defaults(func=cmd_train)


def _check(args):
    positive = (
        "epochs",
        "batch_size",
        "image_size",
        "num_classes",
        "max_objects",
        "train_images",
        "eval_images",
        "num_queries",
        "d_model",
        "num_heads",
        "num_decoder_layers",
        "ffn_dim",
    )
    for name in positive:
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1; got {getattr(args, name)}.")
    if args.num_encoder_layers < 0:
        raise ValueError(f"--num-encoder-layers must be >= 0; got {args.num_encoder_layers}.")
    if args.max_objects > args.num_queries:
        raise ValueError(
            f"--max-objects ({args.max_objects}) must not exceed --num-queries "
            f"({args.num_queries}): each object needs its own query."
        )
    if args.lr <= 0 or args.clipnorm <= 0 or args.weight_decay < 0:
        raise ValueError("--lr and --clipnorm must be > 0 and --weight-decay >= 0.")
    if not 0 <= args.backbone_lr_scale <= 1:
        raise ValueError(f"--backbone-lr-scale must be in [0, 1]; got {args.backbone_lr_scale}.")
    if not 0 < args.lr_drop <= 1:
        raise ValueError(f"--lr-drop must be in (0, 1]; got {args.lr_drop}.")
    if args.time_limit is not None and args.time_limit <= 0:
        raise ValueError(f"--time-limit must be > 0 minutes; got {args.time_limit}.")
    if args.verbose not in (0, 1, 2):
        raise ValueError(f"--verbose must be 0, 1 or 2; got {args.verbose}.")


def build_datasets(args):
    from kzoo.data.detection import SyntheticDetection

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


def build_model(args):
    from kzoo.models.detr import DETR
    from kzoo.models.detr.optimizer import ScaledAdamW

    model = DETR(
        num_classes=args.num_classes,
        num_queries=args.num_queries,
        d_model=args.d_model,
        num_heads=args.num_heads,
        num_encoder_layers=args.num_encoder_layers,
        num_decoder_layers=args.num_decoder_layers,
        ffn_dim=args.ffn_dim,
        dropout=args.dropout,
        backbone="small",
    )
    import keras

    total = args.epochs * math.ceil(args.train_images / args.batch_size)
    drop_at = max(1, int(total * args.lr_drop))
    schedule = (
        keras.optimizers.schedules.PiecewiseConstantDecay([drop_at], [args.lr, args.lr * 0.1])
        if drop_at < total
        else args.lr
    )
    model.build((None, args.image_size, args.image_size, 3))
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


def evaluate(model, held_out, batch_size=32):
    """COCO AP of ``model`` on ``held_out`` (all queries kept, scored)."""
    import numpy as np

    from kzoo.data.coco_eval import evaluate_detections

    detections = []
    for start in range(0, held_out.num_images, batch_size):
        idx = range(start, min(start + batch_size, held_out.num_images))
        images = held_out.normalize(np.stack([held_out.sample(i)[0] for i in idx]))
        detections += model.predict_detections(images, threshold=0.0)
    return evaluate_detections(detections, held_out.coco_ground_truth())


def train(args):
    """Train, save, evaluate; returns the ``eval.json`` dict."""
    _check(args)
    import keras

    from kzoo.models.detr.train_callbacks import AtomicCheckpoint, TimeLimit
    from kzoo.presets import preset_io

    keras.utils.set_random_seed(args.seed)
    out = os.path.abspath(args.out)
    backup = os.path.join(out, "backup")
    # Refuse a --out/preset that holds a user's files now, not after the training.
    preset_io.check_destination(os.path.join(out, "preset"))
    if args.fresh and os.path.isdir(backup):
        import shutil

        shutil.rmtree(backup)
    check_resumable(out, args)
    train_data, held_out = build_datasets(args)
    model = build_model(args)
    time_limit = TimeLimit(args.time_limit * 60 if args.time_limit else None)
    callbacks = [
        keras.callbacks.BackupAndRestore(backup, save_freq="epoch", double_checkpoint=True),
        AtomicCheckpoint(os.path.join(out, "checkpoints", "last.weights.h5")),
        time_limit,
    ]
    print(
        f"training DETR ({model.count_params():,} parameters, backend "
        f"{keras.backend.backend()}) on {args.train_images} synthetic {args.image_size}px "
        f"images: {args.epochs} epochs x {len(train_data)} steps, batch {args.batch_size}",
        flush=True,
    )
    resuming = os.path.isdir(backup) and bool(os.listdir(backup))
    start = time.time()
    try:
        history = model.fit(
            train_data,
            epochs=args.epochs,
            callbacks=callbacks,
            verbose=args.verbose,
        )
    except ValueError as e:
        if not (resuming and "could not be loaded" in str(e)):
            raise
        # keras's list of every object that failed to load: say what it means instead.
        raise ValueError(
            f"The backup in {backup} was written by a run with a different architecture than "
            "these arguments build, so it cannot be resumed. Pass --fresh to start over, or "
            f"rerun with the interrupted run's arguments. ({_first_line(e)})"
        ) from None
    train_seconds = time.time() - start
    steps = int(keras.ops.convert_to_numpy(model.optimizer.iterations))
    preset_dir = os.path.join(out, "preset")
    preset_io.save_preset(
        model,
        preset_dir,
        extra_metadata={
            "class_names": train_data.class_names,
            "image_size": args.image_size,
            "trained_steps": steps,
        },
    )
    metrics = evaluate(model, held_out)
    result = {
        **metrics,
        "steps": steps,
        "train_seconds": round(train_seconds, 1),
        "stopped_by_time_limit": time_limit.stopped,
        "final_loss": float(history.history["loss"][-1]) if history.history.get("loss") else None,
        "backend": keras.backend.backend(),
        "eval_images": args.eval_images,
        "args": {k: v for k, v in vars(args).items() if not callable(v) and k != "func"},
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


def _first_line(error):
    return next((line.strip() for line in str(error).splitlines() if line.strip()), "")


def check_resumable(out, args):
    """Refuse to resume a backup made for another architecture; record this run's.

    A backup is only resumable by the model it was saved from. Comparing the recorded arguments
    names the one that differs, where keras would list every weight that failed to load.
    """
    from kzoo.utils.files import atomic_file

    current = {key: getattr(args, key) for key in ARCHITECTURE_KEYS}
    record = os.path.join(out, ARCHITECTURE_FILE)
    backup = os.path.join(out, "backup")
    has_backup = os.path.isdir(backup) and bool(os.listdir(backup))
    if has_backup and os.path.isfile(record):
        try:
            with open(record) as f:
                recorded = json.load(f)
        except (OSError, ValueError):
            recorded = None
        if isinstance(recorded, dict):
            changed = [
                f"--{key.replace('_', '-')} {recorded[key]} (now {current[key]})"
                for key in ARCHITECTURE_KEYS
                if key in recorded and recorded[key] != current[key]
            ]
            if changed:
                raise ValueError(
                    f"{out} holds a backup of an interrupted run with {', '.join(changed)}; it "
                    "cannot resume with a different architecture. Pass --fresh to start over, or "
                    "rerun with the interrupted run's arguments."
                )
    os.makedirs(out, exist_ok=True)
    with atomic_file(record, "w") as f:
        json.dump(current, f, indent=2)


def cmd_train(args):
    train(args)
    return 0


def main(argv=None):
    parser = argparse.ArgumentParser(prog="train_detr.py", description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    return cmd_train(parser.parse_args(argv))
