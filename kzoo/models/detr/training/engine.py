"""``kzoo train detr --train-annotations A --train-images DIR ...``: DETR on COCO-format data.

Everything is checked before the first step: the annotation files (``CocoDetection`` names the
file and the image, annotation or category id at fault), the image folders, the output presets
(``--out/preset`` and ``--out/best``: a directory holding other files is refused unless
``--force``) and, when resuming, that the backup was made for the same model.

The model is a preset fine-tuned with a class head for the data's categories
(``DETR.from_preset(preset, num_classes=N)``), or a DETR built from the architecture options.
It trains with ``model.fit``: ``ScaledAdamW`` (the backbone at ``--backbone-lr-scale`` of the
learning rate, or frozen with ``--freeze-backbone``), gradient clipping, a 10x learning-rate drop
after ``--lr-drop`` of the steps. Callbacks, in order: ``DatasetEpoch`` (the resumed epoch's
shuffle order and augmentation), ``TimeLimit``, ``CocoEvaluation`` (validation AP every
``--eval-every`` epochs into the history, the best model as ``--out/best``, ``history.json``
and ``curves.png``), ``AtomicCheckpoint`` and ``AtomicBackupAndRestore`` (resume after a kill),
last so that an epoch is backed up only once everything else about it is written.

The presets written carry ``class_names``, ``category_ids`` (the dataset's id of each label),
``image_size`` and ``max_size`` in their ``metadata.json``: ``kzoo predict detr`` and ``kzoo eval
detr`` read them, so detections come out as the dataset's own category ids and names.
"""

import json
import os
import time

# DETR's sizes (facebookresearch/detr, datasets/coco.py), for an evaluation size of 800.
DETR_EVAL_SIZE = 800
DETR_MAX_SIZE = 1333
DETR_SCALES = tuple(range(480, 801, 32))
DETR_CROP_RESIZE = (400, 500, 600)
DETR_CROP_SIZE = (384, 600)


def scaled(sizes, image_size):
    """DETR's ``sizes`` (for 800-pixel evaluation) scaled to ``image_size``, distinct, sorted."""
    return tuple(sorted({max(1, round(s * image_size / DETR_EVAL_SIZE)) for s in sizes}))


def default_max_size(image_size):
    return max(image_size, round(image_size * DETR_MAX_SIZE / DETR_EVAL_SIZE))


def train_transform(kind, image_size, max_size):
    """The training augmentation ``--augment`` names, at ``image_size`` / ``max_size``."""
    from kzoo.data.detr_transforms import DetrEvalTransform, DetrTrainTransform

    if kind == "none":
        return DetrEvalTransform(image_size, max_size)
    if kind == "flip":
        return DetrTrainTransform(scales=(image_size,), max_size=max_size, crop_resize=None)
    crop_min, crop_max = scaled(DETR_CROP_SIZE, image_size)
    return DetrTrainTransform(
        scales=scaled(DETR_SCALES, image_size),
        max_size=max_size,
        crop_resize=scaled(DETR_CROP_RESIZE, image_size),
        crop_size=(crop_min, crop_max),
    )


def _check_folder(path, option):
    if not os.path.isdir(path):
        what = "does not exist" if not os.path.exists(path) else "is not a directory"
        raise ValueError(f"{option} {path!r} {what}; it must be the folder of the images.")


def check_paths(args):
    """The data options name files and folders that exist; validation comes in pairs."""
    from kzoo.cli.paths import check_input_file

    if args.train_images is None:
        raise ValueError("--train-annotations needs --train-images DIR (the images' folder).")
    check_input_file(args.train_annotations, "--train-annotations")
    _check_folder(args.train_images, "--train-images")
    if (args.val_annotations is None) != (args.val_images is None):
        given, missing = (
            ("--val-annotations", "--val-images")
            if args.val_annotations is not None
            else ("--val-images", "--val-annotations")
        )
        raise ValueError(f"{given} needs {missing} too.")
    if args.val_annotations is not None:
        check_input_file(args.val_annotations, "--val-annotations")
        _check_folder(args.val_images, "--val-images")


