"""``kzoo convert detr SRC DST`` and ``kzoo predict detr --preset P --image IMG --out boxes.png``."""

import os

DEFAULT_THRESHOLD = 0.7


def register(commands):
    p = commands["convert"].add_parser(
        "detr",
        help="convert a facebookresearch or HuggingFace DETR checkpoint into a kzoo preset",
        description=(
            "Convert a DETR checkpoint (the original {'model': state_dict} .pth, or a "
            "HuggingFace DetrForObjectDetection .pth/.bin/.safetensors) into a kzoo preset "
            "directory. Needs torch for .pth/.bin files, whatever the keras backend."
        ),
    )
    p.add_argument("src", help="checkpoint file (or a directory holding model.safetensors)")
    p.add_argument("dst", help="preset directory to write")
    p.add_argument("--num-heads", type=int, default=None, help="attention heads (default 8)")
    p.add_argument(
        "--no-overwrite", action="store_true", help="refuse to replace a preset already at DST"
    )
    p.add_argument(
        "--force",
        action="store_true",
        help="replace DST even if it holds files that are not a kzoo preset (they are deleted); "
        "without it such a DST is refused",
    )
    p.set_defaults(func=cmd_convert)

    p = commands["predict"].add_parser(
        "detr",
        help="detect objects in an image with a DETR preset and draw the boxes",
        description=(
            "Run a DETR preset (a converted checkpoint, a registered name such as "
            "detr_resnet50_coco, or a preset saved by `kzoo train detr`) on one image, print "
            "the detections and write the image with labelled boxes."
        ),
    )
    p.add_argument("--preset", required=True, help="preset name or directory")
    p.add_argument("--image", required=True, help="image file (any format PIL reads)")
    p.add_argument(
        "--out",
        default="boxes.png",
        help="picture to write (default boxes.png); its extension chooses the format "
        "(.png, .jpg, .webp, ...). The input image is never overwritten.",
    )
    p.add_argument(
        "--threshold",
        type=float,
        default=DEFAULT_THRESHOLD,
        help=f"keep detections scoring above this (default {DEFAULT_THRESHOLD})",
    )
    p.add_argument("--shortest-edge", type=int, default=800, help="resize: shorter side (800)")
    p.add_argument("--longest-edge", type=int, default=1333, help="resize: longer side cap (1333)")
    p.set_defaults(func=cmd_predict)


CLI_OPTIONS = {"overwrite": "drop --no-overwrite", "force": "pass --force"}


def cmd_convert(args):
    from kzoo.cli.paths import check_input_file
    from kzoo.models.detr.convert import convert_detr
    from kzoo.presets import preset_io

    if args.num_heads is not None and args.num_heads < 1:
        raise ValueError(f"--num-heads must be >= 1; got {args.num_heads}.")
    if args.force and args.no_overwrite:
        raise ValueError("--force and --no-overwrite contradict each other; pass one of them.")
    check_input_file(args.src, "SRC", allow_directory=True)
    # With the CLI's flags in the message, and before the conversion's work.
    preset_io.check_destination(
        args.dst, overwrite=not args.no_overwrite, force=args.force, options=CLI_OPTIONS
    )
    dst = convert_detr(
        args.src,
        args.dst,
        num_heads=args.num_heads,
        overwrite=not args.no_overwrite,
        force=args.force,
    )
    meta = preset_io.read_metadata(dst)
    config = preset_io._read_config(dst)["config"]
    print(
        f"converted {args.src} ({meta.get('source_format')} format) -> {dst}\n"
        f"  backbone {config['backbone']}, {config['num_classes']} classes, "
        f"{config['num_queries']} queries, d_model {config['d_model']}, "
        f"{config['num_encoder_layers']}+{config['num_decoder_layers']} layers"
    )
    return 0


def class_names_for(preset_dir, num_classes):
    """Names for a preset's labels: its metadata's ``class_names``, COCO's, or ``class N``."""
    from kzoo.models.detr import coco_names
    from kzoo.presets import preset_io

    meta = {}
    if os.path.isfile(os.path.join(preset_dir, preset_io.METADATA_FILE)):
        meta = preset_io.read_metadata(preset_dir)
    names = meta.get("class_names")
    if isinstance(names, list) and len(names) == num_classes:
        return [str(n) for n in names]
    if num_classes == coco_names.NUM_CLASSES:
        return list(coco_names.COCO91_NAMES)
    return [f"class {i}" for i in range(num_classes)]


