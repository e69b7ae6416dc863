"""Where a ConvLSTM training step spends its time: kzoo's layer against keras's.

Profiles ``--steps`` ``train_on_batch`` steps (after two warm-up steps) of one point of the
benchmark grid (``scripts/convlstm_grid.py``), one CPU thread, and prints the top ops by self
CPU time for each layer:

- torch: ``torch.profiler``;
- TensorFlow and JAX: their own profilers' XSpace traces (``scripts/xplane_ops.py``), ops
  grouped by type (TensorFlow: ``Conv2DBackpropFilter``, ...; JAX: XLA instructions without
  their number, ``convolution``, ``fusion``, ...); ``--by-name`` lists single ops instead.

Usage: ``python scripts/profile_convlstm.py [POINT] [--backend torch|tensorflow|jax]``
(default ``64px-k3`` on torch).
"""

import argparse
import os
import sys

ROOT = os.path.dirname(os.path.abspath(__file__))


def _profile_torch(backend, model, x, y, steps, title, top, by_name):
    import torch

    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            model.train_on_batch(x, y)
    print(f"==== {title}")
    table = prof.key_averages().table(
        sort_by="self_cpu_time_total", row_limit=top, max_name_column_width=40
    )
    print(table)


def _profile_xplane(backend, model, x, y, steps, title, top, by_name):
    from xplane_ops import print_table, profile_steps

    totals, wall_ms = profile_steps(backend, lambda: model.train_on_batch(x, y), steps, by_name)
    print_table(totals, title, top, wall_ms)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("point", nargs="?", default="64px-k3")
    parser.add_argument("--backend", default="torch", choices=("torch", "tensorflow", "jax"))
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--top", type=int, default=15)
    parser.add_argument("--by-name", action="store_true", help="single ops, not op types")
    parser.add_argument("--layers", default="kzoo,keras", help="kzoo and/or keras")
    args = parser.parse_args(argv)
    sys.path[:0] = [os.path.dirname(ROOT), ROOT]
    from bench_convlstm import _child_env

    # One CPU thread, as the benchmark's processes run (set before keras picks the backend).
    os.environ.update(_child_env(args.backend, 1))
    import keras
    import numpy as np
    from convlstm_grid import build_model, points

    from kzoo.layers import ConvLSTM2D

    if args.backend == "torch":
        import torch

        torch.set_num_threads(1)
    (point,) = points([args.point])
    shape = (point["batch"], point["frames"], point["size"], point["size"], 1)
    x = np.random.default_rng(0).random(shape).astype("float32")
    layers = {"kzoo": ConvLSTM2D, "keras": keras.layers.ConvLSTM2D}
    for name in args.layers.split(","):
        keras.utils.set_random_seed(0)
        model = build_model(point, layers[name])
        model.compile("adam", "mse")
        y = model.predict(x, verbose=0)
        for _ in range(2):  # warm-up
            model.train_on_batch(x, y)
        title = f"{name} layer, {args.backend}, grid point {point['name']} ({args.steps} steps)"
        profile = _profile_torch if args.backend == "torch" else _profile_xplane
        profile(args.backend, model, x, y, args.steps, title, args.top, args.by_name)


if __name__ == "__main__":
    main()
