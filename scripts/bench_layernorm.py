"""Benchmark: kzoo's LayerNormalization against keras's, torch's F.layer_norm and JAX's path.

For each backend (each in its own subprocess, since keras fixes its backend at import) and each
shape ``(rows, hidden)`` and dtype it times, alternating between the implementations in rounds,
the forward pass and forward+backward (gradients for x, gamma and beta):

- ``kzoo``: ``kzoo.layers.LayerNormalization`` (dispatch: Triton on CUDA torch, Pallas on JAX
  GPU, the ``keras.ops`` fallback elsewhere);
- ``kzoo-portable``: the fallback itself (only on a GPU, where it differs from ``kzoo``);
- ``keras``: ``keras.layers.LayerNormalization`` with the same weights;
- ``torch``: ``torch.nn.functional.layer_norm`` (torch backend only);
- ``copy``: a device copy of the input (read + write of the same bytes), the bandwidth roof.

JAX functions run under ``jax.jit`` and TensorFlow under ``tf.function(jit_compile=True)``, as
keras's ``fit`` runs them; torch runs eagerly. Bandwidth counts the bytes that must move: forward
reads x and writes y (2 tensors), forward+backward also reads x and dy and writes dx (5 tensors),
plus gamma/beta and their gradients. bfloat16 runs use the ``mixed_bfloat16`` policy (float32
weights, bfloat16 activations). Results: a table on stdout, ``results.json`` and ``layernorm.png``
in ``--out``; the time ratios kzoo/keras and the GPU targets are summarised at the end.

Usage: ``python scripts/bench_layernorm.py [--quick] [--backends jax,tensorflow,torch]``
(or ``kzoo bench layernorm -- ...``). ``--quick`` is a small CPU-sized grid (a few minutes); the
default grid is the GPU one, which takes minutes per backend on a GPU: run one backend per
command there (``--backends torch``), or narrow it with ``--rows/--hidden/--dtypes``.
"""

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FULL = {
    "rows": "4096,16384,65536",
    "hidden": "256,1024,4096,8192,16384",
    "dtypes": "float32,bfloat16",
}
# ``--with-portable``: also time the fallback where it is what kzoo runs anyway (checks the code).
PORTABLE_TOO = False
QUICK = {"rows": "4096", "hidden": "256,1024,4096", "dtypes": "float32"}


def _timer(fns, sync, rounds, min_time):
    """Seconds per call of each callable, one sample per round, alternating within a round."""
    iters = {}
    for name, fn in fns.items():
        sync(fn())  # compile / warm up
        start = time.perf_counter()
        sync(fn())
        once = max(time.perf_counter() - start, 1e-7)
        iters[name] = max(1, min(1000, math.ceil(min_time / once)))
    samples = {name: [] for name in fns}
    names = list(fns)
    for r in range(rounds):
        # Rotate the order so that no implementation always runs right after the same other one
        # (a large free just before a call, for instance, costs the next allocation page faults).
        for name in names[r % len(names) :] + names[: r % len(names)]:
            fn = fns[name]
            start = time.perf_counter()
            for _ in range(iters[name]):
                out = fn()
            sync(out)
            samples[name].append((time.perf_counter() - start) / iters[name])
    return samples


def _layers(dtype, hidden):
    import keras
    import numpy as np

    import kzoo

    policy = "mixed_bfloat16" if dtype == "bfloat16" else dtype
    ours = kzoo.layers.LayerNormalization(epsilon=1e-5, dtype=policy)
    theirs = keras.layers.LayerNormalization(epsilon=1e-5, dtype=policy)
    rng = np.random.default_rng(0)
    for layer in (ours, theirs):
        layer.build((None, hidden))
    weights = [rng.normal(1.0, 0.1, (hidden,)).astype("float32") for _ in range(2)]
    ours.set_weights(weights)
    theirs.set_weights(weights)
    return ours, theirs


