"""Training, evaluation and pictures for the colour-frame predictor (CLI and scripts use these)."""

import json
import os
import time

import keras
import numpy as np

from kzoo.data.moving_objects import MovingObjectsDataset, moving_objects, next_frame_targets
from kzoo.models.conv_lstm.frame_predictors import ColorFramePredictor
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
EVAL_SEED = 10_000


def train_color_predictor(
    output_dir,
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
):
    """Train a ``ColorFramePredictor`` on seeded synthetic colour videos.

    The first ``warmup_epochs`` epochs minimise binary cross-entropy instead of MAE: MAE's
    gradient vanishes once the sigmoid head has saturated at the black background, where a
    fresh model lands within an epoch; cross-entropy keeps pulling the objects out.

    ``initial_preset`` continues training that preset's model instead of a new one.

    Writes the preset to ``preset_dir`` (default ``output_dir/preset``), the loss curve to
    ``output_dir/loss_curve.png`` and the history to ``output_dir/history.json``.
    Returns ``(model, history_dict, seconds)``.
    """
    for name, value in (
        ("epochs", epochs),
        ("batch_size", batch_size),
        ("num_sequences", num_sequences),
    ):
        if not isinstance(value, int) or value <= 0:
            raise ValueError(f"`{name}` must be a positive integer; got {value!r}.")
    keras.utils.set_random_seed(seed)
    train = MovingObjectsDataset(
        num_sequences, batch_size=batch_size, target="last", seed=seed, **DATA_OPTIONS
    )
    val = MovingObjectsDataset(
        val_sequences, batch_size=batch_size, target="last", seed=seed + 1, **DATA_OPTIONS
    )
    if initial_preset is not None:
        # Continue training a saved model (e.g. a second stage at a lower learning rate).
        model = ColorFramePredictor.from_preset(initial_preset)
    else:
        model = ColorFramePredictor(channels=3, filters=filters, kernel_sizes=kernel_sizes)
    start = time.time()
    hist = {}
    for loss, n in (("binary_crossentropy", warmup_epochs), ("mae", epochs - warmup_epochs)):
        if n <= 0:
            continue
        model.compile(optimizer=keras.optimizers.Adam(learning_rate), loss=loss)
        history = model.fit(train, validation_data=val, epochs=n, verbose=verbose)
        for key, values in history.history.items():
            hist.setdefault(key, []).extend(float(v) for v in values)
        hist.setdefault("loss_name", []).extend([loss] * n)
    # The preset is saved compiled with the model's defaults (Adam, MAE, MAE).
    model.compile()
    seconds = time.time() - start
    os.makedirs(output_dir, exist_ok=True)
    preset_dir = preset_dir or os.path.join(output_dir, "preset")
    model.save_to_preset(preset_dir)
    with atomic_file(os.path.join(output_dir, "history.json"), mode="w") as f:
        json.dump({"history": hist, "seconds": seconds, "seed": seed}, f, indent=2)
    save_loss_curve(hist, os.path.join(output_dir, "loss_curve.png"))
    return model, hist, seconds


def save_loss_curve(history, path):
    """A PNG of the training (and validation) loss per epoch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.2), dpi=100)
    epochs = np.arange(1, len(history["loss"]) + 1)
    ax.plot(epochs, history["mae"], marker="o", label="train MAE")
    if "val_mae" in history:
        ax.plot(epochs, history["val_mae"], marker="o", label="validation MAE")
    ax.set_xlabel("epoch")
    ax.set_ylabel("mean absolute error")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_file(path) as f:
        fig.savefig(f, format="png")
    plt.close(fig)
    return path


def evaluate_against_copy_last(model, num_sequences=64, seed=EVAL_SEED, batch_size=16):
    """MAE of ``model`` and of copying the last input frame, on freshly generated videos."""
    videos = moving_objects(num_sequences, seed=seed, **DATA_OPTIONS)
    x, y = next_frame_targets(videos, target="last")
    pred = model.predict(x, batch_size=batch_size, verbose=0)
    return {
        "model_mae": float(np.mean(np.abs(pred - y))),
        "copy_last_mae": float(np.mean(np.abs(x[:, -1] - y))),
        "num_sequences": num_sequences,
        "seed": seed,
    }


def save_prediction_grid(model, path, num_examples=3, seed=EVAL_SEED, input_frames=4):
    """A PNG: for each example, the last ``input_frames`` inputs, the true next frame and the
    model's prediction."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not isinstance(num_examples, int) or num_examples <= 0:
        raise ValueError(f"`num_examples` must be a positive integer; got {num_examples!r}.")
    if not str(path).lower().endswith(".png"):
        raise ValueError(f"`--out` must name a .png file; got {path!r}.")
    videos = moving_objects(num_examples, seed=seed, **DATA_OPTIONS)
    x, y = next_frame_targets(videos, target="last")
    pred = np.clip(model.predict(x, verbose=0), 0.0, 1.0)
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
