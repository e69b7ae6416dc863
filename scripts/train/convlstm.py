"""Train the shipped ``convlstm_color_shapes`` preset (seeded) and report its MAE against the
copy-the-last-frame baseline on freshly generated sequences.

Usage (the shipped preset was made with the defaults, on torch, the fastest backend on CPU):

    KERAS_BACKEND=torch python scripts/train/convlstm.py

It writes the preset to ``kzoo/presets/builtin/convlstm_color_shapes`` (``--preset-dir``), and
the loss curve and history to ``--output-dir``. It also prints the per-step MSE of a 10-step
rollout (``--eval-steps``) against copying the last frame. ``--rollout-steps K`` trains the
model's own K-step rollout (unrolled into one graph) on the next K true frames: that is how
``convlstm_color_shapes_rollout`` was made (the commands are in docs/benchmarks-history.md). An
interrupted run resumes from ``--output-dir/backup`` when rerun with the same arguments.
"""

import argparse
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=14)
    parser.add_argument(
        "--warmup-epochs",
        type=int,
        default=5,
        help="first epochs on binary cross-entropy (MAE alone stalls at a black frame)",
    )
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--num-sequences", type=int, default=768)
    parser.add_argument("--val-sequences", type=int, default=64)
    parser.add_argument("--filters", default="16,16")
    parser.add_argument("--kernel-sizes", default="3,3")
    parser.add_argument("--learning-rate", type=float, default=2e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--loss", default=None, help="loss after the warm-up: mae (default), mse, or bce"
    )
    parser.add_argument(
        "--rollout-steps",
        type=int,
        default=1,
        help="above 1: train the model's own rollout over that many steps (unrolled)",
    )
    parser.add_argument("--eval-steps", type=int, default=10, help="rollout steps evaluated")
    parser.add_argument("--fresh", action="store_true", help="ignore an interrupted run's backup")
    parser.add_argument(
        "--initial-preset", default=None, help="continue training this preset's model"
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="CPU threads (OMP_NUM_THREADS); one is fastest on a shared 2-core machine",
    )
    parser.add_argument(
        "--preset-dir",
        default=os.path.join(ROOT, "kzoo", "presets", "builtin", "convlstm_color_shapes"),
    )
    parser.add_argument("--output-dir", default=os.path.join(ROOT, "build", "convlstm_train"))
    args = parser.parse_args()
    # Read by torch (and OpenMP) at import: set before keras loads the backend.
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))

    import keras
    import numpy as np

    from kzoo.models.conv_lstm import training

    model, history, seconds = training.train_color_predictor(
        args.output_dir,
        epochs=args.epochs,
        batch_size=args.batch_size,
        num_sequences=args.num_sequences,
        val_sequences=args.val_sequences,
        filters=tuple(int(f) for f in args.filters.split(",")),
        kernel_sizes=tuple(int(k) for k in args.kernel_sizes.split(",")),
        learning_rate=args.learning_rate,
        seed=args.seed,
        verbose=2,
        preset_dir=args.preset_dir,
        warmup_epochs=args.warmup_epochs,
        initial_preset=args.initial_preset,
        loss={"bce": "binary_crossentropy"}.get(args.loss, args.loss),
        rollout_steps=args.rollout_steps,
        fresh=args.fresh,
    )
    result = training.evaluate_against_copy_last(model)
    # Per-step MSE of a rollout against copying the last input frame, on fresh videos.
    x, future = training.synthetic_rollout_data(model, 64, args.eval_steps)
    pred = model.rollout(x, steps=args.eval_steps)
    result["rollout_mse"] = [float(v) for v in np.mean((pred - future) ** 2, axis=(0, 2, 3, 4))]
    result["copy_last_rollout_mse"] = [
        float(v) for v in np.mean((x[:, -1:] - future) ** 2, axis=(0, 2, 3, 4))
    ]
    result["beats_copy_last_every_step"] = all(
        m < c for m, c in zip(result["rollout_mse"], result["copy_last_rollout_mse"])
    )
    result.update(
        backend=keras.backend.backend(),
        train_seconds=round(seconds, 1),
        final_loss=history["loss"][-1],
        final_val_loss=history.get("val_loss", [None])[-1],
        ratio=result["model_mae"] / result["copy_last_mae"],
        params=model.count_params(),
        args=vars(args),
    )
    print(json.dumps(result, indent=2))
    os.makedirs(args.output_dir, exist_ok=True)
    with open(os.path.join(args.output_dir, "evaluation.json"), "w") as f:
        json.dump(result, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
