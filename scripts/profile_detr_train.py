"""Where a DETR-R50 training step spends its time on torch: kzoo's step against transformers'.

Builds the two steps of ``scripts/bench_detr_train.py`` (same images, targets, dropout and
optimizer recipe), warms both up, then profiles two steps of each with ``torch.profiler`` and
prints the top ops by self CPU time; ``--python`` prints instead ``cProfile``'s top functions of
kzoo's step by cumulative time (where keras's eager Python costs show). Usage:
``python scripts/profile_detr_train.py [--rows 25] [--python]``.
"""

import argparse
import cProfile
import os
import pstats
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=25, help="rows of each table")
    parser.add_argument("--python", action="store_true", help="cProfile kzoo's step instead")
    args = parser.parse_args(argv)
    os.environ["KERAS_BACKEND"] = "torch"
    sys.path[:0] = [ROOT, os.path.join(ROOT, "scripts")]
    # transformers before keras (see bench_detr_train.py).
    from transformers import DetrConfig, DetrForObjectDetection  # noqa: I001

    import numpy as np
    import torch

    import bench_detr_train
    from kzoo.models import DETR

    rng = np.random.default_rng(0)
    images = rng.normal(size=(2, 512, 640, 3)).astype("float32")
    config = DetrConfig(
        use_timm_backbone=False,
        use_pretrained_backbone=False,
        auxiliary_loss=True,
        attention_dropout=0.1,
        activation_dropout=0.1,
    )
    hf = DetrForObjectDetection(config).train()
    boxes, labels = bench_detr_train._targets(rng, 2, (3, 5), config.num_labels)
    backbone, other = [], []
    for name, p in hf.named_parameters():
        if ".backbone." in name:
            trainable = any(f"stages.{s}." in name for s in (1, 2, 3))
            p.requires_grad_(trainable)
            if trainable:
                backbone.append(p)
        else:
            other.append(p)
    optimizer = torch.optim.AdamW(
        [{"params": other}, {"params": backbone, "lr": 1e-5}], lr=1e-4, weight_decay=1e-4
    )
    pixels = torch.tensor(images).permute(0, 3, 1, 2).contiguous()
    hf_labels = [
        {"class_labels": torch.tensor(lab, dtype=torch.long), "boxes": torch.tensor(b)}
        for b, lab in zip(boxes, labels)
    ]

    def step_hf():
        optimizer.zero_grad(set_to_none=True)
        hf(pixel_values=pixels, labels=hf_labels).loss.backward()
        torch.nn.utils.clip_grad_norm_(hf.parameters(), 0.1)
        optimizer.step()

    model = DETR(num_classes=config.num_labels)
    model.compile()
    width = max(len(b) for b in boxes)
    y = {"boxes": np.zeros((2, width, 4), "float32"), "labels": np.full((2, width), -1, "int32")}
    for i, (b, lab) in enumerate(zip(boxes, labels)):
        y["boxes"][i, : len(b)] = b
        y["labels"][i, : len(lab)] = lab

    def step_kzoo():
        model.train_on_batch(images, y)

    for step in (step_hf, step_kzoo, step_hf, step_kzoo):
        step()
    if args.python:
        profiler = cProfile.Profile()
        profiler.enable()
        for _ in range(2):
            step_kzoo()
        profiler.disable()
        pstats.Stats(profiler).sort_stats("cumtime").print_stats(args.rows)
        return 0
    for name, step in (("transformers", step_hf), ("kzoo", step_kzoo)):
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            for _ in range(2):
                step()
        print(f"==== {name}: two training steps")
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
