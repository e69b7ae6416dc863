"""``kzoo predict detr --preset P --image IMG|DIR ...``: detections of a DETR preset, drawn."""

import json
import os

from kzoo.cli.detr.evaluate import add_size_arguments

DEFAULT_THRESHOLD = 0.7


def register(commands):
    p = commands["predict"].add_parser(
        "detr",
        help="detect objects in an image (or a folder of images) with a DETR preset",
        description=(
            "Run a DETR preset (a converted checkpoint, a registered name such as "
            "detr_resnet50_coco, or a preset saved by `kzoo train detr`) on one image or on "
            "every image of a folder, print the detections, draw the labelled boxes and "
            "optionally write them as a COCO results JSON."
        ),
    )
    p.add_argument(
        "--preset", required=True, help="preset name, directory or hf://owner/repo[@revision]"
    )
    p.add_argument(
        "--image", required=True, help="image file (any format PIL reads), or a folder of them"
    )
    p.add_argument(
        "--out",
        default=None,
        help="for one image: the picture to write (default boxes.png); its extension chooses "
        "the format (.png, .jpg, .webp, ...). For a folder: a directory to draw every image "
        "into (default: none drawn). Inputs are never overwritten.",
    )
    p.add_argument(
        "--results",
        default=None,
        help="write every detection above --threshold as a COCO results JSON (image_id, "
        "category_id, bbox [x, y, w, h], score) to this file",
    )
    p.add_argument(
        "--annotations",
        default=None,
        help="COCO JSON whose image ids (matched by file_name) the results use; without it "
        "images are numbered 1, 2, ... in file-name order and each result names its file",
    )
    p.add_argument(
        "--threshold",
        type=float,
        default=DEFAULT_THRESHOLD,
        help=f"keep detections scoring above this (default {DEFAULT_THRESHOLD})",
    )
    add_size_arguments(p)
    p.add_argument("--batch-size", type=int, default=8, help="images per batch for a folder (8)")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace output files (pictures, --results) that already exist",
    )
    p.set_defaults(func=cmd_predict)


def class_names_for(preset_dir, num_classes):
    """Names for a preset's labels: its metadata's ``class_names``, COCO's, or ``class N``."""
    from kzoo.models.detr.training.finetune import label_metadata

    return label_metadata(preset_dir, num_classes)[0]


def output_formats():
    """``{extension: PIL format}`` for every format PIL can write."""
    from PIL import Image

    Image.init()
    return {ext: fmt for ext, fmt in Image.registered_extensions().items() if fmt in Image.SAVE}


def image_files(folder):
    """The image files of ``folder`` (by extension PIL reads), sorted by name."""
    from PIL import Image

    Image.init()
    readable = {ext for ext, fmt in Image.registered_extensions().items() if fmt in Image.OPEN}
    names = sorted(
        name
        for name in os.listdir(folder)
        if os.path.splitext(name)[1].lower() in readable
        and os.path.isfile(os.path.join(folder, name))
    )
    if not names:
        raise ValueError(f"--image {folder!r} is a folder without image files.")
    return [os.path.join(folder, name) for name in names]


def annotation_image_ids(annotation_file, paths, folder):
    """The COCO image id of each path, matched by ``file_name`` relative to ``folder``."""
    from kzoo.utils.paths import check_input_file

    check_input_file(annotation_file, "--annotations")
    try:
        with open(annotation_file, "rb") as f:
            data = json.load(f)
        by_name = {im["file_name"]: im["id"] for im in data["images"]}
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(
            f"--annotations {annotation_file!r} is not a COCO file with 'images' holding "
            f"'id' and 'file_name': {e}"
        ) from None
    ids = []
    for path in paths:
        rel = os.path.relpath(path, folder).replace(os.sep, "/")
        if rel not in by_name and os.path.basename(path) not in by_name:
            raise ValueError(
                f"--annotations {annotation_file!r} has no image with file_name {rel!r}."
            )
        ids.append(by_name.get(rel, by_name.get(os.path.basename(path))))
    return ids


