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

Usage: ``python scripts/bench_convlstm.py [--backends jax,tensorflow,torch] [--repeats 5]``
(or ``kzoo bench convlstm -- ...``).
"""

import argparse
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _bench_backend(args):
    import keras
    import numpy as np

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

        # Warm-up: compiles the train and predict functions of both models.
        for model in (kz, ref):
            fit(model)
            infer(model)
        timings = {"fit": ([], []), "fit_call": ([], []), "predict": ([], [])}
        for _ in range(args.repeats):
            for index, model in enumerate((kz, ref)):
                step, call = fit(model)
                timings["fit"][index].append(step)
                timings["fit_call"][index].append(call)
                timings["predict"][index].append(infer(model))
        row = {"backend": keras.backend.backend(), "model": model_name, "max_diff": max_diff}
        for kind, (t_kz, t_ref) in timings.items():
            ratios = [r / k for k, r in zip(t_kz, t_ref)]
            row[kind] = {
                "kzoo_s": float(np.median(t_kz)),
                "keras_s": float(np.median(t_ref)),
                "speedup": float(np.median(ratios)),
            }
        results.append(row)
        print(json.dumps(row), flush=True)


def main():
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
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _bench_backend(args)
        return 0
    rows = []
    for backend in args.backends.split(","):
        env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="3")
        threads = str(args.threads)
        env.update(
            OMP_NUM_THREADS=threads,
            TF_NUM_INTRAOP_THREADS=threads,
            TF_NUM_INTEROP_THREADS=threads,
        )
        if args.threads == 1:
            env["XLA_FLAGS"] = (
                env.get("XLA_FLAGS", "") + " --xla_cpu_multi_thread_eigen=false"
                " intra_op_parallelism_threads=1"
            ).strip()
        env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
        cmd = [sys.executable, os.path.abspath(__file__), "--child"]
        for key, value in vars(args).items():
            if key not in ("backends", "child"):
                cmd += [f"--{key.replace('_', '-')}", str(value)]
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