def _torch_cases(rows, hidden, dtype, platform):
    import torch

    from kzoo.ops.layer_norm import layer_norm_portable

    device = "cuda" if torch.cuda.is_available() else "cpu"
    tdtype = getattr(torch, dtype)
    x = torch.randn(rows, hidden, device=device, dtype=tdtype)
    dy = torch.randn(rows, hidden, device=device, dtype=tdtype)
    ours, theirs = _layers(dtype, hidden)
    # torch's own kernel gets parameters in the activations' dtype, as a bf16 torch model has.
    w = torch.nn.Parameter(ours.gamma.value.detach().clone().to(tdtype))
    b = torch.nn.Parameter(ours.beta.value.detach().clone().to(tdtype))
    fwd = {
        "kzoo": lambda: ours(x),
        "keras": lambda: theirs(x),
        "torch": lambda: torch.nn.functional.layer_norm(x, (hidden,), w, b, 1e-5),
        "copy": lambda: x.clone(),
    }
    if platform == "gpu" or PORTABLE_TOO:
        fwd["kzoo-portable"] = lambda: layer_norm_portable(x, w, b, (1,), 1e-5)
    xg = x.detach().clone().requires_grad_()

    def fb(fn):
        def run():
            xg.grad = None
            fn(xg).backward(dy)

        return run

    fb_fns = {
        "kzoo": fb(ours),
        "keras": fb(theirs),
        "torch": fb(lambda t: torch.nn.functional.layer_norm(t, (hidden,), w, b, 1e-5)),
    }
    if platform == "gpu" or PORTABLE_TOO:
        fb_fns["kzoo-portable"] = fb(lambda t: layer_norm_portable(t, w, b, (1,), 1e-5))

    def sync(_):
        if device == "cuda":
            torch.cuda.synchronize()

    def forward(fns):
        def run():
            with torch.no_grad():
                return fns()

        return run

    return {k: forward(v) for k, v in fwd.items()}, fb_fns, sync


def _jax_cases(rows, hidden, dtype, platform):
    import jax
    import jax.numpy as jnp

    from kzoo.ops.layer_norm import layer_norm_portable

    key = jax.random.PRNGKey(0)
    x = jax.random.normal(key, (rows, hidden), jnp.float32).astype(dtype)
    dy = jax.random.normal(jax.random.PRNGKey(1), (rows, hidden), jnp.float32).astype(dtype)
    ours, theirs = _layers(dtype, hidden)

    def fwd_of(layer):
        tv = [v.value for v in layer.trainable_variables]
        f = jax.jit(lambda tv, x: layer.stateless_call(tv, [], x)[0])
        return lambda: f(tv, x)

    def fb_of(layer):
        tv = [v.value for v in layer.trainable_variables]

        def grads(tv, x, dy):
            _, vjp = jax.vjp(lambda tv, x: layer.stateless_call(tv, [], x)[0], tv, x)
            return vjp(dy)

        f = jax.jit(grads)
        return lambda: f(tv, x, dy)

    copy = jax.jit(jnp.copy)
    fwd = {"kzoo": fwd_of(ours), "keras": fwd_of(theirs), "copy": lambda: copy(x)}
    fb = {"kzoo": fb_of(ours), "keras": fb_of(theirs)}
    if platform == "gpu" or PORTABLE_TOO:
        w, b = (v.value for v in ours.trainable_variables)
        pf = jax.jit(lambda x, w, b: layer_norm_portable(x, w, b, (1,), 1e-5))
        fwd["kzoo-portable"] = lambda: pf(x, w, b)
        pg = jax.jit(lambda x, w, b, dy: jax.vjp(pf, x, w, b)[1](dy))
        fb["kzoo-portable"] = lambda: pg(x, w, b, dy)
    return fwd, fb, jax.block_until_ready


def _tf_cases(rows, hidden, dtype, platform):
    import tensorflow as tf

    x = tf.cast(tf.random.normal((rows, hidden), seed=0), dtype)
    dy = tf.cast(tf.random.normal((rows, hidden), seed=1), dtype)
    ours, theirs = _layers(dtype, hidden)

    def fwd_of(layer):
        f = tf.function(lambda x: layer(x), jit_compile=True)
        return lambda: f(x)

    def fb_of(layer):
        def grads(x, dy):
            with tf.GradientTape() as tape:
                tape.watch(x)
                y = layer(x)
            return tape.gradient(y, [x, *layer.trainable_variables], output_gradients=dy)

        f = tf.function(grads, jit_compile=True)
        return lambda: f(x, dy)

    # Grappler removes a multiplication by one (and an identity); doubling must read and write.
    copy = tf.function(lambda x: x * 2.0, jit_compile=True)
    fwd = {"kzoo": fwd_of(ours), "keras": fwd_of(theirs), "copy": lambda: copy(x)}
    fb = {"kzoo": fb_of(ours), "keras": fb_of(theirs)}

    def sync(out):
        if platform == "gpu":
            tf.test.experimental.sync_devices()

    return fwd, fb, sync