def cmd_predict(args):
    if not 0 <= args.threshold < 1:
        raise ValueError(f"--threshold must be in [0, 1); got {args.threshold}.")
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1; got {args.batch_size}.")
    from kzoo.data import images as images_lib
    from kzoo.utils.paths import check_input_file, check_output_file, check_output_location

    # Every path is checked before the model loads and runs: a mistake costs no inference.
    check_input_file(args.image, "--image", allow_directory=True)
    folder = os.path.isdir(args.image)
    if folder:
        paths = image_files(args.image)
        if args.out is not None:
            check_output_location(args.out, "--out")
            if os.path.exists(args.out) and not os.path.isdir(args.out):
                raise ValueError(
                    f"--out {args.out!r} is a file; with a folder of images --out is the "
                    "directory to draw them into."
                )
            if os.path.isdir(args.out) and os.path.samefile(args.out, args.image):
                raise ValueError(
                    f"--out {args.out!r} is the --image folder; kzoo will not overwrite its "
                    "input images. Choose another --out."
                )
            for path in paths:
                name = picture_name(path)
                if os.path.lexists(os.path.join(args.out, name)) and not args.overwrite:
                    raise ValueError(
                        f"--out {args.out!r} already holds {name!r}; pass "
                        "--overwrite to replace the pictures there, or choose another --out."
                    )
    else:
        paths = [args.image]
        if args.out is None:
            args.out = "boxes.png"
        check_output_file(
            args.out,
            "--out",
            extensions=output_formats(),
            not_same_as=[("--image", args.image)],
            overwrite=args.overwrite,
        )
    if args.results is not None:
        check_output_file(
            args.results,
            "--results",
            not_same_as=[("--annotations", args.annotations)],
            overwrite=args.overwrite,
        )
        if os.path.splitext(args.results)[1].lower() != ".json":
            raise ValueError(f"--results {args.results!r} must end in .json.")
    image_ids = None
    if args.annotations is not None:
        base = args.image if folder else os.path.dirname(os.path.abspath(args.image))
        image_ids = annotation_image_ids(args.annotations, paths, base)
    if not folder:
        try:
            images_lib.load_image(args.image)
        except ValueError as e:
            raise ValueError(f"--image: {e}") from None
    from kzoo.cli.detr.evaluate import resolve_sizes
    from kzoo.models.detr import DETR
    from kzoo.models.detr.training.finetune import label_metadata
    from kzoo.presets import preset_io

    preset_dir = preset_io.resolve_preset(args.preset)
    shortest, longest = resolve_sizes(preset_dir, args.shortest_edge, args.longest_edge)
    model = DETR.from_preset(preset_dir)
    names, category_ids = label_metadata(preset_dir, model.num_classes)
    results = []
    for start in range(0, len(paths), args.batch_size):
        chunk = paths[start : start + args.batch_size]
        loaded = []
        for path in chunk:
            try:
                loaded.append(images_lib.load_image(path))
            except ValueError as e:
                raise ValueError(f"--image: {e}") from None
        batch = images_lib.preprocess_images(loaded, shortest_edge=shortest, longest_edge=longest)
        detections = model.predict_detections(
            batch.model_inputs(), threshold=args.threshold, target_sizes=batch.original_sizes
        )
        for k, (path, image, det) in enumerate(zip(chunk, loaded, detections)):
            if folder:
                print(f"\n{os.path.basename(path)}:")
            print_table(det, names, args.threshold, category_ids)
            if args.out is not None:
                target = args.out
                if folder:
                    target = os.path.join(args.out, picture_name(path))
                    os.makedirs(args.out, exist_ok=True)
                draw_detections(image, det, names, target)
                if not folder:
                    print(f"wrote {target}")
            index = start + k
            image_id = image_ids[index] if image_ids is not None else index + 1
            results += coco_results(det, image_id, category_ids, None if image_ids else path)
    if folder and args.out is not None:
        print(f"\nwrote {len(paths)} pictures to {args.out}")
    if args.results is not None:
        from kzoo.utils.files import atomic_file

        with atomic_file(args.results, "w") as f:
            json.dump(results, f)
        print(f"wrote {len(results)} detections to {args.results}")
    return 0


def picture_name(path):
    """The name a drawn copy of ``path`` gets: the same, as PNG when PIL cannot write its type."""
    stem, ext = os.path.splitext(os.path.basename(path))
    return stem + (ext if ext.lower() in output_formats() else ".png")


def coco_results(detections, image_id, category_ids, file_name=None):
    """One image's detections as COCO result dicts (labels as category ids when known)."""
    out = []
    for box, score, label in zip(detections["boxes"], detections["scores"], detections["labels"]):
        x0, y0, x1, y1 = (float(v) for v in box)
        label = int(label)
        entry = {
            "image_id": int(image_id),
            "category_id": int(category_ids[label]) if category_ids is not None else label,
            "bbox": [x0, y0, x1 - x0, y1 - y0],
            "score": float(score),
        }
        if file_name is not None:
            entry["file_name"] = os.path.basename(file_name)
        out.append(entry)
    return out


def print_table(detections, names, threshold, category_ids=None):
    count = len(detections["scores"])
    print(f"{count} detection{'s' if count != 1 else ''} scoring above {threshold:g}")
    if not count:
        return
    print(
        f"{'#':>3}  {'label':>5}  {'id':>5}  {'name':<16} {'score':>6}  "
        f"{'x0':>7} {'y0':>7} {'x1':>7} {'y1':>7}"
    )
    for i, (box, score, label) in enumerate(
        zip(detections["boxes"], detections["scores"], detections["labels"])
    ):
        x0, y0, x1, y1 = (float(v) for v in box)
        label = int(label)
        name = names[label] if 0 <= label < len(names) else f"class {label}"
        known = category_ids is not None and 0 <= label < len(category_ids)
        category = str(category_ids[label]) if known else "-"
        print(
            f"{i:>3}  {label:>5}  {category:>5}  {name:<16} {float(score):>6.3f}  "
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
