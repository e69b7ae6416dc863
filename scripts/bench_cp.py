"""Context-parallel attention: per-device memory and causal work balance.

Memory: for CP = 1, 2, 4, 8 devices at one fixed global sequence length, compile the attention
the layer runs (exact single-device attention at CP = 1, the JAX ring otherwise) - forward, and
forward + backward - and read the per-device temporary memory from XLA's compiled memory
analysis. Nothing is executed, so the sequence can be longer than this machine could run.

Work: the per-device number of score blocks (each S/(2CP) x S/(2CP)) the ring computes under a
causal mask, for the zigzag layout against contiguous sharding, from the schedule the ring
switches on (``kzoo.ops.ring_attention.step_case``); imbalance is max / mean over devices.

Usage: ``python scripts/bench_cp.py [--seq-len 8192] [--plot docs/img/bench_cp.png]``
"""

import argparse
import importlib
import os
import sys

os.environ.setdefault("KERAS_BACKEND", "jax")
if "--xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
    )

import numpy as np  # noqa: E402

CPS = (1, 2, 4, 8)


def compiled_temp_bytes(cp, seq_len, batch, heads, kv_heads, head_dim, backward):
    import jax
    import jax.numpy as jnp
    import keras

    from kzoo.distribution import ContextParallel

    ra = importlib.import_module("kzoo.ops.ring_attention")
    mesh = keras.distribution.DeviceMesh(
        (1, cp), ["batch", "context"], devices=keras.distribution.list_devices()[:cp]
    )
    dist = ContextParallel(mesh)
    sharding = jax.sharding.NamedSharding(
        mesh.backend_mesh, jax.sharding.PartitionSpec("batch", "context")
    )

    def spec(shape, dtype=jnp.float32):
        return jax.ShapeDtypeStruct(shape, dtype, sharding=sharding)

    args = (
        spec((batch, seq_len, heads, head_dim)),
        spec((batch, seq_len, kv_heads, head_dim)),
        spec((batch, seq_len, kv_heads, head_dim)),
        spec((batch, seq_len), jnp.bool_),
    )

    def forward(q, k, v, m):
        return ra.ring_attention(q, k, v, key_mask=m, causal=True)

    fn = forward
    if backward:

        def fn(q, k, v, m):
            return jax.grad(lambda *a: jnp.sum(forward(*a, m)), argnums=(0, 1, 2))(q, k, v)

    with dist.scope():
        stats = jax.jit(fn).lower(*args).compile().memory_analysis()
    return stats.temp_size_in_bytes, stats.argument_size_in_bytes


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seq-len", type=int, default=8192)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--kv-heads", type=int, default=2)
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--plot", default=None, help="write a PNG plot here")
    args = parser.parse_args()

    import jax

    if jax.device_count() < max(CPS):
        sys.exit(f"needs {max(CPS)} devices; have {jax.device_count()}")
    ra = importlib.import_module("kzoo.ops.ring_attention")

    mib = 2**20
    print(
        f"Attention memory per device, global sequence {args.seq_len}, batch {args.batch}, "
        f"{args.heads} query / {args.kv_heads} key-value heads of {args.head_dim}, float32, "
        "causal (XLA compiled memory analysis, temporaries):\n"
    )
    print("| CP | forward temp (MiB) | vs CP=1 | fwd+bwd temp (MiB) | vs CP=1 | inputs (MiB) |")
    print("|---:|---:|---:|---:|---:|---:|")
    memory = {}
    for cp in CPS:
        fwd, arg = compiled_temp_bytes(
            cp, args.seq_len, args.batch, args.heads, args.kv_heads, args.head_dim, False
        )
        both, _ = compiled_temp_bytes(
            cp, args.seq_len, args.batch, args.heads, args.kv_heads, args.head_dim, True
        )
        memory[cp] = (fwd, both, arg)
        print(
            f"| {cp} | {fwd / mib:.1f} | {fwd / memory[1][0]:.3f} | {both / mib:.1f} | "
            f"{both / memory[1][1]:.3f} | {arg / mib:.2f} |"
        )

    print("\nCausal work per device (score blocks of S/(2CP) x S/(2CP); imbalance = max/mean):\n")
    print(
        "| CP | zigzag per device | zigzag imbalance | contiguous per device | contiguous imbalance |"
    )
    print("|---:|---|---:|---|---:|")
    work = {}
    for cp in CPS[1:]:
        zz = ra.per_device_work(cp, True, "zigzag")
        ct = ra.per_device_work(cp, True, "contiguous")
        work[cp] = (zz, ct)
        print(f"| {cp} | {zz} | {max(zz) / np.mean(zz):.3f} | {ct} | {max(ct) / np.mean(ct):.3f} |")

    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
        ax1.plot(CPS, [memory[c][0] / mib for c in CPS], "o-", label="forward")
        ax1.plot(CPS, [memory[c][1] / mib for c in CPS], "s-", label="forward + backward")
        ax1.set_xscale("log", base=2)
        ax1.set_yscale("log")
        ax1.set_xticks(CPS, [str(c) for c in CPS])
        ax1.set_xlabel("CP (devices on the sequence axis)")
        ax1.set_ylabel("temporary memory per device (MiB)")
        ax1.set_title(f"Attention memory, S = {args.seq_len}")
        ax1.legend()
        zz, ct = work[max(CPS)]
        ranks = np.arange(len(zz))
        ax2.bar(ranks - 0.2, zz, width=0.4, label="zigzag")
        ax2.bar(ranks + 0.2, ct, width=0.4, label="contiguous")
        ax2.set_xlabel("device (rank on the sequence axis)")
        ax2.set_ylabel("score blocks computed")
        ax2.set_title(f"Causal work per device, CP = {max(CPS)}")
        ax2.legend()
        fig.tight_layout()
        os.makedirs(os.path.dirname(os.path.abspath(args.plot)), exist_ok=True)
        fig.savefig(args.plot, dpi=100)
        print(f"\nplot written to {args.plot}")


if __name__ == "__main__":
    main()