def _worker(args):
    import keras

    from kzoo.backends import environment as kb

    backend = keras.backend.backend()
    platform = kb.platform()
    make = {"torch": _torch_cases, "jax": _jax_cases, "tensorflow": _tf_cases}[backend]
    results = []
    for dtype in args.dtypes.split(","):
        size = 2 if dtype in ("bfloat16", "float16") else 4
        for rows in (int(r) for r in args.rows.split(",")):
            for hidden in (int(h) for h in args.hidden.split(",")):
                fwd, fb, sync = make(rows, hidden, dtype, platform)
                elems = rows * hidden
                for mode, fns, tensors, params in (("fwd", fwd, 2, 2), ("fwd+bwd", fb, 5, 5)):
                    samples = _timer(fns, sync, args.rounds, args.min_time)
                    times = {k: statistics.median(v) for k, v in samples.items()}
                    # Neighbouring samples share the machine's load: compare them pairwise.
                    paired = statistics.median(
                        a / b for a, b in zip(samples["kzoo"], samples["keras"])
                    )
                    for impl, seconds in times.items():
                        moved = (2 if impl == "copy" else tensors) * elems * size
                        moved += 0 if impl == "copy" else params * hidden * 4
                        results.append(
                            {
                                "backend": backend,
                                "platform": platform,
                                "dtype": dtype,
                                "rows": rows,
                                "hidden": hidden,
                                "mode": mode,
                                "impl": impl,
                                "ms": seconds * 1e3,
                                "gbps": moved / seconds / 1e9,
                                "kzoo_over_keras": paired,
                            }
                        )
                    line = "  ".join(f"{k}={v * 1e3:.3f}ms" for k, v in times.items())
                    print(
                        f"[{backend}/{platform}] {dtype} {rows}x{hidden} {mode}: {line}", flush=True
                    )
                del fwd, fb
    with open(args.worker_out, "w") as f:
        json.dump(results, f)


def _summarise(results):
    """Markdown table rows and the summary lines (kzoo/keras ratios, GPU targets)."""
    keyf = ("backend", "platform", "dtype", "rows", "hidden", "mode")
    groups = {}
    for r in results:
        groups.setdefault(tuple(r[k] for k in keyf), {})[r["impl"]] = r
    impls = ["kzoo", "kzoo-portable", "keras", "torch", "copy"]
    lines = [
        "| backend | dtype | rows | hidden | mode | "
        + " | ".join(f"{i} ms (GB/s)" for i in impls)
        + " | kzoo/keras |",
        "|" + "---|" * (6 + len(impls)),
    ]
    ratios = {}
    for key, g in sorted(groups.items()):
        cells = [
            f"{g[i]['ms']:.3f} ({g[i]['gbps']:.{0 if g[i]['gbps'] >= 100 else 1}f})"
            if i in g
            else "-"
            for i in impls
        ]
        ratio = g["kzoo"]["kzoo_over_keras"]
        ratios.setdefault((key[0], key[1], key[5]), []).append(ratio)
        lines.append(
            f"| {key[0]}/{key[1]} | {key[2]} | {key[3]} | {key[4]} | {key[5]} | "
            + " | ".join(cells)
            + f" | {ratio:.3f} |"
        )
    summary = []
    for (backend, platform, mode), rs in sorted(ratios.items()):
        summary.append(
            f"{backend}/{platform} {mode}: kzoo/keras time ratio (median of paired rounds) "
            f"median over shapes {statistics.median(rs):.3f}"
            f" (min {min(rs):.3f}, max {max(rs):.3f}, {len(rs)} shapes)"
        )
    for key, g in sorted(groups.items()):
        backend, platform, dtype, rows, hidden, mode = key
        if platform != "gpu":
            continue
        if mode == "fwd" and dtype == "bfloat16" and hidden >= 4096 and "copy" in g:
            frac = g["kzoo"]["gbps"] / g["copy"]["gbps"]
            verdict = "meets" if frac >= 0.85 else "misses"
            summary.append(
                f"GPU target fwd >= 85% of copy: {backend} {rows}x{hidden} bf16 "
                f"{frac:.0%} ({verdict})"
            )
        if mode == "fwd+bwd" and "torch" in g:
            speedup = g["torch"]["ms"] / g["kzoo"]["ms"]
            verdict = "meets" if speedup >= 1.3 else "misses"
            summary.append(
                f"GPU target fwd+bwd >= 1.3x torch: {dtype} {rows}x{hidden} "
                f"{speedup:.2f}x ({verdict})"
            )
    return lines, summary


