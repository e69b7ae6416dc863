"""``train(config)``: DETR training from a ``TrainConfig``, on synthetic shapes or COCO files.

One entry point for ``kzoo train detr``, ``scripts/train/detr.py`` and Python. It reads the
config (:class:`kzoo.models.detr.training.config.TrainConfig`) and never changes it.

Without ``train_annotations`` it trains a small DETR from scratch on the built-in synthetic
shapes and reports COCO AP on held-out synthetic images. With ``train_annotations`` and
``train_images`` (a folder) it trains on a COCO-format dataset (``kzoo.data.CocoDetection``):
a preset fine-tuned with a class head for the data's categories (``DETR.from_preset(preset,
num_classes=N)``), or a DETR built from the architecture options, evaluated on the validation
set every ``eval_every`` epochs.

Everything is checked before the first step: the options (``TrainConfig.validate``), the
annotation files (``CocoDetection`` names the file and the image, annotation or category id at
fault), the image folders, the output presets (``out/preset`` and ``out/best``: a directory
holding other files is refused unless ``force``) and, when resuming, that the backup was made
for the same model.

The model trains with ``model.fit``: ``ScaledAdamW`` (the backbone at ``backbone_lr_scale`` of
the learning rate, or frozen with ``freeze_backbone``), gradient clipping, a 10x learning-rate
drop after ``lr_drop`` of the steps. Callbacks, in order (COCO): ``DatasetEpoch`` (the resumed
epoch's shuffle order and augmentation), ``TimeLimit``, ``CocoEvaluation`` (validation AP every
``eval_every`` epochs into the history, the best model as ``out/best``, ``history.json`` and
``curves.png``), ``AtomicCheckpoint`` and ``AtomicBackupAndRestore`` (resume after a kill),
last so that an epoch is backed up only once everything else about it is written.

The run directory ``out`` holds:

- ``backup/``: the state after the last finished epoch (``kzoo.training``'s
  ``AtomicBackupAndRestore``, written atomically); rerunning the same command after an
  interruption, even a ``kill -9``, resumes from it (``fresh`` starts over);
- ``checkpoints/last.weights.h5``: the weights after the latest epoch, written atomically;
- ``preset/``: the trained model as a kzoo preset (``DETR.from_preset(".../preset")``), with
  ``class_names``, ``category_ids`` (the dataset's id of each label), ``image_size`` and
  ``max_size`` in its ``metadata.json``: ``kzoo predict detr`` and ``kzoo eval detr`` read
  them, so detections come out as the dataset's own category ids and names;
- ``eval.json``: the held-out (synthetic) or validation (COCO) metrics, steps and time, and
  the run's options (``args``, as ``kzoo train detr`` names them);
- COCO path only: ``best/`` (the preset with the best validation AP), ``history.json`` (every
  epoch's losses and metrics) and ``curves.png`` (loss and AP curves).
"""

import dataclasses
import json
import math
import os
import time

from kzoo.models.detr import recipe
from kzoo.models.detr.training.config import ARCHITECTURE_KEYS, TrainConfig, flag

# Where kzoo before the shared backups recorded the model definition (read for their backups).
ARCHITECTURE_FILE = "architecture.json"


def train(config):
    """Train, save, evaluate; returns the ``eval.json`` dict.

    Args:
        config: A :class:`TrainConfig`.

    Example:

    ```python
    from kzoo.models.detr import TrainConfig, train
    result = train(TrainConfig(out="runs/shapes", epochs=2, train_images=64))
    ```
    """
    if not isinstance(config, TrainConfig):
        raise ValueError(f"train() takes a TrainConfig; got {type(config).__name__}.")
    config.validate()
    config = config.resolved()
    return _train_coco(config) if config.coco else _train_synthetic(config)


# --------------------------------------------------------------------------- the two runs


