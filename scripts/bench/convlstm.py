"""Benchmark: kzoo's ConvLSTM2D against keras.layers.ConvLSTM2D inside the predictor models.

For each backend (each in its own subprocess, since keras fixes its backend at import) it builds
the same model twice, once with ``kzoo.layers.ConvLSTM2D`` and once with
``keras.layers.ConvLSTM2D``, gives both the same weights, and times, alternating between the
two, a ``model.fit`` epoch and a ``predict_on_batch`` call. It reports the median of the
per-pair ratios (keras time / kzoo time; > 1 means kzoo is faster) of:

- the training step: each step of the ``fit`` epoch timed by a callback, from
  ``on_train_batch_begin`` to ``on_train_batch_end`` (the median step of each epoch);
- the whole ``fit`` call divided by its number of steps, which adds what ``fit`` pays once
  per call (data adapter, callbacks, iterator) and is the same for both layers;
- ``predict_on_batch``.

Usage: ``python scripts/bench/convlstm.py [--backends jax,tensorflow,torch] [--repeats 5]``
(or ``kzoo bench convlstm -- ...``).

``--grid`` times instead every point of ``scripts/bench/convlstm_grid.py`` (published ConvLSTM
configurations): a ``fit`` training step of the point's model built with each layer (same
weights), alternating, until ``--point-seconds`` or ``--repeats`` pairs; and, each model in a
fresh process of its own, the peak memory a training epoch adds after a warm-up epoch (resident
memory on torch and JAX, TensorFlow's allocator statistics on TensorFlow, whose allocator keeps
its buffers). ``--memory-only`` measures memory alone; ``--kzoo-only`` times only kzoo's
layer. ``--plot PNG`` draws the speedups; ``--json PATH`` keeps every figure.
"""

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import time

SCRIPTS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _grid():
    """``scripts/bench/convlstm_grid.py``, loaded by its path: scripts/ is a folder of scripts,
    not a package, and this script's functions also run where its folder is not on
    ``sys.path`` (the profiler and the tests load it by path)."""
    name = "_script_bench_convlstm_grid"
    if name not in sys.modules:
        path = os.path.join(SCRIPTS, "bench", "convlstm_grid.py")
        spec = importlib.util.spec_from_file_location(name, path)
        sys.modules[name] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(sys.modules[name])
    return sys.modules[name]


CHILD_OPTIONS = (
    "models",
    "batch",
    "batches",
    "frames",
    "size",
    "filters",
    "kernel_sizes",
    "repeats",
)


def _bench_backend(args):
    import keras
    import numpy as np

    from kzoo.utils import benchmark

    class StepTimer(keras.callbacks.Callback):
        """Wall time of each training step, from the batch-begin to the batch-end callback."""

        def __init__(self):
            super().__init__()
            self.steps = []

        def on_train_batch_begin(self, batch, logs=None):
            self._start = time.perf_counter()

        def on_train_batch_end(self, batch, logs=None):
            self.steps.append(time.perf_counter() - self._start)

    from kzoo.data import moving_objects, next_frame_targets
    from kzoo.models.conv_lstm import frame_predictors as fp

    keras.utils.set_random_seed(0)
    filters = tuple(int(f) for f in args.filters.split(","))
    kernels = tuple(int(k) for k in args.kernel_sizes.split(","))
    videos = moving_objects(
        args.batch * args.batches,
        num_frames=args.frames + 1,
        image_size=args.size,
        color=True,
        seed=0,
    )
    results = []
    for model_name in args.models.split(","):
        if model_name == "color":
            x, y = next_frame_targets(videos, "last")
            kz = fp.ColorFramePredictor(channels=3, filters=filters, kernel_sizes=kernels)
            graph = fp.build_color_frame_graph(
                3, 3, filters, kernels, "relu", 3, keras.layers.ConvLSTM2D, (args.size, args.size)
            )
            ref = keras.Model(*graph)
            ref.compile(optimizer=keras.optimizers.Adam(1e-3), loss="mae", metrics=["mae"])
        else:
            x, y = next_frame_targets(videos, "sequence")
            kz = fp.NextFramePredictor(channels=3, filters=filters, kernel_sizes=kernels)
            graph = fp.build_next_frame_graph(
                3, filters, kernels, "relu", 3, keras.layers.ConvLSTM2D, (args.size, args.size)
            )
            ref = keras.Model(*graph)
            ref.compile(
                optimizer=keras.optimizers.Adam(1e-3), loss="binary_crossentropy", metrics=["mae"]
            )
        ref.set_weights(kz.get_weights())
        out_kz = keras.ops.convert_to_numpy(kz(x[: args.batch], training=False))
        out_ref = keras.ops.convert_to_numpy(ref(x[: args.batch], training=False))
        max_diff = float(np.abs(out_kz - out_ref).max())

        def fit(model, x=x, y=y):
            timer = StepTimer()
            start = time.perf_counter()
            model.fit(
                x, y, batch_size=args.batch, epochs=1, verbose=0, shuffle=False, callbacks=[timer]
            )
            return float(np.median(timer.steps)), (time.perf_counter() - start) / args.batches

        def infer(model, x=x):
            start = time.perf_counter()
            model.predict_on_batch(x[: args.batch])
            return time.perf_counter() - start

        def side(model):
            def run():
                step, call = fit(model)
                return {"fit": step, "fit_call": call, "predict": infer(model)}

            return run

        # The warm-up round compiles the train and predict functions of both models.
        samples = benchmark.alternate(
            {"kzoo": side(kz), "keras": side(ref)}, args.repeats, warmup=1, self_timed=True
        )
        row = {"backend": keras.backend.backend(), "model": model_name, "max_diff": max_diff}
        for kind in ("fit", "fit_call", "predict"):
            times = benchmark.field(samples, kind)
            medians = benchmark.medians(times)
            row[kind] = {
                "kzoo_s": float(medians["kzoo"]),
                "keras_s": float(medians["keras"]),
                "speedup": float(benchmark.ratio(times, "keras", "kzoo")),
            }
        results.append(row)
        print(json.dumps(row), flush=True)


