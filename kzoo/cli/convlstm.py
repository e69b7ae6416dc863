"""``kzoo train|predict convlstm-color`` and ``kzoo train|predict convlstm-next``."""

import os
import sys

from kzoo.utils.paths import check_output_file

DEFAULT_PRESET = "convlstm_color_shapes"
OUT_FORMATS = (".png", ".gif", ".mp4")
TARGETS = {
    "convlstm-color": dict(
        kind="color",
        model="ColorFramePredictor",
        what="the next colour frame",
        channels=3,
        preset=DEFAULT_PRESET,
    ),
    "convlstm-next": dict(
        kind="next",
        model="NextFramePredictor",
        what="every next frame",
        channels=1,
        preset=None,
    ),
}


def _add_train_parser(commands, name, spec):
    p = commands["train"].add_parser(
        name,
        help=f"train a {spec['model']} on synthetic moving shapes or a folder of videos",
        description=f"Train a {spec['model']} (ConvLSTM2D stack, predicts {spec['what']}) on "
        "seeded synthetic videos of bouncing shapes, or on a folder of videos (--data); writes "
        "a preset, a loss-curve PNG and the history to --output-dir. An interrupted run "
        "resumes from its last completed epoch when the same command is run again "
        "(--output-dir/backup); --fresh starts over.",
    )
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--output-dir", required=True, help="directory for the preset and the plot")
    p.add_argument(
        "--data",
        default=None,
        help="folder of videos (.npy, .npz, .gif, .mp4, folders of numbered PNG/JPEG frames); "
        "default: synthetic moving shapes",
    )
    p.add_argument("--num-sequences", type=int, default=512, help="synthetic videos per epoch")
    p.add_argument("--val-sequences", type=int, default=64, help="synthetic validation videos")
    p.add_argument(
        "--validation-split",
        type=float,
        default=0.1,
        help="with --data: share of the videos held out for validation (default 0.1)",
    )
    p.add_argument("--input-frames", type=int, default=6, help="frames the model sees")
    p.add_argument(
        "--frame-size",
        type=int,
        default=24,
        help="frame side in pixels (--data frames are resized to it)",
    )
    p.add_argument("--stride", type=int, default=1, help="with --data: frames between windows")
    if spec["kind"] == "next":
        p.add_argument("--channels", type=int, default=1, help="1 (grey) or 3 (RGB)")
    p.add_argument("--filters", default="16,16", help="filters of each ConvLSTM2D layer")
    p.add_argument("--kernel-sizes", default="3,3", help="kernel size of each ConvLSTM2D layer")
    p.add_argument("--learning-rate", type=float, default=2e-3)
    if spec["kind"] == "color":
        p.add_argument(
            "--warmup-epochs",
            type=int,
            default=None,
            help="first epochs trained on binary cross-entropy (default: half of --epochs)",
        )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--fresh",
        action="store_true",
        help="discard the backup of an interrupted run in --output-dir and start over",
    )
    p.set_defaults(func=train, _target=name)


def _add_predict_parser(commands, name, spec):
    default = spec["preset"]
    p = commands["predict"].add_parser(
        name,
        help=f"predict with a {spec['model']}; write a PNG grid or a GIF/MP4 rollout",
        description=f"Run a {spec['model']} on freshly generated videos (or a folder of videos, "
        "--data). A .png --out gets a grid: the last input frames, the true next frame and the "
        "prediction, one row per video. A .gif or .mp4 --out gets an animation of the model's "
        "--steps-frame rollout beside the ground truth. An existing file is never replaced "
        "without --overwrite.",
    )
    if default:
        p.add_argument(
            "--preset",
            default=default,
            help=f"preset name or directory (default: the shipped {default})",
        )
    else:
        p.add_argument("--preset", required=True, help="preset name or directory")
    p.add_argument(
        "--out", default="grid.png", help="file to write: .png (grid), .gif or .mp4 (rollout)"
    )
    p.add_argument("--steps", type=int, default=10, help="rollout steps of a .gif/.mp4")
    p.add_argument("--num-examples", type=int, default=3, help="videos shown (rows)")
    p.add_argument("--seed", type=int, default=10_000, help="seed of the generated videos")
    p.add_argument("--data", default=None, help="folder of videos to predict instead")
    p.add_argument(
        "--input-frames",
        type=int,
        default=None,
        help="context frames (default: what the preset was trained with)",
    )
    p.add_argument("--fps", type=float, default=4.0, help="frames per second of a .gif/.mp4")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    p.set_defaults(func=predict, _target=name)


