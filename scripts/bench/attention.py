"""Benchmark: ``kzoo.ops.dot_product_attention`` against ``keras.ops.dot_product_attention``.

The shape of DETR's encoder self-attention: batch 1, ``--heads`` 8 of ``--head-dim`` 32, queries
and keys of each length in ``--lengths`` (a 480x640 image gives DETR-R50's encoder 300 tokens and
DETR-DC5's 1200), a key padding mask ``(batch, 1, 1, keys)`` as DETR passes it (its
last ``--padding`` fraction of the keys masked). For each backend, in its own subprocess (keras
fixes its backend at import), the sides are timed in alternation, one sample of each per round
(``kzoo.utils.benchmark``):

- ``keras``: ``keras.ops.dot_product_attention``;
- ``kzoo``: ``kzoo.ops.dot_product_attention`` (what the dispatch picks for the call: the query
  blocks on the CPU of JAX and TensorFlow from ``MIN_QUERIES`` queries, keras's otherwise);
- ``blocked``: the backend's query-blocked implementation called directly, at every length (JAX
  and TensorFlow), to show where the threshold should be.

JAX functions run under ``jax.jit`` and TensorFlow under ``tf.function`` (graph mode, as keras's
``predict`` runs them); torch runs eagerly. The report gives each side's median milliseconds and
the median over rounds of the paired ratio to keras's time (below 1: faster than keras), the
implementation the dispatch picked, and the largest difference from keras's output.

Usage: ``python scripts/bench/attention.py [--backends jax,tensorflow,torch] [--lengths
300,1200] [--rounds 30] [--out results.json]``. Run it on an idle machine: each sample is
milliseconds long, so another process's load moves it.
"""

import argparse
import json
import os
import sys

SIDES = ("keras", "kzoo", "blocked")


def _sides(backend, q, k, v, mask, scale):
    """``{side: callable}`` (compiled as the backend's models run) and the sync function."""
    import keras

    from kzoo.backends import dispatch
    from kzoo.ops import attention

    def keras_side(q, k, v, mask):
        return keras.ops.dot_product_attention(q, k, v, mask=mask, scale=scale)

    def kzoo_side(q, k, v, mask):
        return attention.dot_product_attention(q, k, v, mask=mask, scale=scale)

    fns = {"keras": keras_side, "kzoo": kzoo_side}
    blocked = [
        impl
        for impl in dispatch.candidates(attention.OP)
        if impl.backends is not None and backend in impl.backends
    ]
    if blocked:
        run_blocked = blocked[0].load()

        def blocked_side(q, k, v, mask):
            return run_blocked(q, k, v, mask, scale)

        fns["blocked"] = blocked_side
    if backend == "jax":
        import jax

        compiled = {name: jax.jit(fn) for name, fn in fns.items()}
        sync = jax.block_until_ready
    elif backend == "tensorflow":
        import tensorflow as tf

        compiled = {name: tf.function(fn) for name, fn in fns.items()}

        def sync(out):
            return out.numpy()
    else:
        compiled = fns

        def sync(out):
            return out

    args = [keras.ops.convert_to_tensor(t) for t in (q, k, v, mask)]
    return {name: (lambda fn=fn: fn(*args)) for name, fn in compiled.items()}, sync


def _worker(args):
    import keras
    import numpy as np

    from kzoo.backends import environment
    from kzoo.ops import attention
    from kzoo.utils import benchmark

    backend = keras.backend.backend()
    platform = environment.platform()
    rng = np.random.default_rng(0)
    results = []
    for length in (int(n) for n in args.lengths.split(",")):
        shape = (args.batch, length, args.heads, args.head_dim)
        q, k, v = (rng.normal(size=shape).astype("float32") for _ in range(3))
        mask = np.ones((args.batch, 1, 1, length), bool)
        mask[..., length - int(length * args.padding) :] = False
        scale = args.head_dim**-0.5
        chosen = attention.implementation(q, k, v, mask=mask, scale=scale).name
        runs, sync = _sides(backend, q, k, v, mask, scale)
        outputs = {name: keras.ops.convert_to_numpy(fn()) for name, fn in runs.items()}
        samples = benchmark.alternate(
            runs,
            args.rounds,
            warmup=1,
            sync=sync,
            shuffle=True,
            min_seconds=args.min_time,
        )
        medians = benchmark.medians(samples)
        row = {
            "backend": backend,
            "platform": platform,
            "length": length,
            "heads": args.heads,
            "head_dim": args.head_dim,
            "batch": args.batch,
            "dispatched": chosen,
            "rounds": len(samples["keras"]),
            "ms": {name: seconds * 1e3 for name, seconds in medians.items()},
            "over_keras": {
                name: benchmark.ratio(samples, name, "keras") for name in runs if name != "keras"
            },
            "max_diff": {
                name: float(np.max(np.abs(out - outputs["keras"])))
                for name, out in outputs.items()
                if name != "keras"
            },
        }
        results.append(row)
        line = "  ".join(f"{name}={ms:.2f}ms" for name, ms in row["ms"].items())
        print(f"[{backend}/{platform}] {length} tokens ({chosen}): {line}", flush=True)
        _write_json(args.worker_out, results)


def _write_json(path, data):
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(data, f, indent=1)
    os.replace(tmp, path)


def table(results):
    """Markdown lines: one row per backend and length."""
    lines = [
        "| backend | tokens | dispatched | "
        + " | ".join(f"{s} ms" for s in SIDES)
        + " | kzoo/keras | blocked/keras |",
        "|" + "---|" * (5 + len(SIDES)),
    ]
    for r in results:
        cells = [f"{r['ms'][s]:.2f}" if s in r["ms"] else "-" for s in SIDES]
        ratios = [r["over_keras"].get(s) for s in ("kzoo", "blocked")]
        lines.append(
            f"| {r['backend']}/{r['platform']} | {r['length']} | {r['dispatched']} | "
            + " | ".join(cells)
            + " | "
            + " | ".join("-" if x is None else f"{x:.2f}" for x in ratios)
            + " |"
        )
    return lines


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--backends", default="jax,tensorflow,torch")
    parser.add_argument("--lengths", default="300,1200", help="comma-separated token counts")
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--head-dim", type=int, default=32)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument(
        "--padding", type=float, default=0.0, help="fraction of the keys masked as padding"
    )
    parser.add_argument("--rounds", type=int, default=30, help="timed rounds per side")
    parser.add_argument("--min-time", type=float, default=0.05, help="seconds per timed sample")
    parser.add_argument("--out", help="write the results as JSON here")
    parser.add_argument("--worker-out", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if not 0 <= args.padding < 1:
        parser.error(f"--padding must be in [0, 1); got {args.padding}")
    return args


def main(argv=None):
    args = parse_args(argv)
    if args.worker_out:
        return _worker(args)

    def command(out):
        cmd = [sys.executable, os.path.abspath(__file__), "--worker-out", out]
        for name in ("lengths", "heads", "head_dim", "batch", "padding", "rounds", "min_time"):
            cmd += [f"--{name.replace('_', '-')}", str(getattr(args, name))]
        return cmd

    from kzoo.utils import benchmark

    results = benchmark.results_per_backend(args.backends.split(","), command)
    if not results:
        return 1
    print("\n" + "\n".join(table(results)))
    if args.out:
        _write_json(args.out, results)
        print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
