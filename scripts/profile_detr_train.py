"""Where a DETR-R50 training step spends its time on torch: kzoo's step against transformers'.

Builds the two steps of ``scripts/bench_detr_train.py`` (same images, targets, dropout and
optimizer recipe, at batch 2 and 512x640), warms both up, then profiles two steps of each with
``torch.profiler`` and prints the top ops by self CPU time; ``--python`` prints instead
``cProfile``'s top functions of kzoo's step by cumulative time (where keras's eager Python
costs show). Usage: ``python scripts/profile_detr_train.py [--rows 25] [--python]``.
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
    import bench_detr_train

    setup = argparse.Namespace(
        batch=2, height=512, width=640, backbone="recipe", dtype_policy="", hf_default_dropout=False
    )
    step_hf, step_kzoo, _, _ = bench_detr_train.build_steps(setup)
    import torch

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
