"""Where a DETR inference spends its time on torch, op by op, beside transformers' DETR.

Builds kzoo's ``DETR(num_classes=2)`` (``--dc5``: the dilated last stage) and transformers'
``DetrForObjectDetection`` with the same configuration (for ``--dc5`` its ResNet's last stage is
dilated as ``scripts/bench/detr.py`` does), runs each ``--rounds`` times on one ``--height`` x
``--width`` image under ``torch.profiler``, alternating, and prints for each side its aten ops'
self CPU time per call, largest first, and the total. An op's name says what a difference
between the sides is made of (convolutions, matrix products, attention, copies, elementwise
passes).

Usage: ``KERAS_BACKEND=torch python scripts/profile/detr_torch_ops.py --dc5 [--rounds 5]``
"""

import argparse
import collections


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dc5", action="store_true", help="dilated last stage (DETR-DC5)")
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--top", type=int, default=18, help="ops listed per side")
    args = parser.parse_args(argv)

    # transformers before keras (see scripts/bench/detr.py: triton's LLVM and TensorFlow's).
    from transformers import DetrConfig, DetrForObjectDetection  # noqa: I001

    import keras
    import numpy as np
    import torch
    from torch.profiler import ProfilerActivity, profile

    from kzoo.models import DETR

    if keras.backend.backend() != "torch":
        parser.error("run it with KERAS_BACKEND=torch")
    bench = _bench_module()
    image = np.random.default_rng(0).normal(size=(1, args.height, args.width, 3))
    image = image.astype("float32")
    config = DetrConfig(use_timm_backbone=False, use_pretrained_backbone=False)
    hf = DetrForObjectDetection(config).eval()
    if args.dc5 and bench.dilate_hf_last_stage(hf) != 16:
        raise SystemExit("the patched transformers backbone is not at stride 16")
    pixels = torch.tensor(image).permute(0, 3, 1, 2).contiguous()
    model = DETR(num_classes=config.num_labels, backbone_dilation=args.dc5)
    model.build()

    def run_hf():
        with torch.no_grad():
            return hf(pixel_values=pixels).logits.numpy()

    def run_kzoo():
        return model.predict_on_batch(image)["logits"]

    sides = {"transformers": run_hf, "kzoo": run_kzoo}
    for run in sides.values():  # warm-up: caches, first-call allocations
        run()
    totals = {name: collections.Counter() for name in sides}
    for _ in range(args.rounds):
        for name, run in sides.items():
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                run()
            for event in prof.key_averages():
                totals[name][event.key] += event.self_cpu_time_total
    for name, counter in totals.items():
        total = sum(counter.values()) / args.rounds / 1e3
        print(f"\n{name}: {total:.1f} ms of op self time per call")
        for op, us in counter.most_common(args.top):
            print(f"  {us / args.rounds / 1e3:8.2f} ms  {op}")
    return 0


def _bench_module():
    import importlib.util
    import os

    path = os.path.join(os.path.dirname(os.path.dirname(__file__)), "bench", "detr.py")
    spec = importlib.util.spec_from_file_location("_bench_detr", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


if __name__ == "__main__":
    raise SystemExit(main())
