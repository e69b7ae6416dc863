"""``kzoo eval detr --preset P --annotations A --images DIR``: the twelve COCO box metrics.

The preset's labels are mapped to the annotation file's category ids through the
``category_ids`` of its ``metadata.json`` (written by ``kzoo train detr``); a 91-class preset
without them is taken as a COCO checkpoint (label = COCO category id); another preset with as
many classes as the file has categories is taken to use the file's categories in ascending id
order. Images are resized as the preset was trained (its ``image_size`` / ``max_size``, else
DETR's evaluation sizes, ``kzoo.models.detr.recipe``) unless ``--shortest-edge`` /
``--longest-edge`` say otherwise.
"""

import json
import os


def register(commands):
    p = commands["eval"].add_parser(
        "detr",
        help="COCO box AP/AR of a DETR preset on a COCO-format dataset",
        description=__doc__.split("\n\n")[0],
    )
    p.add_argument(
        "--preset", required=True, help="preset name, directory or hf://owner/repo[@revision]"
    )
    p.add_argument("--annotations", required=True, help="COCO JSON of the images to evaluate on")
    p.add_argument("--images", required=True, help="folder of those images")
    add_size_arguments(p)
    p.add_argument("--batch-size", type=int, default=8, help="images per batch (8)")
    p.add_argument(
        "--results",
        default=None,
        help="also write the detections as a COCO results JSON (image_id, category_id, bbox, "
        "score) to this file",
    )
    p.add_argument(
        "--metrics-json", default=None, help="also write the twelve metrics to this JSON file"
    )
    p.add_argument(
        "--overwrite", action="store_true", help="replace --results/--metrics-json files"
    )
    p.set_defaults(func=cmd_eval)


def add_size_arguments(parser):
    """``--shortest-edge`` and ``--longest-edge``, read by :func:`resolve_sizes`."""
    from kzoo.models.detr import recipe

    parser.add_argument(
        "--shortest-edge",
        type=int,
        default=None,
        help=f"resize: shorter side (the preset's training size, else {recipe.EVAL_SIZE})",
    )
    parser.add_argument(
        "--longest-edge",
        type=int,
        default=None,
        help=f"resize: longer side cap (the preset's, else {recipe.MAX_SIZE})",
    )


def resolve_sizes(preset_dir, shortest_edge, longest_edge):
    """``(shortest, longest)``: the options, else the preset's training sizes, else DETR's."""
    from kzoo.models.detr import recipe
    from kzoo.models.detr.training.finetune import preset_image_size

    size, max_size = preset_image_size(preset_dir)
    shortest = shortest_edge if shortest_edge is not None else (size or recipe.EVAL_SIZE)
    longest = longest_edge
    if longest is None:
        longest = max_size if (max_size and shortest == size) else recipe.default_max_size(shortest)
    for option, value in (("--shortest-edge", shortest), ("--longest-edge", longest)):
        if value < 1:
            raise ValueError(f"{option} must be >= 1; got {value}.")
    if longest < shortest:
        raise ValueError(f"--longest-edge ({longest}) must be >= --shortest-edge ({shortest}).")
    return shortest, longest


def model_category_ids(preset_dir, model, dataset, source):
    """The dataset category id of each of the model's labels (see the module docstring)."""
    from kzoo.models.detr.training.finetune import label_metadata

    _, ids = label_metadata(preset_dir, model.num_classes)
    if ids is None:
        if model.num_classes != dataset.num_classes:
            raise ValueError(
                f"The preset {source} records no category_ids in its metadata.json and has "
                f"{model.num_classes} classes, while {dataset.annotation_file} has "
                f"{dataset.num_classes} categories, so its labels cannot be matched to them."
            )
        ids = list(dataset.category_ids)
    if not set(ids) & set(dataset.category_ids):
        raise ValueError(
            f"None of the preset's category ids ({', '.join(map(str, ids[:10]))}"
            f"{', ...' if len(ids) > 10 else ''}) is a category of {dataset.annotation_file} "
            f"({', '.join(map(str, dataset.category_ids[:10]))}"
            f"{', ...' if dataset.num_classes > 10 else ''})."
        )
    return ids


def cmd_eval(args):
    from kzoo.utils.paths import check_input_file, check_output_file

    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1; got {args.batch_size}.")
    check_input_file(args.annotations, "--annotations")
    if not os.path.isdir(args.images):
        raise ValueError(f"--images {args.images!r} is not a directory (the images' folder).")
    for option, path in (("--results", args.results), ("--metrics-json", args.metrics_json)):
        if path is not None:
            check_output_file(
                path,
                option,
                not_same_as=[("--annotations", args.annotations)],
                overwrite=args.overwrite,
            )
    from kzoo.presets import preset_io

    preset_dir = preset_io.resolve_preset(args.preset)
    shortest, longest = resolve_sizes(preset_dir, args.shortest_edge, args.longest_edge)
    from kzoo.data.coco import CocoDetection
    from kzoo.data.detr_transforms import DetrEvalTransform

    # The annotation file is checked (and named in any error) before the model loads.
    dataset = CocoDetection(
        args.annotations,
        args.images,
        batch_size=args.batch_size,
        transforms=DetrEvalTransform(shortest, longest),
        pad_to_multiple=32,
    )
    from kzoo.data.coco_eval import (
        COCO_METRIC_DESCRIPTIONS,
        detections_to_coco_results,
        evaluate_detections,
    )
    from kzoo.models.detr import DETR
    from kzoo.models.detr.training.evaluation import predict_coco

    model = DETR.from_preset(preset_dir)
    category_ids = model_category_ids(preset_dir, model, dataset, args.preset)
    print(
        f"evaluating {args.preset} on {dataset.num_images} images of {args.annotations} "
        f"(resized to {shortest}, max {longest})",
        flush=True,
    )
    detections, image_ids = predict_coco(model, dataset, threshold=0.0, verbose=1)
    results = detections_to_coco_results(detections, image_ids, category_ids)
    metrics = evaluate_detections(results, dataset.ground_truth, all_metrics=True)
    for name, value in metrics.items():
        print(f" {COCO_METRIC_DESCRIPTIONS[name]} = {value:.3f}")
    from kzoo.utils.files import atomic_file

    if args.results is not None:
        with atomic_file(args.results, "w") as f:
            json.dump(results, f)
        print(f"wrote {len(results)} detections to {args.results}")
    if args.metrics_json is not None:
        with atomic_file(args.metrics_json, "w") as f:
            json.dump(metrics, f, indent=2)
        print(f"wrote {args.metrics_json}")
    return 0