def _train_synthetic(config):
    import keras

    from kzoo.models.detr.training.evaluation import evaluate_synthetic
    from kzoo.training.callbacks import AtomicCheckpoint

    out = os.path.abspath(config.out)
    preset_dir = os.path.join(out, "preset")
    check_destinations(config, [preset_dir])
    set_up_backend(config)
    train_data, held_out = synthetic_datasets(config)
    model = synthetic_model(config)
    backup = start_run(config)
    time_limit = time_limit_callback(config)
    callbacks = [
        backup,
        AtomicCheckpoint(os.path.join(out, "checkpoints", "last.weights.h5")),
        time_limit,
    ]
    print(
        f"training DETR ({model.count_params():,} parameters, backend "
        f"{keras.backend.backend()}) on {config.train_images} synthetic {config.image_size}px "
        f"images: {config.epochs} epochs x {len(train_data)} steps, batch {config.batch_size}",
        flush=True,
    )
    metadata = {
        "class_names": train_data.class_names,
        # SyntheticDetection's COCO ground truth numbers its categories label + 1.
        "category_ids": [k + 1 for k in range(config.num_classes)],
        "image_size": config.image_size,
        "max_size": config.image_size,
    }
    summary = fit_and_save(model, train_data, config, callbacks, time_limit, preset_dir, metadata)
    metrics = evaluate_synthetic(model, held_out)
    result = {
        **metrics,
        **summary,
        "eval_images": config.eval_images,
        "args": run_arguments(config),
    }
    write_eval(out, result)
    print(
        f"held-out COCO AP {metrics['AP']:.3f}  AP50 {metrics['AP50']:.3f}  "
        f"AP75 {metrics['AP75']:.3f}  ({config.eval_images} images; {summary['steps']} steps "
        f"in {summary['train_seconds'] / 60:.1f} min)\npreset: {preset_dir}",
        flush=True,
    )
    return result


def _train_coco(config):
    check_paths(config)
    from kzoo.presets import preset_io

    if config.preset is not None:
        # An unknown name or a directory that is not a preset fails before anything is written.
        preset_io._read_config(preset_io.resolve_preset(config.preset))

    out = os.path.abspath(config.out)
    preset_dir = os.path.join(out, "preset")
    best_dir = os.path.join(out, "best")
    check_destinations(config, [preset_dir, best_dir])
    config = coco_sizes(config)
    train_data, val = coco_datasets(config)
    set_up_backend(config)
    model = coco_model(config, train_data)
    # The first file of the run is written once every check has passed.
    backup = start_run(config, model_definition(config, train_data.num_classes))

    import keras

    from kzoo.models.detr.training.callbacks import CocoEvaluation, DatasetEpoch
    from kzoo.models.detr.training.evaluation import evaluate_coco
    from kzoo.training.callbacks import AtomicCheckpoint

    compile_model(model, config, len(train_data))
    metadata = {
        "class_names": train_data.class_names,
        "category_ids": train_data.category_ids,
        "image_size": config.image_size,
        "max_size": config.max_size,
    }
    if config.preset is not None:
        metadata["fine_tuned_from"] = config.preset
    time_limit = time_limit_callback(config)
    evaluation = CocoEvaluation(
        val,
        every=config.eval_every,
        best_preset=best_dir if val is not None else None,
        log_file=os.path.join(out, "history.json"),
        curves=os.path.join(out, "curves.png"),
        extra_metadata=metadata,
        # With the one-line progress bar (verbose 1) the metrics show in it.
        verbose=1 if config.verbose == 2 else 0,
    )
    # At the end of an epoch the evaluation's record and best preset are written before the
    # backup: a kill between the two leaves a record that the resumed run drops and writes
    # again, never a backed-up epoch without its record.
    callbacks = [
        DatasetEpoch(train_data),
        time_limit,
        evaluation,
        AtomicCheckpoint(os.path.join(out, "checkpoints", "last.weights.h5")),
        backup,
    ]
    source = f"fine-tuning {config.preset}" if config.preset else f"a new DETR ({config.backbone})"
    trainable = sum(int(keras.ops.size(v)) for v in model.trainable_weights)
    names = train_data.class_names
    print(
        f"training {source}: {model.count_params():,} parameters ({trainable:,} trainable), "
        f"backend {keras.backend.backend()}, {config.dtype_policy}\n"
        f"data: {train_data.num_images} images, {train_data.num_classes} classes "
        f"({', '.join(names[:8])}{', ...' if train_data.num_classes > 8 else ''}); "
        f"{config.epochs} epochs x {len(train_data)} steps, batch {config.batch_size}, images "
        f"{config.image_size}px (max {config.max_size}), augmentation {config.augment}"
        + (f"; validation: {val.num_images} images" if val is not None else ""),
        flush=True,
    )
    summary = fit_and_save(model, train_data, config, callbacks, time_limit, preset_dir, metadata)
    result = {**summary, "args": run_arguments(config)}
    if val is not None:
        metrics = evaluate_coco(model, val, all_metrics=True)
        result = {**metrics, **result, "val_images": val.num_images}
        best = [r for r in evaluation.records if r.get("val_AP") == evaluation.best]
        if best:
            result["best_epoch"] = best[-1]["epoch"]
    write_eval(out, result)
    if val is not None:
        print(
            f"validation COCO AP {result['AP']:.3f}  AP50 {result['AP50']:.3f}  AP75 "
            f"{result['AP75']:.3f}  ({val.num_images} images; {summary['steps']} steps in "
            f"{summary['train_seconds'] / 60:.1f} min)\nbest: {best_dir}",
            flush=True,
        )
    print(f"preset: {preset_dir}", flush=True)
    return result