def preset_image_size(preset):
    """The ``image_size`` / ``max_size`` a preset was trained at (its metadata), or Nones."""
    from kzoo.presets import preset_io

    preset_dir = preset_io.resolve_preset(preset)
    meta = {}
    if os.path.isfile(os.path.join(preset_dir, preset_io.METADATA_FILE)):
        meta = preset_io.read_metadata(preset_dir)
    size, max_size = meta.get("image_size"), meta.get("max_size")
    ok = isinstance(size, int) and not isinstance(size, bool) and size > 0
    ok_max = isinstance(max_size, int) and not isinstance(max_size, bool) and max_size >= size
    return (size if ok else None), (max_size if ok and ok_max else None)


def build_coco_datasets(args):
    """``(train, val or None)`` CocoDetection sets; every annotation problem is raised here."""
    from kzoo.data.coco import CocoDetection
    from kzoo.data.detr_transforms import DetrEvalTransform

    pad = args.pad_multiple or None
    train = CocoDetection(
        args.train_annotations,
        args.train_images,
        batch_size=args.batch_size,
        shuffle=True,
        seed=args.seed,
        transforms=train_transform(args.augment, args.image_size, args.max_size),
        max_objects=args.max_objects,
        pad_to_multiple=pad,
        workers=args.workers,
        # Data-parallel steps split every batch evenly over the devices.
        drop_remainder=args.data_parallel,
    )
    if args.num_classes is not None and args.num_classes != train.num_classes:
        raise ValueError(
            f"--num-classes {args.num_classes}, but {args.train_annotations} has "
            f"{train.num_classes} categories; leave --num-classes out with COCO data."
        )
    val = None
    if args.val_annotations is not None:
        val = CocoDetection(
            args.val_annotations,
            args.val_images,
            batch_size=args.batch_size,
            transforms=DetrEvalTransform(args.image_size, args.max_size),
            pad_to_multiple=pad,
        )
        unknown = sorted(set(val.category_ids) - set(train.category_ids))
        if unknown:
            raise ValueError(
                f"{args.val_annotations} has category ids {unknown[:10]} that "
                f"{args.train_annotations} does not have; the model can only predict the "
                "training set's categories."
            )
    return train, val


def build_coco_model(args, train):
    """The DETR to train: a fine-tuned preset or a new model, not yet compiled."""
    from kzoo.models.detr.model.detr import DETR

    if args.preset is not None:
        overrides = {} if args.dropout is None else {"dropout": args.dropout}
        # The layers follow the global dtype policy; the model stays float32 (see new_model).
        model = DETR.from_preset(
            args.preset, num_classes=train.num_classes, dtype="float32", **overrides
        )
    else:
        from kzoo.cli.detr.train import new_model

        model = new_model(args, train.num_classes)
        model.build((None, None, None, 3))
    if train.max_objects > model.num_queries:
        raise ValueError(
            f"{args.train_annotations} has an image with {train.max_objects} boxes but the "
            f"model has {model.num_queries} queries (one object per query); use a model with "
            "more --num-queries, or a smaller --max-objects if the boxes allow it."
        )
    if args.freeze_backbone:
        model.backbone.trainable = False
    return model


def model_definition(args, num_classes):
    """What a backup depends on: recorded in it, compared when resuming (``start_run``)."""
    if args.preset is not None:
        definition = {"preset": args.preset, "num_classes": num_classes}
    else:
        from kzoo.cli.detr.train import ARCHITECTURE_KEYS

        definition = {key: getattr(args, key) for key in ARCHITECTURE_KEYS}
        definition.update(num_classes=num_classes, backbone=args.backbone)
    definition["freeze_backbone"] = args.freeze_backbone
    return definition


