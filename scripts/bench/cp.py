"""Context-parallel attention: memory, FLOPs and communication per strategy; packed-data balance.

Everything here is a compile-time analysis on 8 virtual CPU devices, so it does not depend on
the load of the machine: nothing is executed, and the sequences can be longer than this
machine could run.

1. Strategies. For CP = 2, 4, 8 and each global sequence length, compile one training step
   of causal attention (forward + backward, bfloat16 inputs) with the ring and with
   all-to-all, and read per device: temporary memory and argument memory (XLA's compiled
   memory analysis), FLOPs (XLA's compiled cost analysis; a ``lax.cond``/``lax.switch``
   counts its costliest branch) and the bytes each device sends in collectives (from the
   compiled HLO: a collective-permute sends its whole operand, an all-to-all all but the
   ``1/CP`` it keeps). CP = 1 is exact attention on one device, for reference. One line adds
   a sliding window to the ring.
2. The "auto" threshold. From the ring's compiled forward pass: FLOPs of an off-diagonal step
   (2 of the ``2 CP + 1`` quarter-blocks every device computes) over the bytes of one
   key/value block. A step hides its transfer when that intensity reaches the device's
   FLOP/byte balance (H200: 989 TFLOP/s dense bf16 over 450 GB/s of NVLink per direction);
   the intensity grows linearly with the tokens per device, which gives the crossover.
3. Packed documents. Random document lengths (uniform on 1 .. 2 x mean), packed into rows of
   the longest sequence; per-device blocks computed by the ring under its own skip rule
   (``kzoo.ops.ring_attention.packed_device_work``) in the zigzag layout, then after
   ``kzoo.distribution.balance_documents`` reorders each row's documents. All-to-all gives
   every device every block for 1/CP of the heads: its max/mean is 1 by construction.

Usage: ``python scripts/bench/cp.py [--seq-lens 8192,32768] [--plot docs/img/bench_cp.png]``
(the default lengths take about 6 minutes on 2 shared cores, 8192,16384,32768 about 9; the
32768-token all-to-all compiles dominate).
"""

import argparse
import importlib
import os
import re
import sys
import time

os.environ.setdefault("KERAS_BACKEND", "jax")
if "--xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
    )

import numpy as np  # noqa: E402

CPS = (2, 4, 8)
PEAK_FLOPS = 989e12  # H200 SXM, dense bf16
LINK_BYTES = 450e9  # NVLink 4, per direction
MEANS = (1 / 64, 1 / 16, 1 / 4, 1 / 2, 1)  # mean document length, as a fraction of the row
BYTES = {"pred": 1, "s8": 1, "u8": 1, "bf16": 2, "f16": 2, "s16": 2, "u16": 2}
BYTES.update({"f32": 4, "s32": 4, "u32": 4, "f64": 8, "s64": 8, "u64": 8})
COLLECTIVE = re.compile(
    r"= (.*?) (collective-permute|all-to-all|all-gather|all-reduce)(?:-start)?\("
)


def collective_bytes(hlo_text, num_shards):
    """(bytes sent per device, {collective: count}) of a compiled per-device HLO module."""
    sent, counts = 0.0, {}
    for line in hlo_text.splitlines():
        match = COLLECTIVE.search(line)
        if not match:
            continue
        kind = match.group(2)
        counts[kind] = counts.get(kind, 0) + 1
        size = sum(
            BYTES[t] * int(np.prod([int(d) for d in dims.split(",") if d] or [1]))
            for t, dims in re.findall(r"(\w+)\[([\d,]*)\]", match.group(1))
        )
        sent += size * ((num_shards - 1) / num_shards if kind == "all-to-all" else 1)
    return sent, counts


