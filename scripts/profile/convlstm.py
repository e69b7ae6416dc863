"""Where a ConvLSTM training step spends its time: kzoo's layer against keras's.

Profiles ``--steps`` ``train_on_batch`` steps (after two warm-up steps) of one point of the
benchmark grid (``scripts/bench/convlstm_grid.py``), one CPU thread, and prints the top ops by self
CPU time for each layer:

- torch: ``torch.profiler``;
- TensorFlow and JAX: their own profilers' XSpace traces (``scripts/profile/xplane_ops.py``), ops
  grouped by type (TensorFlow: ``Conv2DBackpropFilter``, ...; JAX: XLA instructions without
  their number, ``convolution``, ``fusion``, ...); ``--by-name`` lists single ops instead.

Usage: ``python scripts/profile/convlstm.py [POINT] [--backend torch|tensorflow|jax]``
(default ``64px-k3`` on torch).
"""

import argparse
import importlib.util
import os
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
    xplane_ops = _script("profile/xplane_ops.py")
    totals, wall_ms = xplane_ops.profile_steps(
        backend, lambda: model.train_on_batch(x, y), steps, by_name
    )
    xplane_ops.print_table(totals, title, top, wall_ms)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("point", nargs="?", default="64px-k3")
    parser.add_argument("--backend", default="torch", choices=("torch", "tensorflow", "jax"))
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--top", type=int, default=15)
    parser.add_argument("--by-name", action="store_true", help="single ops, not op types")
    parser.add_argument("--layers", default="kzoo,keras", help="kzoo and/or keras")
    args = parser.parse_args(argv)
    # One CPU thread, as the benchmark's processes run (set before keras picks the backend).
    os.environ.update(_script("bench/convlstm.py")._child_env(args.backend, 1))
    import keras
    import numpy as np

    grid = _script("bench/convlstm_grid.py")
    build_model, points = grid.build_model, grid.points

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
