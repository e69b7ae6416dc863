"""``kzoo train convlstm-color`` and ``kzoo predict convlstm-color``."""

import os

DEFAULT_PRESET = "convlstm_color_shapes"


def register(commands):
    p = commands["train"].add_parser(
        "convlstm-color",
        help="train a ColorFramePredictor on synthetic coloured moving shapes",
        description="Train a ColorFramePredictor (ConvLSTM2D stack + Conv2D head) on seeded "
        "synthetic videos of coloured bouncing shapes; writes a preset, a loss-curve PNG and "
        "the history to --output-dir.",
    )
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--output-dir", required=True, help="directory for the preset and the plot")
    p.add_argument("--num-sequences", type=int, default=512, help="training videos per epoch")
    p.add_argument("--val-sequences", type=int, default=64)
    p.add_argument("--filters", default="16,16", help="filters of each ConvLSTM2D layer")
    p.add_argument("--kernel-sizes", default="3,3", help="kernel size of each ConvLSTM2D layer")
    p.add_argument("--learning-rate", type=float, default=2e-3)
    p.add_argument(
        "--warmup-epochs",
        type=int,
        default=None,
        help="first epochs trained on binary cross-entropy (default: half of --epochs)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=train_color)

    p = commands["predict"].add_parser(
        "convlstm-color",
        help="predict the next frame of synthetic colour videos; write a PNG grid",
        description="Run a ColorFramePredictor on freshly generated videos and write a PNG: "
        "the last input frames, the true next frame and the prediction, one row per video.",
    )
    p.add_argument(
        "--preset",
        default=DEFAULT_PRESET,
        help=f"preset name or directory (default: the shipped {DEFAULT_PRESET})",
    )
    p.add_argument("--out", default="grid.png", help="PNG file to write")
    p.add_argument("--num-examples", type=int, default=3, help="rows of the grid")
    p.add_argument("--seed", type=int, default=10_000, help="seed of the generated videos")
    p.set_defaults(func=predict_color)


def _int_list(text, name):
    try:
        values = tuple(int(v) for v in str(text).split(","))
    except ValueError:
        raise ValueError(f"--{name} must be comma-separated integers; got {text!r}.") from None
    if not values or min(values) <= 0:
        raise ValueError(f"--{name} must be positive integers; got {text!r}.")
    return values


def train_color(args):
    for name in ("epochs", "batch_size", "num_sequences", "val_sequences"):
        if getattr(args, name) <= 0:
            raise ValueError(
                f"--{name.replace('_', '-')} must be positive; got {getattr(args, name)}."
            )
    filters = _int_list(args.filters, "filters")
    kernel_sizes = _int_list(args.kernel_sizes, "kernel-sizes")
    if len(filters) != len(kernel_sizes):
        raise ValueError("--filters and --kernel-sizes must have the same number of entries.")
    warmup = args.epochs // 2 if args.warmup_epochs is None else args.warmup_epochs
    if not 0 <= warmup <= args.epochs:
        raise ValueError(f"--warmup-epochs must be between 0 and --epochs; got {warmup}.")

    from kzoo.models.conv_lstm import training

    model, history, seconds = training.train_color_predictor(
        args.output_dir,
        epochs=args.epochs,
        batch_size=args.batch_size,
        num_sequences=args.num_sequences,
        val_sequences=args.val_sequences,
        filters=filters,
        kernel_sizes=kernel_sizes,
        learning_rate=args.learning_rate,
        seed=args.seed,
        warmup_epochs=warmup,
        verbose=1,
    )
    result = training.evaluate_against_copy_last(model, num_sequences=32)
    out = os.path.abspath(args.output_dir)
    print(f"trained {args.epochs} epochs in {seconds:.0f} s")
    print(f"preset      {os.path.join(out, 'preset')}")
    print(f"loss curve  {os.path.join(out, 'loss_curve.png')}")
    print(
        f"MAE on fresh videos: model {result['model_mae']:.4f}, "
        f"copy-last-frame baseline {result['copy_last_mae']:.4f}"
    )
    return 0


def predict_color(args):
    if args.num_examples <= 0:
        raise ValueError(f"--num-examples must be positive; got {args.num_examples}.")
    if not args.out.lower().endswith(".png"):
        raise ValueError(f"--out must name a .png file; got {args.out!r}.")

    from kzoo.models.conv_lstm import training
    from kzoo.models.conv_lstm.frame_predictors import ColorFramePredictor

    model = ColorFramePredictor.from_preset(args.preset)
    path = training.save_prediction_grid(
        model, args.out, num_examples=args.num_examples, seed=args.seed
    )
    result = training.evaluate_against_copy_last(model, num_sequences=16, seed=args.seed)
    print(f"wrote {os.path.abspath(path)} (rows: last inputs, ground truth, prediction)")
    print(
        f"MAE on these videos: model {result['model_mae']:.4f}, "
        f"copy-last-frame baseline {result['copy_last_mae']:.4f}"
    )
    return 0