def compile_attention(cp, strategy, seq_len, heads, kv_heads, head_dim, backward, window=None):
    import jax
    import jax.numpy as jnp
    import keras

    from kzoo.distribution import ContextParallel

    ra = importlib.import_module("kzoo.ops.ring_attention")
    devices = keras.distribution.list_devices()[:cp]
    mesh = keras.distribution.DeviceMesh((1, cp), ["batch", "context"], devices=devices)
    dist = ContextParallel(mesh, strategy=strategy)
    sharding = jax.sharding.NamedSharding(
        mesh.backend_mesh, jax.sharding.PartitionSpec("batch", "context")
    )

    def spec(shape):
        return jax.ShapeDtypeStruct(shape, jnp.bfloat16, sharding=sharding)

    args = (
        spec((1, seq_len, heads, head_dim)),
        spec((1, seq_len, kv_heads, head_dim)),
        spec((1, seq_len, kv_heads, head_dim)),
    )

    def forward(q, k, v):
        return ra.ring_attention(q, k, v, causal=True, window_size=window)

    fn = forward
    if backward:

        def fn(q, k, v):
            # A training step uses the output (the loss here), so its all-to-all stays.
            def loss(q, k, v):
                return jnp.sum(forward(q, k, v).astype(jnp.float32))

            return jax.value_and_grad(loss, argnums=(0, 1, 2))(q, k, v)

    if cp == 1:
        compiled = jax.jit(fn).lower(*args).compile()
    else:
        with dist.scope():
            compiled = jax.jit(fn).lower(*args).compile()
    memory = compiled.memory_analysis()
    sent, counts = collective_bytes(compiled.as_text(), cp)
    return {
        "temp": memory.temp_size_in_bytes,
        "args": memory.argument_size_in_bytes,
        "flops": (compiled.cost_analysis() or {}).get("flops", 0.0),
        "sent": sent,
        "collectives": counts,
    }


def strategy_table(args):
    mib = 2**20
    print(
        f"## 1. Per-device cost of one training step of causal attention\n\n"
        f"{args.heads} query / {args.kv_heads} key-value heads of {args.head_dim}, batch 1, "
        "bfloat16 inputs; temp = XLA temporaries, sent = bytes each device sends in "
        "collectives (forward + backward).\n"
    )
    print("| S | CP | strategy | temp (MiB) | inputs (MiB) | GFLOP | sent (MiB) | collectives |")
    print("|---:|---:|---|---:|---:|---:|---:|---|")
    results = {}
    for seq_len in args.seq_lens:
        runs = [(1, "ring")] + [(cp, s) for cp in CPS for s in ("ring", "all_to_all")]
        for cp, strategy in runs:
            r = compile_attention(
                cp, strategy, seq_len, args.heads, args.kv_heads, args.head_dim, True
            )
            results[(seq_len, cp, strategy)] = r
            name = "exact (one device)" if cp == 1 else strategy
            counts = ", ".join(f"{v} {k}" for k, v in sorted(r["collectives"].items())) or "-"
            print(
                f"| {seq_len} | {cp} | {name} | {r['temp'] / mib:.0f} | {r['args'] / mib:.1f} "
                f"| {r['flops'] / 1e9:.0f} | {r['sent'] / mib:.1f} | {counts} |",
                flush=True,
            )
    seq_len, cp = max(args.seq_lens), max(CPS)
    chunk = seq_len // (2 * cp)
    r = compile_attention(
        cp, "ring", seq_len, args.heads, args.kv_heads, args.head_dim, True, window=chunk
    )
    counts = ", ".join(f"{v} {k}" for k, v in sorted(r["collectives"].items()))
    print(
        f"| {seq_len} | {cp} | ring, window {chunk} | {r['temp'] / mib:.0f} | "
        f"{r['args'] / mib:.1f} | {r['flops'] / 1e9:.0f} | {r['sent'] / mib:.1f} | {counts} |"
    )
    results[(seq_len, cp, "window")] = r
    return results