def _plot(results, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = sorted({(r["backend"], r["platform"], r["dtype"], r["mode"]) for r in results})
    cols = min(4, len(panels))
    nrows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(4.2 * cols, 3.4 * nrows), squeeze=False)
    for ax, panel in zip(axes.flat, panels):
        sel = [r for r in results if (r["backend"], r["platform"], r["dtype"], r["mode"]) == panel]
        rows = max(r["rows"] for r in sel)
        for impl in ("kzoo", "kzoo-portable", "keras", "torch", "copy"):
            pts = sorted(
                (r["hidden"], r["gbps"]) for r in sel if r["impl"] == impl and r["rows"] == rows
            )
            if pts:
                style = "k--" if impl == "copy" else "o-"
                ax.plot([p[0] for p in pts], [p[1] for p in pts], style, label=impl)
        ax.set_xscale("log", base=2)
        ax.set_title(f"{panel[0]}/{panel[1]} {panel[2]} {panel[3]} ({rows} rows)", fontsize=9)
        ax.set_xlabel("hidden size")
        ax.set_ylabel("GB/s")
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--backends", default="jax,tensorflow,torch")
    parser.add_argument("--quick", action="store_true", help="small grid for a CPU (minutes)")
    parser.add_argument("--rows", help="comma-separated row counts")
    parser.add_argument("--hidden", help="comma-separated hidden sizes")
    parser.add_argument("--dtypes", help="comma-separated dtypes (float32, bfloat16, float16)")
    parser.add_argument("--rounds", type=int, default=None, help="timed rounds per implementation")
    parser.add_argument("--min-time", type=float, default=None, help="seconds per timed sample")
    parser.add_argument("--out", default=os.path.join(ROOT, "out", "bench_layernorm"))
    parser.add_argument(
        "--with-portable", action="store_true", help="time kzoo's fallback on a CPU too"
    )
    parser.add_argument("--worker-out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    grid = QUICK if args.quick else FULL
    args.rows = args.rows or grid["rows"]
    args.hidden = args.hidden or grid["hidden"]
    args.dtypes = args.dtypes or grid["dtypes"]
    args.rounds = args.rounds or (5 if args.quick else 10)
    args.min_time = args.min_time or (0.05 if args.quick else 0.02)
    if args.worker_out:
        global PORTABLE_TOO
        PORTABLE_TOO = args.with_portable
        return _worker(args)

    os.makedirs(args.out, exist_ok=True)
    results = []
    for backend in args.backends.split(","):
        with tempfile.TemporaryDirectory() as tmp:
            out = os.path.join(tmp, "results.json")
            cmd = [sys.executable, os.path.abspath(__file__), "--worker-out", out]
            cmd += ["--rows", args.rows, "--hidden", args.hidden, "--dtypes", args.dtypes]
            cmd += ["--rounds", str(args.rounds), "--min-time", str(args.min_time)]
            cmd += ["--with-portable"] if args.with_portable else []
            env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="2")
            env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
            rc = subprocess.call(cmd, env=env, cwd=ROOT)
            if rc != 0:
                print(f"{backend}: benchmark failed (exit {rc})", file=sys.stderr)
                continue
            with open(out) as f:
                results += json.load(f)
    if not results:
        return 1
    lines, summary = _summarise(results)
    print("\n" + "\n".join(lines) + "\n\n" + "\n".join(summary))
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump({"results": results, "summary": summary}, f, indent=1)
    _plot(results, os.path.join(args.out, "layernorm.png"))
    print(f"\nwrote {os.path.join(args.out, 'results.json')} and layernorm.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
