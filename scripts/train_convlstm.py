"""Train the shipped ``convlstm_color_shapes`` preset (seeded) and report its MAE against the
copy-the-last-frame baseline on freshly generated sequences.

Usage (the shipped preset was made with the defaults, on torch, the fastest backend on CPU):

    KERAS_BACKEND=torch python scripts/train_convlstm.py

It writes the preset to ``kzoo/presets/builtin/convlstm_color_shapes`` (``--preset-dir``), and
the loss curve and history to ``--output-dir``.
"""

import argparse
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


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
    sys.path.insert(0, ROOT)
    # Read by torch (and OpenMP) at import: set before keras loads the backend.
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))

    import keras

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
    )
    result = training.evaluate_against_copy_last(model)
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
    with open(os.path.join(args.output_dir, "evaluation.json"), "w") as f:
        json.dump(result, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
