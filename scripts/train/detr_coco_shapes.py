"""The synthetic shapes set written as COCO files, trained through ``kzoo train detr``'s COCO path.

Exports ``SyntheticDetection`` splits with ``kzoo.data.export_coco`` (the same images as the
in-memory run: training seed 0, held-out seed 1,000,000) unless they are already in ``--data``,
then runs ``python -m kzoo train detr --train-annotations ... --val-annotations ...`` (which is
``kzoo.models.detr.train(config)``) with the remaining arguments in a subprocess and reports the
held-out AP50 with the CPU time the training process used (user + system, all its threads, from
``resource.getrusage(RUSAGE_CHILDREN)``; a process of its own, so that the figure is the
training's and comparable with the published ones): on a shared machine wall time says more
about the other jobs than about kzoo.

Example (the figures in docs/benchmarks.md):

    KERAS_BACKEND=jax python scripts/train/detr_coco_shapes.py --data /tmp/shapes_coco \\
        --out /tmp/detr_runs/coco96 -- --epochs 8 --augment flip --cpu-time-limit 27
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import time


def export_splits(data, image_size, train_images, eval_images, num_classes, max_objects):
    """Write ``data/train`` and ``data/val`` once; returns their (annotations, images) pairs."""
    from kzoo.data import SyntheticDetection, export_coco

    splits = {}
    for name, count, seed in (
        ("train", train_images, 0),
        ("val", eval_images, 1_000_000),
    ):
        folder = os.path.join(data, name)
        annotations = os.path.join(folder, "annotations.json")
        if not os.path.isfile(annotations):
            shapes = SyntheticDetection(
                num_images=count,
                image_size=image_size,
                num_classes=num_classes,
                max_objects=max_objects,
                seed=seed,
            )
            export_coco(shapes, folder, verbose=1)
        splits[name] = (annotations, os.path.join(folder, "images"))
    return splits


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="folder of the exported COCO splits")
    parser.add_argument("--out", required=True, help="run directory of kzoo train detr")
    parser.add_argument("--image-size", type=int, default=96)
    parser.add_argument("--train-images", type=int, default=4096)
    parser.add_argument("--eval-images", type=int, default=256)
    parser.add_argument("--num-classes", type=int, default=3)
    parser.add_argument("--max-objects", type=int, default=4)
    parser.add_argument("train_args", nargs="*", help="after --: arguments of kzoo train detr")
    args = parser.parse_args(argv)
    splits = export_splits(
        args.data,
        args.image_size,
        args.train_images,
        args.eval_images,
        args.num_classes,
        args.max_objects,
    )
    cmd = [sys.executable, "-m", "kzoo", "train", "detr", "--out", args.out]
    cmd += ["--train-annotations", splits["train"][0], "--train-images", splits["train"][1]]
    cmd += ["--val-annotations", splits["val"][0], "--val-images", splits["val"][1]]
    cmd += ["--image-size", str(args.image_size), *args.train_args]
    print("$", " ".join(cmd), flush=True)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.time()
    code = subprocess.call(cmd)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if code != 0:
        return code
    with open(os.path.join(args.out, "eval.json")) as f:
        result = json.load(f)
    report = {
        "AP": result["AP"],
        "AP50": result["AP50"],
        "AP75": result["AP75"],
        "steps": result["steps"],
        "cpu_minutes": round(cpu / 60, 2),
        "wall_minutes": round((time.time() - start) / 60, 2),
        "backend": result["backend"],
        "command": " ".join(cmd),
    }
    from kzoo.utils.files import atomic_file

    with atomic_file(os.path.join(args.out, "cpu_time.json"), "w") as f:
        json.dump(report, f, indent=2)
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