class _StepTimer:
    """Wall time of each training step, from the batch-begin to the batch-end callback."""

    def __new__(cls):
        import keras

        class StepTimer(keras.callbacks.Callback):
            def __init__(self):
                super().__init__()
                self.steps = []

            def on_train_batch_begin(self, batch, logs=None):
                self._start = time.perf_counter()

            def on_train_batch_end(self, batch, logs=None):
                self.steps.append(time.perf_counter() - self._start)

        return StepTimer()


def _rss_bytes():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _grid_data(point, steps):
    import numpy as np

    rng = np.random.default_rng(0)
    n = point["batch"] * steps
    shape = (n, point["frames"], point["size"], point["size"], 1)
    x = rng.uniform(size=shape).astype("float32")
    y = x if point["return_sequences"] else x[:, -1]
    return x, y


def _grid_pair(point):
    import keras

    build_model = _grid().build_model

    import kzoo

    keras.config.set_dtype_policy(point["dtype"])
    keras.utils.set_random_seed(0)
    ours = build_model(point, kzoo.layers.ConvLSTM2D)
    theirs = build_model(point, keras.layers.ConvLSTM2D)
    theirs.set_weights(ours.get_weights())
    for model in (ours, theirs):
        model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="mse")
    return ours, theirs


def _grid_time_child(args):
    import numpy as np

    from kzoo.utils import benchmark

    points = _grid().points

    for point in points(args.points.split(",") if args.points else None):
        x, y = _grid_data(point, args.batches)
        ours, theirs = _grid_pair(point)
        if args.kzoo_only:
            theirs, diff = None, None
        else:
            diff = float(
                np.abs(
                    np.asarray(ours.predict_on_batch(x[: point["batch"]]), np.float32)
                    - np.asarray(theirs.predict_on_batch(x[: point["batch"]]), np.float32)
                ).max()
            )

        def step_time(model, x=x, y=y, batch=point["batch"]):
            timer = _StepTimer()
            model.fit(x, y, batch_size=batch, epochs=1, verbose=0, shuffle=False, callbacks=[timer])
            return float(np.median(timer.steps))

        runs = {"kzoo": lambda m=ours: step_time(m)}
        if theirs is not None:
            runs["keras"] = lambda m=theirs: step_time(m)
        # The warm-up round compiles the train functions; then pairs until --repeats of them or
        # --point-seconds (at least 3 pairs).
        samples = benchmark.alternate(
            runs,
            args.repeats,
            warmup=1,
            self_timed=True,
            budget_seconds=args.point_seconds,
            min_rounds=3,
        )
        medians = benchmark.medians(samples)
        row = dict(point, backend=args.backend_name, max_diff=diff, pairs=len(samples["kzoo"]))
        row.update(
            kzoo_s=float(medians["kzoo"]),
            keras_s=float(medians["keras"]) if theirs is not None else None,
            speedup=float(benchmark.ratio(samples, "keras", "kzoo"))
            if theirs is not None
            else None,
        )
        print(json.dumps(row), flush=True)


