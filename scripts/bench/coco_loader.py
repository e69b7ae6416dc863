"""Benchmark: images per second ``kzoo.data.CocoDetection`` delivers, as ``model.fit`` reads it.

Batches are drawn through keras' own ``PyDataset`` adapter (the one ``fit`` uses), so worker
threads or processes count as they do in training. Each configuration runs one warm-up pass, then
``--repeats`` timed passes over the whole dataset; the median is reported.

Without ``--annotation-file`` the data is kzoo's synthetic shapes set, exported as PNG + COCO JSON
to a temporary directory (tiny by default, so the script runs in seconds). Pipelines:

- ``plain``: decode, batch, normalise, pad (no resizing);
- ``eval``: DETR's evaluation resize (``--size`` shorter side, capped at ``--size * 1333 / 800``);
- ``train``: DETR's training augmentation with its scales multiplied by ``--size / 800``.

Usage: ``python scripts/bench/coco_loader.py [--images 64] [--image-size 96] [--size 128]
[--workers 1,2] [--multiprocessing] [--annotation-file F --image-dir D]``.
"""

import argparse
import json
import os
import statistics
import tempfile
import time


def images_per_second(dataset, repeats=3):
    """Median images/s over ``repeats`` full passes (after one warm-up pass) through keras'
    ``PyDataset`` adapter, with the dataset's own workers."""
    # The adapter fit uses; it is what starts the worker threads or processes.
    from keras.src.trainers.data_adapters.py_dataset_adapter import PyDatasetAdapter

    adapter = PyDatasetAdapter(dataset, shuffle=False)
    rates = []
    for i in range(repeats + 1):
        start = time.perf_counter()
        adapter.on_epoch_begin()
        count = sum(len(batch[0]["images"]) for batch in adapter.get_numpy_iterator())
        adapter.on_epoch_end()
        if i:  # the first pass warms caches and starts nothing twice
            rates.append(count / (time.perf_counter() - start))
    return statistics.median(rates)


def _transforms(name, size):
    from kzoo.data.detr_transforms import DetrEvalTransform, DetrTrainTransform
    from kzoo.models.detr import recipe

    scale = size / recipe.EVAL_SIZE
    max_size = round(recipe.MAX_SIZE * scale)
    if name == "plain":
        return None
    if name == "eval":
        return DetrEvalTransform(size=size, max_size=max_size)
    scales = sorted({max(8, round(s * scale)) for s in recipe.TRAIN_SCALES})
    crop_resize = sorted({max(8, round(s * scale)) for s in recipe.CROP_RESIZE})
    crop = tuple(max(4, round(s * scale)) for s in recipe.CROP_SIZE)
    return DetrTrainTransform(
        scales=scales, max_size=max_size, crop_resize=crop_resize, crop_size=crop
    )


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--annotation-file", default=None, help="a COCO JSON (default: synthetic)")
    p.add_argument("--image-dir", default=None, help="its image folder")
    p.add_argument("--images", type=int, default=64, help="synthetic images (64)")
    p.add_argument("--image-size", type=int, default=96, help="synthetic image side (96)")
    p.add_argument("--size", type=int, default=128, help="DETR's 800 scaled to this (128)")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--workers", default="1,2", help="comma-separated worker counts (1,2)")
    p.add_argument("--multiprocessing", action="store_true", help="workers are processes")
    p.add_argument("--pipelines", default="plain,eval,train")
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args(argv)
    if (args.annotation_file is None) != (args.image_dir is None):
        p.error("give both --annotation-file and --image-dir, or neither")

    from kzoo.data import CocoDetection, SyntheticDetection, export_coco

    with tempfile.TemporaryDirectory() as tmp:
        if args.annotation_file is None:
            synthetic = SyntheticDetection(num_images=args.images, image_size=args.image_size)
            annotation_file, image_dir = export_coco(synthetic, os.path.join(tmp, "d"), verbose=0)
        else:
            annotation_file, image_dir = args.annotation_file, args.image_dir
        results = []
        for pipeline in args.pipelines.split(","):
            for workers in (int(w) for w in args.workers.split(",")):
                ds = CocoDetection(
                    annotation_file,
                    image_dir,
                    batch_size=args.batch_size,
                    transforms=_transforms(pipeline, args.size),
                    workers=workers,
                    use_multiprocessing=args.multiprocessing,
                )
                rate = images_per_second(ds, args.repeats)
                results.append(
                    {
                        "pipeline": pipeline,
                        "workers": workers,
                        "multiprocessing": args.multiprocessing,
                        "images_per_second": round(rate, 1),
                    }
                )
                print(json.dumps(results[-1]), flush=True)
    return results


if __name__ == "__main__":
    main()