# --------------------------------------------------------------------------- the steps


def check_destinations(config, destinations):
    """Refuse output presets that hold a user's files now, not after the training."""
    from kzoo.presets import preset_io

    for path in destinations:
        preset_io.check_destination(path, force=config.force, options={"force": "pass --force"})


def set_up_backend(config):
    """Seed, dtype policy and distribution, before any model is built."""
    import keras

    distribution = None
    if config.data_parallel:
        from kzoo.backends import environment

        if not environment.supports_distribution():
            raise ValueError(
                "--data-parallel needs KERAS_BACKEND=jax (keras.distribution distributes on JAX "
                f"only); the backend is {environment.backend_name()}."
            )
        devices = keras.distribution.list_devices()
        if config.batch_size % len(devices):
            raise ValueError(
                f"--batch-size {config.batch_size} must be a multiple of the {len(devices)} "
                "devices --data-parallel splits it over."
            )
        distribution = keras.distribution.DataParallel(devices=devices)
    keras.utils.set_random_seed(config.seed)
    keras.config.set_dtype_policy(config.dtype_policy)
    if distribution is not None:
        keras.distribution.set_distribution(distribution)


def new_model(config, num_classes):
    """A DETR built from the architecture options (no preset), not yet built."""
    from kzoo.models.detr.model.detr import DETR

    return DETR(
        num_classes=num_classes,
        num_queries=config.num_queries,
        d_model=config.d_model,
        num_heads=config.num_heads,
        num_encoder_layers=config.num_encoder_layers,
        num_decoder_layers=config.num_decoder_layers,
        ffn_dim=config.ffn_dim,
        dropout=config.dropout,
        backbone=config.backbone,
        # The layers follow the global policy (dtype_policy); the model itself stays float32,
        # so that a preset saved from a mixed-precision run loads as float32 by default.
        dtype="float32",
    )


def compile_model(model, config, steps_per_epoch):
    """DETR's optimizer with the run's learning rate, schedule, clipping and backbone scale."""
    import keras

    from kzoo.models.detr.training.optimizer import ScaledAdamW

    total = config.epochs * steps_per_epoch
    drop_at = max(1, int(total * config.lr_drop))
    schedule = (
        keras.optimizers.schedules.PiecewiseConstantDecay(
            [drop_at], [config.lr, config.lr * recipe.LR_DROP_FACTOR]
        )
        if drop_at < total
        else config.lr
    )
    if not model.built:
        model.build((None, None, None, 3))
    model.compile(
        **training_query_options(config),
        optimizer=ScaledAdamW(
            learning_rate=schedule,
            weight_decay=config.weight_decay,
            global_clipnorm=config.clipnorm,
            # Matched against variable paths, which start with the model's name.
            learning_rate_scales={model.backbone_path_pattern(): config.backbone_lr_scale},
        ),
    )
    return model


def training_query_options(config):
    """``compile``'s ``denoising`` and ``query_groups`` of the run (training-only queries)."""
    from kzoo.models.detr.training.training_queries import DenoisingConfig

    denoising = None
    if config.denoising_groups:
        denoising = DenoisingConfig(
            groups=config.denoising_groups,
            box_noise_scale=config.box_noise_scale,
            label_noise_ratio=config.label_noise_ratio,
        )
    return {"denoising": denoising, "query_groups": config.query_groups}


def synthetic_model(config):
    """The synthetic run's compiled model (of a resolved ``config``)."""
    model = new_model(config, config.num_classes)
    model.build((None, config.image_size, config.image_size, 3))
    return compile_model(model, config, math.ceil(config.train_images / config.batch_size))


def model_definition(config, num_classes):
    """What a backup depends on: recorded in it, compared when resuming (``start_run``).

    The training-only queries are part of it when they are on (their weights are in the
    backups); runs without them record what they always did.
    """
    definition = _model_definition(config, num_classes)
    if config.denoising_groups:
        definition["denoising_groups"] = config.denoising_groups
    if config.query_groups != 1:
        definition["query_groups"] = config.query_groups
    return definition