def train_coco(args):
    """Train on COCO-format data, save, evaluate; returns the ``eval.json`` dict."""
    check_paths(args)
    from kzoo.cli.detr import train as train_cli
    from kzoo.presets import preset_io

    if args.preset is not None:
        # An unknown name or a directory that is not a preset fails before anything is written.
        preset_io._read_config(preset_io.resolve_preset(args.preset))

    out = os.path.abspath(args.out)
    preset_dir = os.path.join(out, "preset")
    best_dir = os.path.join(out, "best")
    train_cli.prepare_run_directory(args, [preset_dir, best_dir])
    if args.image_size is None:
        size, max_size = preset_image_size(args.preset) if args.preset else (None, None)
        args.image_size = size or DETR_EVAL_SIZE
        if args.max_size is None:
            args.max_size = max_size
    if args.max_size is None:
        args.max_size = default_max_size(args.image_size)
    if args.max_size < args.image_size:
        raise ValueError(
            f"--max-size ({args.max_size}) must be >= --image-size ({args.image_size})."
        )
    train, val = build_coco_datasets(args)
    train_cli.set_up_backend(args)
    model = build_coco_model(args, train)
    # The first file of the run is written once every check has passed.
    backup = train_cli.start_run(out, args, model_definition(args, train.num_classes))

    import keras

    from kzoo.models.detr.training.callbacks import CocoEvaluation, DatasetEpoch
    from kzoo.models.detr.training.evaluation import evaluate_coco
    from kzoo.training.callbacks import AtomicCheckpoint

    train_cli.compile_model(model, args, len(train))
    metadata = {
        "class_names": train.class_names,
        "category_ids": train.category_ids,
        "image_size": args.image_size,
        "max_size": args.max_size,
    }
    if args.preset is not None:
        metadata["fine_tuned_from"] = args.preset
    time_limit = train_cli.time_limit_callback(args)
    evaluation = CocoEvaluation(
        val,
        every=args.eval_every,
        best_preset=best_dir if val is not None else None,
        log_file=os.path.join(out, "history.json"),
        curves=os.path.join(out, "curves.png"),
        extra_metadata=metadata,
        # With the one-line progress bar (verbose 1) the metrics show in it.
        verbose=1 if args.verbose == 2 else 0,
    )
    # At the end of an epoch the evaluation's record and best preset are written before the
    # backup: a kill between the two leaves a record that the resumed run drops and writes
    # again, never a backed-up epoch without its record.
    callbacks = [
        DatasetEpoch(train),
        time_limit,
        evaluation,
        AtomicCheckpoint(os.path.join(out, "checkpoints", "last.weights.h5")),
        backup,
    ]
    source = f"fine-tuning {args.preset}" if args.preset else f"a new DETR ({args.backbone})"
    trainable = sum(int(keras.ops.size(v)) for v in model.trainable_weights)
    print(
        f"training {source}: {model.count_params():,} parameters ({trainable:,} trainable), "
        f"backend {keras.backend.backend()}, {args.dtype_policy}\n"
        f"data: {train.num_images} images, {train.num_classes} classes "
        f"({', '.join(train.class_names[:8])}{', ...' if train.num_classes > 8 else ''}); "
        f"{args.epochs} epochs x {len(train)} steps, batch {args.batch_size}, images "
        f"{args.image_size}px (max {args.max_size}), augmentation {args.augment}"
        + (f"; validation: {val.num_images} images" if val is not None else ""),
        flush=True,
    )
    start = time.time()
    history = train_cli.fit_resumable(model, train, args, callbacks)
    train_seconds = time.time() - start
    steps = int(keras.ops.convert_to_numpy(model.optimizer.iterations))
    preset_io.save_preset(
        model,
        preset_dir,
        force=args.force,
        extra_metadata={**metadata, "trained_steps": steps},
    )
    result = {
        "steps": steps,
        "train_seconds": round(train_seconds, 1),
        "stopped_by_time_limit": time_limit.stopped,
        "final_loss": float(history.history["loss"][-1]) if history.history.get("loss") else None,
        "backend": keras.backend.backend(),
        "args": train_cli.run_arguments(args),
    }
    if val is not None:
        metrics = evaluate_coco(model, val, all_metrics=True)
        result = {**metrics, **result, "val_images": val.num_images}
        best = [r for r in evaluation.records if r.get("val_AP") == evaluation.best]
        if best:
            result["best_epoch"] = best[-1]["epoch"]
    from kzoo.utils.files import atomic_file

    with atomic_file(os.path.join(out, "eval.json"), "w") as f:
        json.dump(result, f, indent=2)
    if val is not None:
        print(
            f"validation COCO AP {result['AP']:.3f}  AP50 {result['AP50']:.3f}  AP75 "
            f"{result['AP75']:.3f}  ({val.num_images} images; {steps} steps in "
            f"{train_seconds / 60:.1f} min)\nbest: {best_dir}",
            flush=True,
        )
    print(f"preset: {preset_dir}", flush=True)
    return result
