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
    p.add_argument("--no-overwrite", action="store_true", help="refuse to replace an existing DST")
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
    p.add_argument("--out", default="boxes.png", help="PNG to write (default boxes.png)")
    p.add_argument(
        "--threshold",
        type=float,
        default=DEFAULT_THRESHOLD,
        help=f"keep detections scoring above this (default {DEFAULT_THRESHOLD})",
    )
    p.add_argument("--shortest-edge", type=int, default=800, help="resize: shorter side (800)")
    p.add_argument("--longest-edge", type=int, default=1333, help="resize: longer side cap (1333)")
    p.set_defaults(func=cmd_predict)


def cmd_convert(args):
    from kzoo.models.detr.convert import convert_detr
    from kzoo.presets import preset_io

    dst = convert_detr(
        args.src, args.dst, num_heads=args.num_heads, overwrite=not args.no_overwrite
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


def cmd_predict(args):
    if not 0 <= args.threshold < 1:
        raise ValueError(f"--threshold must be in [0, 1); got {args.threshold}.")
    from kzoo.data import images as images_lib

    # Read the image before loading the model: a wrong path fails fast.
    image = images_lib.load_image(args.image)
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
    """Draw labelled boxes on a copy of the uint8 RGB ``image`` and write it as a PNG."""
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
    with atomic_file(out) as f:
        canvas.save(f, format="PNG")
    return out