def _grid_memory_child(args):
    """Peak memory added by training steps of ONE model, in this fresh process.

    Resident memory on torch and JAX; TensorFlow's allocator statistics on TensorFlow.
    """
    import ctypes
    import gc
    import threading

    import keras

    points = _grid().points

    (point,) = points([args.points])
    x, y = _grid_data(point, 3)
    ours, theirs = _grid_pair(point)
    model = ours if args.layer == "kzoo" else theirs
    del ours, theirs  # only the measured model stays alive
    model.fit(x, y, batch_size=point["batch"], epochs=1, verbose=0)
    # The first fit compiled and warmed up; hand the memory it freed back to the system, so that
    # the measured fit has to map its activations again (glibc keeps freed blocks cached, which
    # hid the training steps' working set behind the warm-up's).
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
    if keras.backend.backend() == "tensorflow":
        # TensorFlow's CPU allocator keeps its buffers between steps, so the process's resident
        # memory cannot see a step's working set; its own statistics can.
        import tensorflow as tf

        tf.config.experimental.reset_memory_stats("CPU:0")
        base = tf.config.experimental.get_memory_info("CPU:0")["current"]
        model.fit(x, y, batch_size=point["batch"], epochs=1, verbose=0)
        peak = tf.config.experimental.get_memory_info("CPU:0")["peak"]
        added = max(peak - base, 0) / 2**20
        print(json.dumps({"added_mb": added, "source": "tensorflow allocator"}), flush=True)
        return
    base, peak, stop = _rss_bytes(), [0], threading.Event()

    def sample():
        while not stop.is_set():
            peak[0] = max(peak[0], _rss_bytes())
            time.sleep(0.001)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    model.fit(x, y, batch_size=point["batch"], epochs=1, verbose=0)
    stop.set()
    sampler.join()
    added = max(peak[0] - base, 0) / 2**20
    print(json.dumps({"added_mb": added, "source": "resident memory"}), flush=True)


def _child_env(backend, threads):
    env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="3")
    env.update(
        OMP_NUM_THREADS=str(threads),
        TF_NUM_INTRAOP_THREADS=str(threads),
        TF_NUM_INTEROP_THREADS=str(threads),
    )
    if threads == 1:
        env["XLA_FLAGS"] = (
            env.get("XLA_FLAGS", "") + " --xla_cpu_multi_thread_eigen=false"
            " intra_op_parallelism_threads=1"
        ).strip()
    return env


def _run_json(cmd, env, what):
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        print(proc.stderr[-3000:], file=sys.stderr)
        raise SystemExit(f"{what} failed (exit {proc.returncode})")
    return [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]


def run_grid(args):
    points = _grid().points

    names = [p["name"] for p in points(args.points.split(",") if args.points else None)]
    rows = []
    me = os.path.abspath(__file__)
    for backend in args.backends.split(","):
        env = _child_env(backend, args.threads)
        start = time.time()
        cmd = [sys.executable, me, "--grid-child", "time", "--backend-name", backend]
        cmd += ["--points", ",".join(names), "--repeats", str(args.repeats)]
        cmd += ["--kzoo-only"] if args.kzoo_only else []
        cmd += ["--batches", str(args.batches), "--point-seconds", str(args.point_seconds)]
        if args.timing:
            found = _run_json(cmd, env, f"grid timing under {backend}")
        else:
            found = [dict(p, backend=backend) for p in points(names)]
        for row in found:
            if args.memory:
                for layer in ("kzoo", "keras"):
                    mem = [sys.executable, me, "--grid-child", "memory", "--points", row["name"]]
                    mem += ["--layer", layer]
                    (m,) = _run_json(mem, env, f"memory of {row['name']} ({layer}, {backend})")
                    row[f"{layer}_mb"] = m["added_mb"]
            rows.append(row)
            if not args.timing:
                figure = f"kzoo {row['kzoo_mb']:.0f} MB, keras {row['keras_mb']:.0f} MB"
            elif row["speedup"] is None:
                figure = f"kzoo {row['kzoo_s'] * 1e3:.1f} ms"
            else:
                figure = (
                    f"{row['speedup']:.2f}x (kzoo {row['kzoo_s'] * 1e3:.1f} ms, "
                    f"keras {row['keras_s'] * 1e3:.1f} ms)"
                )
            print(f"# {backend} {row['name']}: {figure}", file=sys.stderr, flush=True)
        print(f"# {backend}: {time.time() - start:.0f} s", file=sys.stderr, flush=True)
    if args.timing:
        print_grid(rows, args)
    else:
        print_memory(rows)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    if args.plot and args.timing:
        plot_grid(rows, args.plot)
    return 0