def _model_definition(config, num_classes):
    if config.preset is None and not config.coco:
        return {key: getattr(config, key) for key in ARCHITECTURE_KEYS}
    if config.preset is not None:
        definition = {"preset": config.preset, "num_classes": num_classes}
    else:
        definition = {key: getattr(config, key) for key in ARCHITECTURE_KEYS}
        definition.update(num_classes=num_classes, backbone=config.backbone)
    definition["freeze_backbone"] = config.freeze_backbone
    return definition


def start_run(config, definition=None):
    """The run's backup callback, once every check has passed: drops the backup with
    ``fresh``, refuses a backup made for another model (before anything is trained).

    ``definition`` is the ``{option: value}`` that defines the model (default: the synthetic
    run's, ``model_definition``); the backups record it.
    """
    from kzoo.training.callbacks import AtomicBackupAndRestore

    if definition is None:
        definition = model_definition(config, config.num_classes)
    out = os.path.abspath(config.out)
    backup = AtomicBackupAndRestore(
        os.path.join(out, "backup"),
        config=definition,
        option_names={key: flag(key) for key in definition},
    )
    if config.fresh:
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


def fit(model, data, config, callbacks):
    """``model.fit`` of the run: ``callbacks`` hold the backup (see ``start_run``)."""
    # The datasets shuffle by their own seed and epoch; keras' shuffle of the batch order
    # would draw from the global generator, which a resumed run cannot reproduce.
    return model.fit(
        data, epochs=config.epochs, callbacks=callbacks, verbose=config.verbose, shuffle=False
    )


def fit_and_save(model, data, config, callbacks, time_limit, preset_dir, metadata):
    """Train, save the model as a preset (``metadata`` and the steps trained in its metadata),
    and return the run's summary for ``eval.json``."""
    import keras

    from kzoo.presets import preset_io

    start = time.time()
    history = fit(model, data, config, callbacks)
    seconds = time.time() - start
    steps = int(keras.ops.convert_to_numpy(model.optimizer.iterations))
    # The preset is the inference model: training-only queries stay in the backups only.
    with model.without_training_queries():
        preset_io.save_preset(
            model,
            preset_dir,
            force=config.force,
            extra_metadata={**metadata, "trained_steps": steps},
        )
    losses = history.history.get("loss")
    return {
        "steps": steps,
        "train_seconds": round(seconds, 1),
        "stopped_by_time_limit": time_limit.stopped,
        "final_loss": float(losses[-1]) if losses else None,
        "backend": keras.backend.backend(),
    }


def time_limit_callback(config):
    from kzoo.training.callbacks import TimeLimit

    return TimeLimit(
        config.time_limit * 60 if config.time_limit else None,
        cpu_seconds=config.cpu_time_limit * 60 if config.cpu_time_limit else None,
    )


def run_arguments(config):
    """The run's options for ``eval.json``: ``kzoo train detr``'s, as that command names them."""
    return {"command": "train", "target": "detr", **config.to_dict()}


def write_eval(out, result):
    from kzoo.utils.files import atomic_file

    with atomic_file(os.path.join(out, "eval.json"), "w") as f:
        json.dump(result, f, indent=2)


# --------------------------------------------------------------------------- data


def synthetic_datasets(config):
    """``(train, held_out)`` ``SyntheticDetection`` sets of a resolved ``config``."""
    from kzoo.data.detection import SyntheticDetection

    common = dict(
        image_size=config.image_size,
        batch_size=config.batch_size,
        num_classes=config.num_classes,
        max_objects=config.max_objects,
    )
    # Two threads render batches ahead of the training step.
    train_data = SyntheticDetection(
        num_images=config.train_images, seed=config.seed, shuffle=True, workers=2, **common
    )
    held_out = SyntheticDetection(
        num_images=config.eval_images, seed=config.seed + recipe.HELD_OUT_SEED_OFFSET, **common
    )
    return train_data, held_out


def _check_folder(path, option):
    if not os.path.isdir(path):
        what = "does not exist" if not os.path.exists(path) else "is not a directory"
        raise ValueError(f"{option} {path!r} {what}; it must be the folder of the images.")


