"""Score a ConvLSTM predictor's rollout, step by step, against copying the last input frame.

For every rollout step it reports MSE, MAE, PSNR and SSIM (``kzoo.metrics``, frames in [0, 1])
of the model and of the copy-last-frame baseline, on fresh synthetic videos of the kind the
preset was trained on and, with ``--moving-mnist PATH``, on Moving MNIST
(``mnist_test_seq.npy``: 10 frames in, up to 10 predicted, as OpenSTL's protocol; grey frames
are repeated to RGB for a colour model). MSE here is the mean over pixels; OpenSTL's Moving MNIST
MSE is the sum over a frame's 64x64 pixels in 0-1 units (4096 times larger). An exactly copied
frame has an infinite PSNR: it is printed as ``inf`` and written to JSON as ``null``.

    KERAS_BACKEND=torch python scripts/train/eval_video.py --preset convlstm_color_shapes --steps 10
    KERAS_BACKEND=torch python scripts/train/eval_video.py --preset runs/next/preset \\
        --moving-mnist mnist_test_seq.npy --json results.json
"""

import argparse
import json
import os
import sys

METRICS = ("mse", "mae", "psnr", "ssim")


def score(model, inputs, future, batch_size=32):
    """Per-step metrics of ``model.rollout`` and of copying the last input frame."""
    import numpy as np

    from kzoo.metrics import per_frame_metrics

    def plain(values):
        # JSON has no infinity (an exact frame's PSNR) or NaN: those become null.
        return [float(v) if np.isfinite(v) else None for v in values]

    steps = future.shape[1]
    pred = model.rollout(inputs, steps=steps, batch_size=batch_size)
    copy = np.repeat(inputs[:, -1:], steps, axis=1)
    return {
        "model": {k: plain(v) for k, v in per_frame_metrics(future, pred).items()},
        "copy_last": {k: plain(v) for k, v in per_frame_metrics(future, copy).items()},
        "num_sequences": int(inputs.shape[0]),
        "input_frames": int(inputs.shape[1]),
        "frame_shape": list(inputs.shape[2:]),
    }


def format_table(name, result):
    lines = [
        f"{name}: {result['num_sequences']} videos, {result['input_frames']} frames in, "
        f"frames {'x'.join(str(s) for s in result['frame_shape'])}",
        "step  " + "  ".join(f"{m.upper() + ' model':>11} {'copy-last':>10}" for m in METRICS),
    ]
    model, copy = result["model"], result["copy_last"]
    for step in range(len(model["mse"])):
        cells = []
        for m in METRICS:
            digits = 2 if m == "psnr" else 4
            a, b = (float("inf") if v is None else v for v in (model[m][step], copy[m][step]))
            cells.append(f"{a:>11.{digits}f} {b:>10.{digits}f}")
        lines.append(f"{step + 1:>4}  " + "  ".join(cells))
    wins = sum(a < b for a, b in zip(model["mse"], copy["mse"]))  # MSE is always finite
    lines.append(f"model MSE below copy-last at {wins} of {len(model['mse'])} steps")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="convlstm_color_shapes", help="name or directory")
    parser.add_argument("--steps", type=int, default=10, help="rollout steps")
    parser.add_argument("--num-sequences", type=int, default=64, help="synthetic videos")
    parser.add_argument("--seed", type=int, default=10_000, help="seed of the synthetic videos")
    parser.add_argument("--moving-mnist", default=None, help="path of mnist_test_seq.npy")
    parser.add_argument("--mnist-sequences", type=int, default=256, help="Moving MNIST videos")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--json", default=None, help="write the results to this JSON file")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --json")
    args = parser.parse_args(argv)
    for name in ("steps", "num_sequences", "mnist_sequences", "batch_size"):
        if getattr(args, name) <= 0:
            parser.error(f"--{name.replace('_', '-')} must be positive")
    if args.json and os.path.exists(args.json) and not args.overwrite:
        parser.error(f"--json {args.json} already exists; pass --overwrite to replace it")

    import keras
    import numpy as np

    from kzoo.data.moving_mnist import load_moving_mnist
    from kzoo.models.conv_lstm import training
    from kzoo.presets import preset_io
    from kzoo.utils.files import atomic_file

    model = preset_io.load_preset(args.preset)
    if not hasattr(model, "rollout"):
        parser.error(f"{args.preset} is not a ConvLSTM frame predictor")
    input_frames = training.input_frames_of(args.preset)
    results = {
        "preset": args.preset,
        "model": type(model).__name__,
        "backend": keras.backend.backend(),
        "steps": args.steps,
        "datasets": {},
    }
    x, future = training.synthetic_rollout_data(
        model, args.num_sequences, args.steps, seed=args.seed, input_frames=input_frames
    )
    results["datasets"]["synthetic"] = dict(
        score(model, x, future, args.batch_size), seed=args.seed
    )
    print(format_table("synthetic moving shapes", results["datasets"]["synthetic"]))
    if args.moving_mnist:
        videos = load_moving_mnist(args.moving_mnist)[: args.mnist_sequences]
        steps = min(args.steps, videos.shape[1] - 10)
        x, future = videos[:, :10], videos[:, 10 : 10 + steps]
        if model.channels == 3:
            x, future = np.repeat(x, 3, axis=-1), np.repeat(future, 3, axis=-1)
        elif model.channels != 1:
            parser.error(f"the model takes {model.channels} channels; Moving MNIST has 1")
        results["datasets"]["moving_mnist"] = dict(
            score(model, x, future, args.batch_size), path=os.path.abspath(args.moving_mnist)
        )
        print()
        print(format_table("Moving MNIST", results["datasets"]["moving_mnist"]))
    if args.json:
        with atomic_file(args.json, mode="w") as f:
            json.dump(results, f, indent=2)
        print(f"\nwrote {os.path.abspath(args.json)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