def print_grid(rows, args):
    import statistics

    print(
        f"\nConvLSTM grid: a fit training step, kzoo vs keras ConvLSTM2D, median of up to "
        f"{args.repeats} alternating pairs; {args.threads} CPU thread(s) per framework\n"
    )
    mem = args.memory
    head = "| backend | point | kind | kernels | filters | frames | size | batch | act | seq | time | dtype"
    head += " | kzoo ms | keras ms | speedup |"
    head += " kzoo MB | keras MB |" if mem else ""
    print(head)
    print("|" + "---|" * (head.count("|") - 1))
    for r in rows:
        line = (
            f"| {r['backend']} | {r['name']} | {r['kind']} | {'/'.join(map(str, r['kernels']))} "
            f"| {r['filters']} | {r['frames']} | {r['size']} | {r['batch']} | {r['activation']} "
            f"| {'y' if r['return_sequences'] else 'n'} | {'T' if r['time_given'] else 'None'} "
            f"| {r['dtype'].replace('mixed_', '')} | {r['kzoo_s'] * 1e3:.1f} "
            + (
                "| - | - |"
                if r["speedup"] is None
                else f"| {r['keras_s'] * 1e3:.1f} | **{r['speedup']:.2f}x** |"
            )
        )
        if mem:
            line += f" {r['kzoo_mb']:.0f} | {r['keras_mb']:.0f} |"
        print(line)
    print("\n| backend | points | min | median | call-bound min | below 0.95x |")
    print("|---|---|---|---|---|---|")
    for backend in dict.fromkeys(r["backend"] for r in rows):
        sub = [r for r in rows if r["backend"] == backend and r["speedup"] is not None]
        if not sub:
            continue
        sp = [r["speedup"] for r in sub]
        small = [r["speedup"] for r in sub if r["kind"] == "call-bound"] or [float("nan")]
        below = [r["name"] for r in sub if r["speedup"] < 0.95]
        print(
            f"| {backend} | {len(sub)} | {min(sp):.2f}x | {statistics.median(sp):.2f}x "
            f"| {min(small):.2f}x | {', '.join(below) or 'none'} |"
        )