def check_paths(config):
    """The data options name files and folders that exist; validation comes in pairs."""
    # The command line's own check, so a mistake reads the same through the API (it names the
    # option).
    from kzoo.utils.paths import check_input_file

    if config.train_images is None:
        raise ValueError("--train-annotations needs --train-images DIR (the images' folder).")
    check_input_file(config.train_annotations, "--train-annotations")
    _check_folder(config.train_images, "--train-images")
    if (config.val_annotations is None) != (config.val_images is None):
        given, missing = (
            ("--val-annotations", "--val-images")
            if config.val_annotations is not None
            else ("--val-images", "--val-annotations")
        )
        raise ValueError(f"{given} needs {missing} too.")
    if config.val_annotations is not None:
        check_input_file(config.val_annotations, "--val-annotations")
        _check_folder(config.val_images, "--val-images")


def coco_sizes(config):
    """``config`` with the COCO run's ``image_size`` and ``max_size``: given, else the preset's
    (its metadata), else DETR's (the recipe)."""
    from kzoo.models.detr.training.finetune import preset_image_size

    image_size, max_size = config.image_size, config.max_size
    if image_size is None:
        size, preset_max = preset_image_size(config.preset) if config.preset else (None, None)
        image_size = size or recipe.EVAL_SIZE
        if max_size is None:
            max_size = preset_max
    if max_size is None:
        max_size = recipe.default_max_size(image_size)
    if max_size < image_size:
        raise ValueError(f"--max-size ({max_size}) must be >= --image-size ({image_size}).")
    return dataclasses.replace(config, image_size=image_size, max_size=max_size)


def train_transform(kind, image_size, max_size):
    """The training augmentation ``augment`` names, at ``image_size`` / ``max_size``."""
    from kzoo.data.detr_transforms import DetrEvalTransform, DetrTrainTransform

    if kind == "none":
        return DetrEvalTransform(image_size, max_size)
    if kind == "flip":
        return DetrTrainTransform(scales=(image_size,), max_size=max_size, crop_resize=None)
    crop_min, crop_max = recipe.scaled(recipe.CROP_SIZE, image_size)
    return DetrTrainTransform(
        scales=recipe.scaled(recipe.TRAIN_SCALES, image_size),
        max_size=max_size,
        crop_resize=recipe.scaled(recipe.CROP_RESIZE, image_size),
        crop_size=(crop_min, crop_max),
    )


def coco_datasets(config):
    """``(train, val or None)`` CocoDetection sets; every annotation problem is raised here."""
    from kzoo.data.coco import CocoDetection
    from kzoo.data.detr_transforms import DetrEvalTransform

    pad = config.pad_multiple or None
    train_data = CocoDetection(
        config.train_annotations,
        config.train_images,
        batch_size=config.batch_size,
        shuffle=True,
        seed=config.seed,
        transforms=train_transform(config.augment, config.image_size, config.max_size),
        max_objects=config.max_objects,
        pad_to_multiple=pad,
        workers=config.workers,
        # Data-parallel steps split every batch evenly over the devices.
        drop_remainder=config.data_parallel,
    )
    if config.num_classes is not None and config.num_classes != train_data.num_classes:
        raise ValueError(
            f"--num-classes {config.num_classes}, but {config.train_annotations} has "
            f"{train_data.num_classes} categories; leave --num-classes out with COCO data."
        )
    val = None
    if config.val_annotations is not None:
        val = CocoDetection(
            config.val_annotations,
            config.val_images,
            batch_size=config.batch_size,
            transforms=DetrEvalTransform(config.image_size, config.max_size),
            pad_to_multiple=pad,
        )
        unknown = sorted(set(val.category_ids) - set(train_data.category_ids))
        if unknown:
            raise ValueError(
                f"{config.val_annotations} has category ids {unknown[:10]} that "
                f"{config.train_annotations} does not have; the model can only predict the "
                "training set's categories."
            )
    return train_data, val


def coco_model(config, train_data):
    """The DETR to train on COCO data: a fine-tuned preset or a new model, not yet compiled."""
    if config.preset is not None:
        from kzoo.models.detr.model.detr import DETR

        overrides = {} if config.dropout is None else {"dropout": config.dropout}
        # The layers follow the global dtype policy; the model stays float32 (see new_model).
        model = DETR.from_preset(
            config.preset, num_classes=train_data.num_classes, dtype="float32", **overrides
        )
    else:
        model = new_model(config, train_data.num_classes)
        model.build((None, None, None, 3))
    if train_data.max_objects > model.num_queries:
        raise ValueError(
            f"{config.train_annotations} has an image with {train_data.max_objects} boxes but "
            f"the model has {model.num_queries} queries (one object per query); use a model "
            "with more --num-queries, or a smaller --max-objects if the boxes allow it."
        )
    if config.freeze_backbone:
        model.backbone.trainable = False
    return model