def threshold(args):
    print(
        "\n## 2. Ring step intensity and the all-to-all threshold\n\n"
        "Compiled forward pass of the ring; an off-diagonal step computes 2 of the 2 CP + 1 "
        "quarter-blocks and sends one key/value block. Balance of an H200 over NVLink: "
        f"{PEAK_FLOPS / 1e12:.0f} TFLOP/s / {LINK_BYTES / 1e9:.0f} GB/s = "
        f"{PEAK_FLOPS / LINK_BYTES:.0f} FLOP/byte.\n"
    )
    print("| CP | S | tokens per device | step GFLOP | step MiB | FLOP/byte | crossover tokens |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    rows = []
    seq_len = max(args.seq_lens)
    for cp in CPS:
        r = compile_attention(cp, "ring", seq_len, args.heads, args.kv_heads, args.head_dim, False)
        per_device = seq_len // cp
        step_flops = r["flops"] * 2 / (2 * cp + 1)
        step_bytes = r["sent"] / (cp - 1)
        intensity = step_flops / step_bytes
        crossover = per_device * (PEAK_FLOPS / LINK_BYTES) / intensity
        rows.append((cp, per_device, intensity, crossover))
        print(
            f"| {cp} | {seq_len} | {per_device} | {step_flops / 1e9:.1f} | "
            f"{step_bytes / 2**20:.1f} | {intensity:.0f} | {crossover:.0f} |",
            flush=True,
        )
    crossover = float(np.median([c for *_, c in rows]))
    print(
        f"\nBelow about {crossover:.0f} tokens per device a ring step cannot hide its transfer "
        "(for this head configuration; the intensity is tokens per device x query heads / "
        "(2 x key-value heads))."
    )
    return rows, crossover


def packed_balance(args, rows_per_regime=10, seed=0):
    import keras

    from kzoo.distribution import ContextParallel, balance_documents, pack_documents

    ra = importlib.import_module("kzoo.ops.ring_attention")
    seq_len = max(args.seq_lens)
    print(
        f"\n## 3. Packed documents: per-device work, max / mean over devices\n\n"
        f"Rows of {seq_len} tokens, {rows_per_regime} rows per line, document lengths uniform "
        "on 1 .. 2 x mean; mean and worst row. 'busiest' = blocks of the busiest device, "
        "relative to the zigzag layout in the given order.\n"
    )
    print(
        "| CP | mean document | zigzag max/mean | balanced max/mean | busiest after balancing "
        "| all-to-all |"
    )
    print("|---:|---:|---:|---:|---:|---:|")
    rng = np.random.default_rng(seed)
    out = {}
    for cp in CPS:
        devices = keras.distribution.list_devices()[:cp]
        dist = ContextParallel(
            keras.distribution.DeviceMesh((1, cp), ["batch", "context"], devices=devices)
        )
        for mean in MEANS:
            rows = []
            for _ in range(rows_per_regime):
                lengths = []
                while sum(lengths) < seq_len:
                    lengths.append(int(rng.integers(1, int(2 * mean * seq_len) + 1)))
                lengths[-1] -= sum(lengths) - seq_len
                rows.append(lengths)
            orders = balance_documents(rows, seq_len, dist, seed=seed)
            before, after, busiest = [], [], []
            for lengths, order in zip(rows, orders):
                w0 = np.array(
                    ra.packed_device_work(pack_documents([lengths], seq_len, dist)[0], cp)
                )
                reordered = [lengths[i] for i in order]
                w1 = np.array(
                    ra.packed_device_work(pack_documents([reordered], seq_len, dist)[0], cp)
                )
                before.append(w0.max() / w0.mean())
                after.append(w1.max() / w1.mean())
                busiest.append(w1.max() / w0.max())
            out[(cp, mean)] = (before, after, busiest)
            print(
                f"| {cp} | S/{round(1 / mean)} | {np.mean(before):.3f} (worst {max(before):.3f}) "
                f"| {np.mean(after):.3f} (worst {max(after):.3f}) | {np.mean(busiest):.2f}x "
                "| 1.000 |",
                flush=True,
            )
    return out


def plot(path, args, results, steps, crossover, balance):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(11, 8))
    ax = axes[0, 0]
    seq_len = max(args.seq_lens)
    for strategy, marker in (("ring", "o-"), ("all_to_all", "s--")):
        ax.plot(
            CPS,
            [results[(seq_len, cp, strategy)]["temp"] / 2**30 for cp in CPS],
            marker,
            label=strategy,
        )
    ax.axhline(results[(seq_len, 1, "ring")]["temp"] / 2**30, color="gray", ls=":")
    ax.text(2, results[(seq_len, 1, "ring")]["temp"] / 2**30 * 0.7, "one device", color="gray")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xticks(CPS, [str(c) for c in CPS])
    ax.set_xlabel("CP")
    ax.set_ylabel("temporary memory per device (GiB)")
    ax.set_title(f"Training step, S = {seq_len}")
    ax.legend()

    ax = axes[0, 1]
    for strategy, marker in (("ring", "o-"), ("all_to_all", "s--")):
        ax.plot(
            CPS,
            [results[(seq_len, cp, strategy)]["sent"] / 2**20 for cp in CPS],
            marker,
            label=strategy,
        )
    ax.set_xscale("log", base=2)
    ax.set_xticks(CPS, [str(c) for c in CPS])
    ax.set_xlabel("CP")
    ax.set_ylabel("MiB sent per device (fwd + bwd)")
    ax.set_title(f"Collective bytes, S = {seq_len}")
    ax.legend()

    ax = axes[1, 0]
    tokens = np.array([s for _, s, _, _ in steps], float)
    intensity = np.array([i for _, _, i, _ in steps])
    slope = np.mean(intensity / tokens)
    grid = np.geomspace(256, 32768, 50)
    ax.loglog(grid, slope * grid, "-", label="ring step (compiled)")
    ax.loglog(tokens, intensity, "o")
    ax.axhline(PEAK_FLOPS / LINK_BYTES, color="gray", ls=":", label="H200 FLOP/byte")
    ax.axvline(crossover, color="red", ls="--", label=f"crossover {crossover:.0f}")
    ax.set_xlabel("tokens per device")
    ax.set_ylabel("FLOP per byte sent")
    ax.set_title("Ring step intensity")
    ax.legend()

    ax = axes[1, 1]
    cp = max(CPS)
    x = np.arange(len(MEANS))
    ax.bar(x - 0.27, [np.mean(balance[(cp, m)][0]) for m in MEANS], 0.27, label="zigzag")
    ax.bar(x, [np.mean(balance[(cp, m)][1]) for m in MEANS], 0.27, label="zigzag, balanced")
    ax.bar(x + 0.27, [1.0] * len(MEANS), 0.27, label="all-to-all")
    ax.axhline(1.10, color="gray", ls=":")
    ax.set_xticks(x, [f"S/{round(1 / m)}" for m in MEANS])
    ax.set_ylim(0.9, None)
    ax.set_xlabel("mean document length")
    ax.set_ylabel("max / mean work over devices")
    ax.set_title(f"Packed documents, CP = {cp}")
    ax.legend()
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=90)
    print(f"\nplot written to {path}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seq-lens", default="8192,32768")
    parser.add_argument("--heads", type=int, default=16)
    parser.add_argument("--kv-heads", type=int, default=8)
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--plot", default=None, help="write a PNG plot here")
    args = parser.parse_args()
    args.seq_lens = [int(s) for s in args.seq_lens.split(",")]

    import jax

    if jax.device_count() < max(CPS):
        sys.exit(f"needs {max(CPS)} devices; have {jax.device_count()}")
    start = time.time()
    results = strategy_table(args)
    steps, crossover = threshold(args)
    balance = packed_balance(args)
    if args.plot:
        plot(args.plot, args, results, steps, crossover, balance)
    print(f"\n({time.time() - start:.0f} s)")


if __name__ == "__main__":
    main()