def print_memory(rows):
    """The peak memory table alone (``--memory-only``)."""
    print("\n| backend | point | kind | kzoo MB | keras MB | kzoo / keras |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        ratio = r["kzoo_mb"] / r["keras_mb"] if r["keras_mb"] else float("nan")
        print(
            f"| {r['backend']} | {r['name']} | {r['kind']} | {r['kzoo_mb']:.0f} "
            f"| {r['keras_mb']:.0f} | {ratio:.2f} |"
        )


def merge_grid_json(paths):
    """Timed grid rows of several ``--json`` files, the last file winning per backend and point.

    Points come out in the grid's order (``convlstm_grid.points``), backends in first-seen order.
    """
    points = _grid().points

    merged = {}
    for path in paths:
        with open(path) as f:
            for row in json.load(f):
                if row.get("speedup") is not None:
                    merged[(row["backend"], row["name"])] = row
    order = {p["name"]: i for i, p in enumerate(points())}
    return sorted(merged.values(), key=lambda r: order[r["name"]])


def plot_grid(rows, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    backends = list(dict.fromkeys(r["backend"] for r in rows))
    names = list(dict.fromkeys(r["name"] for r in rows))
    fig, ax = plt.subplots(figsize=(12, 4.5))
    width = 0.8 / max(len(backends), 1)
    for i, backend in enumerate(backends):
        by_name = {
            r["name"]: r["speedup"]
            for r in rows
            if r["backend"] == backend and r["speedup"] is not None
        }
        xs = [j + i * width for j, n in enumerate(names) if n in by_name]
        ax.bar(xs, [by_name[n] for n in names if n in by_name], width, label=backend)
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.axhline(0.95, color="red", linewidth=0.8, linestyle=":")
    ax.set_yscale("log")
    ax.set_xticks([j + width * (len(backends) - 1) / 2 for j in range(len(names))])
    ax.set_xticklabels(names, rotation=60, ha="right", fontsize=8)
    ax.set_ylabel("keras time / kzoo time (log)")
    ax.set_title("kzoo ConvLSTM2D training-step speedup over keras, per grid point")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backends", default="jax,tensorflow,torch")
    parser.add_argument("--models", default="color,next", help="color and/or next")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--batches", type=int, default=8, help="batches per fit epoch")
    parser.add_argument("--frames", type=int, default=6, help="input frames")
    parser.add_argument("--size", type=int, default=16, help="frame height and width")
    parser.add_argument("--filters", default="16,16")
    parser.add_argument("--kernel-sizes", default="3,3")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="CPU threads per framework; 1 avoids oversubscribing a shared 2-core machine",
    )
    parser.add_argument("--grid", action="store_true", help="time the grid of published configs")
    parser.add_argument("--points", default="", help="grid points to run (default: all)")
    parser.add_argument("--point-seconds", type=float, default=20.0, help="time budget per point")
    parser.add_argument(
        "--no-memory", dest="memory", action="store_false", help="skip the memory runs"
    )
    parser.add_argument(
        "--memory-only",
        dest="timing",
        action="store_false",
        help="--grid: measure the peak training memory only (no timing; needs no idle machine)",
    )
    parser.add_argument(
        "--kzoo-only",
        action="store_true",
        help="--grid: time kzoo's layer only (keras's JAX layer takes minutes per point)",
    )
    parser.add_argument("--json", help="write every grid figure to this JSON file")
    parser.add_argument("--plot", help="write a PNG of the grid speedups")
    parser.add_argument(
        "--from-json",
        help="with --plot: plot grid figures from these --json files (comma-separated; a later "
        "file's point replaces an earlier one's for the same backend) instead of timing",
    )
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--grid-child", choices=("time", "memory"), help=argparse.SUPPRESS)
    parser.add_argument("--backend-name", help=argparse.SUPPRESS)
    parser.add_argument("--layer", choices=("kzoo", "keras"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if not args.timing and not (args.grid and args.memory):
        parser.error("--memory-only needs --grid and cannot be combined with --no-memory")
    if args.from_json:
        if not args.plot:
            parser.error("--from-json needs --plot")
        plot_grid(merge_grid_json(args.from_json.split(",")), args.plot)
        return 0
    if args.grid_child == "time":
        _grid_time_child(args)
        return 0
    if args.grid_child == "memory":
        _grid_memory_child(args)
        return 0
    if args.grid:
        return run_grid(args)
    if args.child:
        _bench_backend(args)
        return 0
    rows = []
    for backend in args.backends.split(","):
        env = _child_env(backend, args.threads)
        cmd = [sys.executable, os.path.abspath(__file__), "--child"]
        # What the child's benchmark reads (flags and grid options are not passed on).
        for key in CHILD_OPTIONS:
            cmd += [f"--{key.replace('_', '-')}", str(getattr(args, key))]
        start = time.time()
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            print(proc.stderr[-3000:], file=sys.stderr)
            raise SystemExit(f"benchmark under {backend} failed (exit {proc.returncode})")
        for line in proc.stdout.splitlines():
            if line.startswith("{"):
                rows.append(json.loads(line))
        print(f"# {backend}: {time.time() - start:.0f} s", file=sys.stderr, flush=True)
    print(
        f"\nbatch {args.batch}, {args.frames} frames of {args.size}x{args.size}x3, ConvLSTM2D "
        f"filters {args.filters}, kernels {args.kernel_sizes}; median of {args.repeats} "
        f"alternating runs; {args.threads} CPU thread(s) per framework\n"
    )
    print(
        "| backend | model | train step kzoo (s) | train step keras (s) | train step speedup "
        "| fit call per step, speedup | predict kzoo (s) | predict keras (s) | predict speedup "
        "| max abs diff |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        f, fc, p = r["fit"], r["fit_call"], r["predict"]
        print(
            f"| {r['backend']} | {r['model']} | {f['kzoo_s']:.4f} | {f['keras_s']:.4f} "
            f"| **{f['speedup']:.2f}x** | {fc['speedup']:.2f}x "
            f"| {p['kzoo_s']:.4f} | {p['keras_s']:.4f} "
            f"| {p['speedup']:.2f}x | {r['max_diff']:.1e} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
