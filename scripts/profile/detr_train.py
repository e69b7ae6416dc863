"""Where a DETR-R50 training step spends its time: kzoo's step against transformers'.

Builds the two steps of ``scripts/bench/detr_train.py`` (same images, targets, dropout and
optimizer recipe, at batch 2 and 512x640), warms both up, then profiles two steps of each and
prints the top ops by self CPU time: transformers' with ``torch.profiler``; kzoo's on torch the
same way, on JAX and TensorFlow with their own profilers (``scripts/profile/xplane_ops.py``: XLA
instructions or TensorFlow op types). The last line compares the time in convolutions and
matrix products (``_heavy``). ``--python`` prints instead ``cProfile``'s top functions of kzoo's
step by cumulative time (where keras's eager Python costs show). Usage:
``python scripts/profile/detr_train.py [--backend torch|jax|tensorflow] [--rows 25] [--python]``.
"""

import argparse
import cProfile
import importlib.util
import os
import pstats
import sys

SCRIPTS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _script(path):
    """``scripts/<path>`` as a module: scripts/ is a folder of scripts, not a package."""
    name = "_script_" + path[:-3].replace("/", "_")
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, os.path.join(SCRIPTS, path))
        sys.modules[name] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(sys.modules[name])
    return sys.modules[name]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=25, help="rows of each table")
    parser.add_argument("--python", action="store_true", help="cProfile kzoo's step instead")
    parser.add_argument("--backend", default="torch", choices=("torch", "jax", "tensorflow"))
    parser.add_argument("--by-name", action="store_true", help="kzoo's single ops, not op types")
    args = parser.parse_args(argv)
    os.environ["KERAS_BACKEND"] = args.backend
    bench_detr_train = _script("bench/detr_train.py")
    xplane_ops = _script("profile/xplane_ops.py")

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
    conv_ms = {}
    for name, step in (("transformers", step_hf), ("kzoo", step_kzoo)):
        title = (
            f"{name} ({'torch' if name == 'transformers' else args.backend}): two training steps"
        )
        if name == "kzoo" and args.backend != "torch":
            totals, wall_ms = xplane_ops.profile_steps(args.backend, step, 2, args.by_name)
            xplane_ops.print_table(totals, title, args.rows, wall_ms)
            conv_ms[name] = sum(ms for op, ms in totals.items() if _heavy(op))
            continue
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            for _ in range(2):
                step()
        print(f"==== {title}")
        averages = prof.key_averages()
        print(averages.table(sort_by="self_cpu_time_total", row_limit=args.rows))
        conv_ms[name] = sum(e.self_cpu_time_total for e in averages if _heavy(e.key)) / 1e3
    print(
        f"convolutions and matrix products, two steps: kzoo {conv_ms['kzoo']:.0f} ms, "
        f"transformers {conv_ms['transformers']:.0f} ms"
    )
    return 0


def _heavy(op):
    """Whether an op is a convolution or a matrix product: torch's ``aten::`` ops, XLA's
    instructions (YNNPACK fusions hold XLA's convolutions and dots) or TensorFlow's op types."""
    op = op.lower()
    products = ("aten::mm", "aten::addmm", "aten::bmm", "dot", "ynn_fusion")
    return "conv" in op or "matmul" in op or op.startswith(products)


if __name__ == "__main__":
    sys.exit(main())
