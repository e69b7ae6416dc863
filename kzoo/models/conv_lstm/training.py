"""Training, evaluation and pictures for the ConvLSTM predictors (the CLI and scripts use these).

Training is resumable: after every epoch the model (with its optimizer state), the epoch and the
history so far are written, atomically, to ``<output_dir>/backup/`` (``kzoo.training``'s
``AtomicBackupAndRestore``); a run with the same arguments continues from the newest one
(``fresh=True`` starts over), and one with other arguments is refused. A loss that turns NaN or
infinite stops the run with ``TrainingDiverged`` before anything in ``output_dir`` is replaced.
"""

import json
import math
import os
import warnings

import keras
import numpy as np

from kzoo.data.moving_objects import moving_objects, next_frame_targets
from kzoo.models.conv_lstm.frame_predictors import ColorFramePredictor, NextFramePredictor
from kzoo.presets import preset_io
from kzoo.training.callbacks import AtomicBackupAndRestore, StopOnNaN, TrainingDiverged
from kzoo.utils.files import atomic_file

# The data the shipped preset was trained on; evaluation draws fresh sequences of the same kind.
DATA_OPTIONS = dict(
    num_frames=7,
    image_size=24,
    num_objects=2,
    color=True,
    kind="shapes",
    object_size=(5, 8),
    max_speed=2.0,
)
INPUT_FRAMES = DATA_OPTIONS["num_frames"] - 1
EVAL_SEED = 10_000
KINDS = ("color", "next")
LOSSES = ("mae", "mse", "binary_crossentropy")
BACKUP_DIR = "backup"


def check_learning_rate(value, name="`learning_rate`"):
    """``value`` as a float, or a ``ValueError`` unless it is finite and positive."""
    try:
        rate = float(value)
    except (TypeError, ValueError):
        rate = float("nan")
    if isinstance(value, bool) or not math.isfinite(rate) or rate <= 0:
        raise ValueError(f"{name} must be a finite number greater than 0; got {value!r}.")
    return rate


def _check_positive_int(value, name):
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value <= 0:
        raise ValueError(f"`{name}` must be a positive integer; got {value!r}.")
    return int(value)


def _frame_size(value):
    size = (value, value) if isinstance(value, (int, np.integer)) else tuple(value)
    if len(size) != 2 or not all(isinstance(s, (int, np.integer)) and s > 0 for s in size):
        raise ValueError(f"`frame_size` must be a positive int or (height, width); got {value!r}.")
    return int(size[0]), int(size[1])


def synthetic_options(channels, input_frames=INPUT_FRAMES, future_frames=1, frame_size=None):
    """``moving_objects`` options for a model with ``channels`` (1: grey, 3: colour)."""
    if channels not in (1, 3):
        raise ValueError(
            f"Synthetic videos are grey (1 channel) or RGB (3); the model takes {channels}."
        )
    options = dict(DATA_OPTIONS, color=channels == 3, num_frames=input_frames + future_frames)
    if frame_size is not None:
        height, width = _frame_size(frame_size)
        if height != width:
            raise ValueError(f"Synthetic frames are square; got frame size {frame_size!r}.")
        options["image_size"] = height
    return options