def register(commands):
    for name, spec in TARGETS.items():
        _add_train_parser(commands, name, spec)
        _add_predict_parser(commands, name, spec)


def _int_list(text, name):
    try:
        values = tuple(int(v) for v in str(text).split(","))
    except ValueError:
        raise ValueError(f"--{name} must be comma-separated integers; got {text!r}.") from None
    if not values or min(values) <= 0:
        raise ValueError(f"--{name} must be positive integers; got {text!r}.")
    return values


def _check_positive(args, *names):
    for name in names:
        value = getattr(args, name)
        if value is not None and value <= 0:
            raise ValueError(f"--{name.replace('_', '-')} must be positive; got {value}.")


def train(args):
    spec = TARGETS[args._target]
    _check_positive(
        args,
        "epochs",
        "batch_size",
        "num_sequences",
        "val_sequences",
        "input_frames",
        "frame_size",
        "stride",
    )
    from kzoo.models.conv_lstm.training import check_learning_rate

    check_learning_rate(args.learning_rate, "--learning-rate")
    filters = _int_list(args.filters, "filters")
    kernel_sizes = _int_list(args.kernel_sizes, "kernel-sizes")
    if len(filters) != len(kernel_sizes):
        raise ValueError("--filters and --kernel-sizes must have the same number of entries.")
    warmup = 0
    if spec["kind"] == "color":
        warmup = args.epochs // 2 if args.warmup_epochs is None else args.warmup_epochs
        if not 0 <= warmup <= args.epochs:
            raise ValueError(f"--warmup-epochs must be between 0 and --epochs; got {warmup}.")
    channels = getattr(args, "channels", spec["channels"])
    if channels not in (1, 3):
        raise ValueError(f"--channels must be 1 or 3; got {channels}.")
    if not 0 <= args.validation_split < 1:
        raise ValueError(f"--validation-split must be in [0, 1); got {args.validation_split}.")
    if args.data is not None and not os.path.isdir(args.data):
        raise ValueError(f"--data must be a folder of videos; {args.data!r} is not a directory.")

    from kzoo.models.conv_lstm import training

    out = os.path.abspath(args.output_dir)
    try:
        model, history, seconds = training.train_frame_predictor(
            args.output_dir,
            kind=spec["kind"],
            epochs=args.epochs,
            batch_size=args.batch_size,
            num_sequences=args.num_sequences,
            val_sequences=args.val_sequences,
            filters=filters,
            kernel_sizes=kernel_sizes,
            learning_rate=args.learning_rate,
            seed=args.seed,
            warmup_epochs=warmup,
            data=args.data,
            input_frames=args.input_frames,
            frame_size=args.frame_size,
            channels=channels,
            validation_split=args.validation_split if args.data else 0.0,
            stride=args.stride,
            fresh=args.fresh,
            verbose=1,
        )
    except training.TrainingDiverged as e:
        preset = os.path.join(out, "preset")
        kept = f"{preset} was not changed" if os.path.isdir(preset) else "no preset was written"
        print(flush=True)  # end the progress bar's line
        print(f"kzoo: error: {e}; {kept}", file=sys.stderr)
        return 1
    print(f"trained {args.epochs} epochs in {seconds:.0f} s")
    print(f"preset      {os.path.join(out, 'preset')}")
    print(f"loss curve  {os.path.join(out, 'loss_curve.png')}")
    if args.data is None:
        result = training.evaluate_against_copy_last(
            model, num_sequences=32, input_frames=args.input_frames
        )
        where = "fresh videos"
    else:
        from kzoo.data.video_folder import VideoFolder

        held_out = args.validation_split > 0
        dataset = VideoFolder(
            args.data,
            input_frames=args.input_frames,
            target="future",
            frame_size=args.frame_size,
            channels=channels,
            validation_split=args.validation_split if held_out else 0.0,
            subset="validation" if held_out else None,
            seed=args.seed,
        )
        result = training.evaluate_dataset_against_copy_last(model, dataset)
        where = "the validation videos" if held_out else "the training videos"
    print(
        f"MAE on {where}: model {result['model_mae']:.4f}, "
        f"copy-last-frame baseline {result['copy_last_mae']:.4f}"
    )
    return 0


