"""Eager calls of ``ContextParallelAttention`` under ``ContextParallel`` (JAX, virtual devices).

A notebook calls layers eagerly, outside any jitted function. This times the first and the
following calls of one layer on one input, each sequence length in a fresh process (so that no
compilation of an earlier length is reused): the first call traces and compiles the sharded
attention, and the later calls of the same shape should only run it.

The script uses nothing added with the eager cache, so it runs on older checkouts as well
(for a before/after comparison run it from each checkout's root).

Usage: ``python scripts/bench/cp_eager.py [--seq-lens 32,64] [--calls 3] [--devices 8]
[--strategy ring]``. Prints one line per call and a Markdown table.
"""

import argparse
import json
import os
import subprocess
import sys
import time


def child(args):
    """Run in a fresh process: build the layer, then time ``args.calls`` eager calls."""
    os.environ["KERAS_BACKEND"] = "jax"
    flags = [
        f for f in os.environ.get("XLA_FLAGS", "").split() if "host_platform_device_count" not in f
    ]
    flags.append(f"--xla_force_host_platform_device_count={args.devices}")
    os.environ["XLA_FLAGS"] = " ".join(flags)
    import jax
    import keras
    import numpy as np

    from kzoo.distribution import ContextParallel
    from kzoo.layers import ContextParallelAttention

    s = args.seq_len
    x = np.random.default_rng(0).normal(size=(1, s, args.dim)).astype("float32")
    layer = ContextParallelAttention(
        num_heads=args.heads, key_dim=args.dim // args.heads, num_key_value_heads=args.kv_heads,
        causal=True,
    )  # fmt: skip
    layer.build(x.shape, x.shape)
    mesh = keras.distribution.DeviceMesh(
        (1, args.devices), ["batch", "context"], devices=jax.devices()[: args.devices]
    )
    cp = ContextParallel(mesh, strategy=args.strategy)
    x = cp.to_layout_order(x)
    times = []
    with cp.scope():
        for _ in range(args.calls):
            start = time.perf_counter()
            jax.block_until_ready(layer(x, x))
            times.append(time.perf_counter() - start)
    print(json.dumps({"seq_len": s, "times": times}))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seq-lens", default="32,64")
    parser.add_argument("--calls", type=int, default=3)
    parser.add_argument("--devices", type=int, default=8)
    parser.add_argument("--strategy", default="ring", choices=("ring", "all_to_all", "auto"))
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--kv-heads", type=int, default=8)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--seq-len", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.calls < 2:
        parser.error("--calls must be at least 2 (the first call and a repeat)")
    if args.seq_len is not None:
        return child(args)
    rows = []
    for s in [int(v) for v in args.seq_lens.split(",")]:
        cmd = [sys.executable, os.path.abspath(__file__), "--seq-len", str(s)]
        for name in ("calls", "devices", "strategy", "heads", "kv_heads", "dim"):
            cmd += [f"--{name.replace('_', '-')}", str(getattr(args, name))]
        result = subprocess.run(cmd, capture_output=True, text=True)
        if result.returncode != 0:
            sys.exit(f"bench_cp_eager: the run for {s} tokens failed:\n{result.stderr[-3000:]}")
        times = json.loads(result.stdout.strip().splitlines()[-1])["times"]
        for i, t in enumerate(times):
            print(f"{s} tokens, call {i + 1}: {t:.3f} s", flush=True)
        rows.append((s, times))
    print(
        f"\n{args.devices} virtual CPU devices, strategy={args.strategy}, causal, "
        f"{args.heads} heads ({args.kv_heads} key/value), width {args.dim}, batch 1\n"
    )
    print("| tokens | first call (s) | second call (s) | second / first |")
    print("|---|---|---|---|")
    for s, times in rows:
        print(f"| {s} | {times[0]:.3f} | {times[1]:.3f} | {times[1] / times[0]:.2%} |")


if __name__ == "__main__":
    main()