class SyntheticWindows(keras.utils.PyDataset):
    """Batches of fresh ``moving_objects`` videos cut into inputs and targets.

    ``target``: ``"next_frame"`` (the frame after the inputs, ``ColorFramePredictor``),
    ``"next_sequence"`` (the inputs shifted by one frame, ``NextFramePredictor``) or
    ``"future"`` (the ``future_frames`` frames after the inputs, for rollout training).
    Batch ``b`` always holds the same videos (sequences ``b * batch_size ...`` of ``seed``).
    """

    def __init__(
        self,
        num_sequences,
        batch_size,
        input_frames,
        target,
        channels,
        future_frames=1,
        frame_size=None,
        seed=0,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.num_sequences = _check_positive_int(num_sequences, "num_sequences")
        self.batch_size = _check_positive_int(batch_size, "batch_size")
        self.input_frames = _check_positive_int(input_frames, "input_frames")
        if target not in ("next_frame", "next_sequence", "future"):
            raise ValueError(f"Unknown target {target!r}.")
        self.target = target
        self.future_frames = future_frames if target == "future" else 1
        self.options = synthetic_options(channels, input_frames, self.future_frames, frame_size)
        self.seed = seed

    def __len__(self):
        return -(-self.num_sequences // self.batch_size)

    def __getitem__(self, index):
        if not 0 <= index < len(self):
            raise IndexError(f"batch {index} out of range (dataset has {len(self)}).")
        start = index * self.batch_size
        count = min(self.batch_size, self.num_sequences - start)
        videos = moving_objects(count, start=start, seed=self.seed, **self.options)
        n = self.input_frames
        if self.target == "next_frame":
            return next_frame_targets(videos, "last")
        if self.target == "next_sequence":
            return next_frame_targets(videos, "sequence")
        return videos[:, :n], videos[:, n:]


def unrolled_model(model, input_frames, steps, frame_size, channels):
    """A model that runs ``model.rollout`` for ``steps`` steps as one differentiable graph.

    Training it on the next ``steps`` true frames (``SyntheticWindows(target="future")``)
    teaches ``model`` to correct its own mistakes, which one-step training never shows it.
    The weights are ``model``'s own.
    """
    height, width = frame_size
    inputs = keras.Input((input_frames, height, width, channels), name="frames")
    window, outputs = inputs, []
    for step in range(steps):
        frame = model(window)
        if isinstance(model, NextFramePredictor):
            frame = frame[:, -1]
        outputs.append(frame)
        if step < steps - 1:
            window = keras.ops.concatenate([window[:, 1:], keras.ops.expand_dims(frame, 1)], 1)
    return keras.Model(inputs, keras.ops.stack(outputs, axis=1), name="unrolled_" + model.name)


def _finite(model, dataset):
    """Whether ``model``'s weights and its outputs on the first batch are all finite."""
    weights = all(np.isfinite(keras.ops.convert_to_numpy(w)).all() for w in model.weights)
    if not weights:
        return False
    outputs = keras.ops.convert_to_numpy(model.predict_on_batch(dataset[0][0]))
    return bool(np.isfinite(outputs).all())


def _stage_of(epoch, stages):
    """Index of the stage that trains epoch ``epoch`` (0-based)."""
    for index, (_, start, end) in enumerate(stages):
        if start <= epoch < end:
            return index
    return len(stages) - 1


def train_frame_predictor(
    output_dir,
    kind="color",
    epochs=10,
    batch_size=16,
    num_sequences=1024,
    val_sequences=128,
    filters=(16, 16),
    kernel_sizes=(3, 3),
    learning_rate=1e-3,
    seed=0,
    verbose="auto",
    preset_dir=None,
    warmup_epochs=0,
    initial_preset=None,
    loss=None,
    rollout_steps=1,
    data=None,
    input_frames=INPUT_FRAMES,
    frame_size=DATA_OPTIONS["image_size"],
    channels=None,
    validation_split=0.1,
    stride=1,
    fresh=False,
):
    """Train a ``ColorFramePredictor`` (``kind="color"``) or a ``NextFramePredictor``
    (``kind="next"``) on seeded synthetic videos or on a folder of videos.

    Args:
        output_dir: Receives ``preset/``, ``loss_curve.png``, ``history.json`` and, while the
            run lasts, ``backup/`` (removed when the preset is written).
        kind: ``"color"`` or ``"next"``.
        epochs, batch_size: As in ``fit``.
        num_sequences, val_sequences: Synthetic training and validation videos per epoch.
        filters, kernel_sizes: The ConvLSTM2D stack of a new model.
        learning_rate: Adam's learning rate, finite and positive.
        seed: Seeds the weights, the synthetic videos and the video-folder split and shuffle.
        warmup_epochs: First epochs on binary cross-entropy (``kind="color"``): MAE's
            gradient vanishes once the sigmoid head has saturated at the black background,
            where a fresh model lands within an epoch; cross-entropy keeps pulling the
            objects out.
        initial_preset: Continue training this preset's model instead of a new one.
        loss: Loss after the warm-up (default: the model's own, MAE for colour,
            binary cross-entropy for next-frame).
        rollout_steps: Above 1, train the model's own ``rollout`` over that many steps
            (``unrolled_model``) on the next ``rollout_steps`` true frames.
        data: A folder of videos (``kzoo.data.VideoFolder``) instead of synthetic videos.
        input_frames: Frames the model sees per example.
        frame_size: Frame size (synthetic videos, or what ``data``'s frames are resized to).
        channels: Frame channels (default 3 for colour, 1 for next-frame).
        validation_split: Share of ``data``'s videos held out for validation.
        stride: Step between windows cut from ``data``'s videos.
        fresh: Start over even if ``output_dir/backup`` holds an interrupted run.

    Returns ``(model, history_dict, seconds)``; raises ``TrainingDiverged`` (and replaces
    nothing) when the loss becomes NaN or infinite.
    """
    if kind not in KINDS:
        raise ValueError(f"`kind` must be one of {KINDS}; got {kind!r}.")
    for name, value in (
        ("epochs", epochs),
        ("batch_size", batch_size),
        ("num_sequences", num_sequences),
        ("val_sequences", val_sequences),
        ("input_frames", input_frames),
        ("rollout_steps", rollout_steps),
        ("stride", stride),
    ):
        _check_positive_int(value, name)
    learning_rate = check_learning_rate(learning_rate)
    if not isinstance(warmup_epochs, int) or not 0 <= warmup_epochs <= epochs:
        raise ValueError(f"`warmup_epochs` must be between 0 and `epochs`; got {warmup_epochs!r}.")
    loss = loss or ("mae" if kind == "color" else "binary_crossentropy")
    if loss not in LOSSES:
        raise ValueError(f"`loss` must be one of {LOSSES}; got {loss!r}.")
    channels = channels or (3 if kind == "color" else 1)
    _check_positive_int(channels, "channels")
    size = _frame_size(frame_size)
    if not 0 <= validation_split < 1:
        raise ValueError(f"`validation_split` must be in [0, 1); got {validation_split!r}.")
    # A destination that cannot take the preset (a folder of the user's own files) is refused
    # now, not after the whole run.
    preset_dir = preset_dir or os.path.join(output_dir, "preset")
    preset_io.check_destination(preset_dir)
    if data is not None and not os.path.isdir(data):
        raise ValueError(f"`data` must be a folder of videos; {data!r} is not a directory.")

    if rollout_steps > 1:
        target = "future"
    else:
        target = "next_frame" if kind == "color" else "next_sequence"
    if data is None:
        train = SyntheticWindows(
            num_sequences, batch_size, input_frames, target, channels, rollout_steps, size, seed
        )
        val = SyntheticWindows(
            val_sequences, batch_size, input_frames, target, channels, rollout_steps, size, seed + 1
        )
    else:
        from kzoo.data.video_folder import VideoFolder

        common = dict(
            input_frames=input_frames,
            target_frames=rollout_steps,
            target=target,
            frame_size=size,
            channels=channels,
            stride=stride,
            batch_size=batch_size,
            validation_split=validation_split,
            seed=seed,
        )
        train = VideoFolder(data, subset="training", shuffle=True, **common)
        val = VideoFolder(data, subset="validation", **common) if validation_split else None

    run_config = {
        "kind": kind,
        "epochs": epochs,
        "batch_size": batch_size,
        "num_sequences": num_sequences,
        "val_sequences": val_sequences,
        "filters": list(filters),
        "kernel_sizes": list(kernel_sizes),
        "learning_rate": learning_rate,
        "seed": seed,
        "warmup_epochs": warmup_epochs,
        "initial_preset": None if initial_preset is None else str(initial_preset),
        "loss": loss,
        "rollout_steps": rollout_steps,
        "data": None if data is None else os.path.abspath(data),
        "input_frames": input_frames,
        "frame_size": list(size),
        "channels": channels,
        "validation_split": validation_split,
        "stride": stride,
        "backend": keras.backend.backend(),
    }
    # Restored by hand below: each stage compiles its own optimizer, and only the stage that
    # wrote the backup may take its optimizer state.
    backup = AtomicBackupAndRestore(
        os.path.join(output_dir, BACKUP_DIR),
        config=run_config,
        delete_checkpoint=False,
        restore_on_train_begin=False,
    )
    if fresh:
        backup.clear()
    resume = backup.latest()

    keras.utils.set_random_seed(seed)
    cls = ColorFramePredictor if kind == "color" else NextFramePredictor
    if initial_preset is not None:
        model = cls.from_preset(initial_preset)
    elif kind == "color":
        model = ColorFramePredictor(
            channels=channels, output_channels=channels, filters=filters, kernel_sizes=kernel_sizes
        )
    else:
        model = NextFramePredictor(channels=channels, filters=filters, kernel_sizes=kernel_sizes)
    if model.channels != channels:
        raise ValueError(
            f"The initial preset takes {model.channels}-channel frames, not {channels}."
        )
    if rollout_steps > 1:
        trainee = unrolled_model(model, input_frames, rollout_steps, size, channels)
    else:
        trainee = model

    stages = []
    for stage_loss, n in (("binary_crossentropy", warmup_epochs), (loss, epochs - warmup_epochs)):
        if n > 0:
            start = stages[-1][2] if stages else 0
            stages.append((stage_loss, start, start + n))

    def compile_stage(index):
        trainee.compile(
            optimizer=keras.optimizers.Adam(learning_rate), loss=stages[index][0], metrics=["mae"]
        )

    first_epoch = 0
    loaded_stage = None
    if resume is not None:
        first_epoch = resume.epoch
        # The checkpoint holds the optimizer state of the stage that wrote it.
        loaded_stage = _stage_of(first_epoch - 1, stages)
        compile_stage(loaded_stage)
        backup.restore(trainee)
        if verbose:
            print(f"resuming from {resume.path}: {first_epoch} of {epochs} epochs done")

    callbacks = [StopOnNaN(), backup]
    if hasattr(train, "epoch_callback"):
        # Shuffle by epoch number: a resumed run sees the orders the whole run would have.
        callbacks.append(train.epoch_callback())
    for index, (stage_loss, start, end) in enumerate(stages):
        if first_epoch >= end:
            continue
        if not (index == loaded_stage and first_epoch > start):
            compile_stage(index)
        backup.tags = {"loss_name": stage_loss}
        initial = max(start, first_epoch)
        try:
            trainee.fit(
                train,
                validation_data=val,
                epochs=end,
                initial_epoch=initial,
                verbose=verbose,
                callbacks=callbacks,
            )
        except (RuntimeError, ValueError) as e:
            # Some losses refuse NaN inputs outright (torch's binary cross-entropy raises)
            # instead of returning a NaN loss: report that as the divergence it is.
            if isinstance(e, TrainingDiverged) or _finite(trainee, train):
                raise
            raise TrainingDiverged(
                f"training stopped: the model's outputs became NaN or infinite in epoch "
                f"{callbacks[0].epoch + 1} (try a lower learning rate)"
            ) from e
    hist = backup.history
    seconds = backup.seconds
    # The preset is saved compiled with the model's defaults (Adam, its loss, MAE).
    model.compile()
    os.makedirs(output_dir, exist_ok=True)
    preset_io.save_preset(
        model,
        preset_dir,
        extra_metadata={
            "input_frames": input_frames,
            "frame_size": list(size),
            "training_data": "synthetic moving shapes" if data is None else "video folder",
        },
    )
    with atomic_file(os.path.join(output_dir, "history.json"), mode="w") as f:
        json.dump({"history": hist, "seconds": seconds, "seed": seed}, f, indent=2)
    save_loss_curve(hist, os.path.join(output_dir, "loss_curve.png"))
    backup.clear()
    return model, hist, seconds


def train_color_predictor(output_dir, **kwargs):
    """``train_frame_predictor(output_dir, kind="color", ...)``."""
    return train_frame_predictor(output_dir, kind="color", **kwargs)


def save_loss_curve(history, path):
    """A PNG of the training (and validation) MAE per epoch."""
    from kzoo.utils.plots import save_curves

    key = "mae" if "mae" in history else "loss"
    epochs = np.arange(1, len(history[key]) + 1)
    curves = {f"train {key.upper()}": (epochs, history[key])}
    if "val_" + key in history:
        curves[f"validation {key.upper()}"] = (epochs, history["val_" + key])
    return save_curves([("mean absolute error" if key == "mae" else "loss", curves)], path)


def input_frames_of(preset):
    """How many frames the preset's model was trained to see (recorded when it was saved)."""
    try:
        meta = preset_io.read_metadata(preset_io.resolve_preset(preset))
    except (OSError, ValueError):
        meta = {}
    return int(meta.get("input_frames", INPUT_FRAMES))


def synthetic_rollout_data(model, num_sequences, steps, seed=EVAL_SEED, input_frames=INPUT_FRAMES):
    """``(inputs, future)``: fresh synthetic videos for ``model``'s channels, cut into
    ``input_frames`` inputs and the ``steps`` frames after them."""
    options = synthetic_options(model.channels, input_frames, steps)
    videos = moving_objects(num_sequences, seed=seed, **options)
    return videos[:, :input_frames], videos[:, input_frames:]


def evaluate_against_copy_last(
    model, num_sequences=64, seed=EVAL_SEED, batch_size=16, input_frames=INPUT_FRAMES
):
    """MAE of ``model``'s next frame and of copying the last input frame, on fresh videos."""
    x, future = synthetic_rollout_data(model, num_sequences, 1, seed, input_frames)
    pred = model.rollout(x, steps=1, batch_size=batch_size)
    return {
        "model_mae": float(np.mean(np.abs(pred - future))),
        "copy_last_mae": float(np.mean(np.abs(x[:, -1:] - future))),
        "num_sequences": num_sequences,
        "seed": seed,
    }


def evaluate_dataset_against_copy_last(model, dataset, max_batches=16):
    """MAE of ``model``'s next frame and of copying the last input frame on the windows of a
    ``VideoFolder`` (any target: the frame after the inputs is the first target frame)."""
    errors, baseline, count = 0.0, 0.0, 0
    for index in range(min(len(dataset), max_batches)):
        x, y = dataset[index]
        if dataset.target == "next_sequence":
            nxt = y[:, -1]
        elif dataset.target == "future":
            nxt = y[:, 0]
        else:
            nxt = y
        pred = model.rollout(x, steps=1)[:, 0]
        errors += float(np.abs(pred - nxt).mean()) * len(x)
        baseline += float(np.abs(x[:, -1] - nxt).mean()) * len(x)
        count += len(x)
    return {"model_mae": errors / count, "copy_last_mae": baseline / count, "windows": count}


def save_prediction_grid(
    model,
    path,
    num_examples=3,
    seed=EVAL_SEED,
    input_frames=4,
    context_frames=INPUT_FRAMES,
    windows=None,
):
    """A PNG: for each example, the last ``input_frames`` inputs, the true next frame and the
    model's prediction. ``windows``: ``(inputs, next_frames)`` to show instead of fresh
    synthetic videos."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not isinstance(num_examples, int) or num_examples <= 0:
        raise ValueError(f"`num_examples` must be a positive integer; got {num_examples!r}.")
    if not str(path).lower().endswith(".png"):
        raise ValueError(f"`--out` must name a .png file; got {path!r}.")
    if windows is None:
        x, future = synthetic_rollout_data(model, num_examples, 1, seed, context_frames)
        y = future[:, 0]
    else:
        x, y = (np.asarray(a)[:num_examples] for a in windows)
        num_examples = len(x)
    pred = np.clip(model.rollout(x, steps=1)[:, 0], 0.0, 1.0)
    shown = min(input_frames, x.shape[1])
    cols = shown + 2
    fig, axes = plt.subplots(
        num_examples, cols, figsize=(1.4 * cols, 1.5 * num_examples), dpi=100, squeeze=False
    )
    for row in range(num_examples):
        frames = [x[row, -shown + i] for i in range(shown)] + [y[row], pred[row]]
        titles = [f"input t={x.shape[1] - shown + i}" for i in range(shown)]
        titles += ["ground truth", "prediction"]
        for col, (frame, title) in enumerate(zip(frames, titles)):
            ax = axes[row, col]
            ax.imshow(frame.squeeze(), cmap="gray" if frame.shape[-1] == 1 else None)
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(title, fontsize=7)
    fig.tight_layout()
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    with atomic_file(path) as f:
        fig.savefig(f, format="png")
    plt.close(fig)
    return path


def __getattr__(name):
    # TrainingBackup became kzoo.training's AtomicBackupAndRestore (kept for one release).
    if name == "TrainingBackup":
        warnings.warn(
            "kzoo.models.conv_lstm.training.TrainingBackup is deprecated; use "
            "AtomicBackupAndRestore from kzoo.training (kzoo.training.callbacks).",
            DeprecationWarning,
            stacklevel=2,
        )
        return AtomicBackupAndRestore
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