class _Stages:
    """A progress bar over the stages of ``predict`` (the demo shows one), or nothing."""

    def __init__(self, total, show):
        import keras

        self.bar = keras.utils.Progbar(total, unit_name="step") if show else None
        self.done = 0

    def next(self):
        if self.bar is not None:
            self.done += 1
            self.bar.update(self.done)


def predict(args):
    spec = TARGETS[args._target]
    _check_positive(args, "num_examples", "steps", "input_frames", "fps")
    if args.data is not None and not os.path.isdir(args.data):
        raise ValueError(f"--data must be a folder of videos; {args.data!r} is not a directory.")

    from kzoo.models.conv_lstm import training
    from kzoo.presets import preset_io

    preset_dir = preset_io.resolve_preset(args.preset)
    check_output_file(
        args.out,
        "--out",
        extensions=OUT_FORMATS,
        not_inside=[("--preset", preset_dir), ("--data", args.data)],
        overwrite=args.overwrite,
    )
    ext = os.path.splitext(args.out)[1].lower()
    from kzoo.models.conv_lstm.frame_predictors import ColorFramePredictor, NextFramePredictor

    # Load the preset, make the videos, predict (and write), compare with the baseline.
    stages = _Stages(4, show=getattr(args, "_progress", False))
    cls = ColorFramePredictor if spec["kind"] == "color" else NextFramePredictor
    model = cls.from_preset(preset_dir)
    stages.next()
    has_meta = os.path.isfile(os.path.join(preset_dir, preset_io.METADATA_FILE))
    meta = preset_io.read_metadata(preset_dir) if has_meta else {}
    input_frames = args.input_frames or int(meta.get("input_frames", training.INPUT_FRAMES))
    frame_size = meta.get("frame_size", [training.DATA_OPTIONS["image_size"]] * 2)
    steps = 1 if ext == ".png" else args.steps
    if args.data is None:
        x, future = training.synthetic_rollout_data(
            model, args.num_examples, steps, seed=args.seed, input_frames=input_frames
        )
        source = "generated videos"
    else:
        from kzoo.data.video_folder import VideoFolder

        folder = VideoFolder(
            args.data,
            input_frames=input_frames,
            target_frames=steps,
            target="future",
            frame_size=tuple(frame_size),
            channels=model.channels,
            batch_size=args.num_examples,
        )
        x, future = folder[0]
        source = f"windows of {args.data}"
    stages.next()
    if ext == ".png":
        path = training.save_prediction_grid(
            model, args.out, num_examples=len(x), windows=(x, future[:, 0])
        )
        stages.next()
        if args.data is None:
            # More videos of the same seed than the grid shows: a steadier comparison.
            result = training.evaluate_against_copy_last(
                model, num_sequences=max(16, len(x)), seed=args.seed, input_frames=input_frames
            )
            count = result["num_sequences"]
        else:
            result = training.evaluate_dataset_against_copy_last(model, folder, max_batches=1)
            count = result["windows"]
        stages.next()
        print(f"wrote {os.path.abspath(path)} (rows: last inputs, ground truth, prediction)")
        print(
            f"MAE of the next frame on {count} {source}: model {result['model_mae']:.4f}, "
            f"copy-last-frame baseline {result['copy_last_mae']:.4f}"
        )
        return 0

    from kzoo.models.conv_lstm.animation import write_rollout_animation

    pred = model.rollout(x, steps=steps)
    stages.next()
    path = write_rollout_animation(
        args.out, future, pred, context=x, fps=args.fps, overwrite=args.overwrite
    )
    stages.next()
    print(
        f"wrote {path}: {input_frames} input frames, then {steps} predicted "
        "(left: ground truth, right: prediction)"
    )
    mse = float(((pred - future) ** 2).mean())
    copy_mse = float(((x[:, -1:] - future) ** 2).mean())
    print(
        f"MSE of the {steps}-step rollout on these {len(x)} {source}: model {mse:.4f}, "
        f"copy-last-frame baseline {copy_mse:.4f}"
    )
    return 0