def output_formats():
    """``{extension: PIL format}`` for every format PIL can write."""
    from PIL import Image

    Image.init()
    return {ext: fmt for ext, fmt in Image.registered_extensions().items() if fmt in Image.SAVE}


def cmd_predict(args):
    if not 0 <= args.threshold < 1:
        raise ValueError(f"--threshold must be in [0, 1); got {args.threshold}.")
    for option, value in (
        ("--shortest-edge", args.shortest_edge),
        ("--longest-edge", args.longest_edge),
    ):
        if value < 1:
            raise ValueError(f"{option} must be >= 1; got {value}.")
    if args.longest_edge < args.shortest_edge:
        raise ValueError(
            f"--longest-edge ({args.longest_edge}) must be >= --shortest-edge "
            f"({args.shortest_edge})."
        )
    from kzoo.cli.paths import check_input_file, check_output_file
    from kzoo.data import images as images_lib

    # Every path is checked before the model loads and runs: a mistake costs no inference.
    check_input_file(args.image, "--image")
    check_output_file(
        args.out, "--out", extensions=output_formats(), not_same_as=[("--image", args.image)]
    )
    try:
        image = images_lib.load_image(args.image)
    except ValueError as e:
        raise ValueError(f"--image: {e}") from None
    from kzoo.models.detr import DETR
    from kzoo.presets import preset_io

    preset_dir = preset_io.resolve_preset(args.preset)
    model = DETR.from_preset(preset_dir)
    names = class_names_for(preset_dir, model.num_classes)
    batch = images_lib.preprocess_images(
        [image], shortest_edge=args.shortest_edge, longest_edge=args.longest_edge
    )
    detections = model.predict_detections(
        batch.model_inputs(), threshold=args.threshold, target_sizes=batch.original_sizes
    )[0]
    print_table(detections, names, args.threshold)
    draw_detections(image, detections, names, args.out)
    print(f"wrote {args.out}")
    return 0


def print_table(detections, names, threshold):
    count = len(detections["scores"])
    print(f"{count} detection{'s' if count != 1 else ''} scoring above {threshold:g}")
    if not count:
        return
    print(
        f"{'#':>3}  {'label':>5}  {'name':<16} {'score':>6}  {'x0':>7} {'y0':>7} {'x1':>7} {'y1':>7}"
    )
    for i, (box, score, label) in enumerate(
        zip(detections["boxes"], detections["scores"], detections["labels"])
    ):
        x0, y0, x1, y1 = (float(v) for v in box)
        name = names[int(label)] if 0 <= int(label) < len(names) else f"class {int(label)}"
        print(
            f"{i:>3}  {int(label):>5}  {name:<16} {float(score):>6.3f}  "
            f"{x0:>7.1f} {y0:>7.1f} {x1:>7.1f} {y1:>7.1f}"
        )


# A fixed palette (Tableau 10) so a class keeps its colour from run to run.
PALETTE = [
    (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
    (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207),
]  # fmt: skip


def draw_detections(image, detections, names, out):
    """Draw labelled boxes on a copy of the uint8 RGB ``image`` and write it to ``out``.

    The format follows ``out``'s extension (PNG for ``.png``, JPEG for ``.jpg``...), so the
    bytes written are what the name says.
    """
    from PIL import Image, ImageDraw

    from kzoo.utils.files import atomic_file

    canvas = Image.fromarray(image).convert("RGB")
    draw = ImageDraw.Draw(canvas)
    width = max(2, round(min(canvas.size) / 300))
    for box, score, label in zip(detections["boxes"], detections["scores"], detections["labels"]):
        color = PALETTE[int(label) % len(PALETTE)]
        x0, y0, x1, y1 = (float(v) for v in box)
        draw.rectangle([x0, y0, x1, y1], outline=color, width=width)
        name = names[int(label)] if 0 <= int(label) < len(names) else f"class {int(label)}"
        text = f"{name} {float(score):.2f}"
        left, top, right, bottom = draw.textbbox((x0, y0), text)
        ty = y0 - (bottom - top) - 2 if y0 - (bottom - top) - 2 >= 0 else y0
        draw.rectangle([x0, ty, x0 + (right - left) + 4, ty + (bottom - top) + 2], fill=color)
        draw.text((x0 + 2, ty), text, fill=(255, 255, 255))
    out = os.fspath(out)
    formats = output_formats()
    ext = os.path.splitext(out)[1].lower()
    if ext not in formats:
        raise ValueError(
            f"{out!r} must end in an image extension PIL can write ({', '.join(sorted(formats))})."
        )
    with atomic_file(out) as f:
        canvas.save(f, format=formats[ext])
    return out
