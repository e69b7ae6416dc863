"""Context-parallel attention on torch.distributed: memory and time per process against one process.

For each total sequence length ``S`` this runs one training step of attention (forward and
backward, causal, zigzag layout, batch 1, float32) on the same total sequence

* in one process: kzoo's exact attention (what a process runs without context parallelism:
  the whole ``S x S`` score matrix; skipped above ``--exact-max-seq``, where it does not fit)
  and the blockwise kernel of the ring on one process (no communication);
* in ``CP`` processes started with ``torchrun`` (gloo on 127.0.0.1), each holding ``S / CP``
  tokens, with the ring and with all-to-all.

**Memory** comes from torch's CPU allocator: the profiler (``profile_memory=True``) receives
every allocation and free the allocator makes, with its size; summing them in time order
gives the bytes live at every moment. Only the attention step runs inside the profiler, after
its inputs (query, key, value and the output gradient) exist, so the figures are the
attention's own. Query, key and value are copied inside the profiled forward pass (as the
projections would produce them), so they count when the attention keeps them. **peak** is the
most bytes live at once during the forward and backward pass (scores of the blocks in flight,
received blocks, accumulators, input gradients); **kept** the bytes live at the end of the
forward pass: what the step keeps for the backward pass, its activations (query, key, value or
their head-sharded copies, output, log-sum-exp, ids). These do not depend on the machine's
load.

**Time** is the median over ``--repeats`` steps (after one warm-up) of the slowest process's
step, with a barrier before each; on a CPU the processes share the cores, so the figure shows
the overhead of communication and blocking, not a speed-up. Timings are meaningful on an idle
machine only; ``--no-time`` skips them.

Usage::

    python scripts/bench/cp_torch.py [--seq-lens 4096,16384] [--cp 2,4]
        [--strategies ring,all_to_all] [--heads 8] [--kv-heads 4] [--head-dim 64]
        [--repeats 5] [--exact-max-seq 4096] [--no-time] [--json rows.json]

Prints a Markdown table (one line per S, CP and strategy).
"""

import argparse
import contextlib
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import types


def _inputs(args, length, seed):
    import torch

    g = torch.Generator().manual_seed(seed)

    def normal(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float32)

    q = normal(1, length, args.heads, args.head_dim).requires_grad_()
    k = normal(1, length, args.kv_heads, args.head_dim).requires_grad_()
    v = normal(1, length, args.kv_heads, args.head_dim).requires_grad_()
    return q, k, v, normal(1, length, args.heads, args.head_dim)


def measure_memory(step, q, k, v, dout, trace_path):
    """``(peak, kept)`` bytes of one forward + backward, from the allocator's events.

    A first, unmeasured step warms up what is allocated once (the first collective of a
    process group allocates buffers it keeps), so the figures are those of every step.

    The profiler hears of allocations and frees made in this thread only; see
    ``frees_in_this_thread`` for the buffers gloo's worker threads hold.
    """
    import torch
    from torch.profiler import ProfilerActivity, profile, record_function

    torch.autograd.backward(step(q.clone(), k.clone(), v.clone()), dout)
    for t in (q, k, v):
        t.grad = None
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        with record_function("kzoo_forward"):
            # Fresh query, key and value, as the projections make them: they stay allocated
            # after the forward pass only if the attention keeps them for its backward pass.
            out = step(q.clone(), k.clone(), v.clone())
        with record_function("kzoo_backward"):
            torch.autograd.backward(out, dout)
        del out
    prof.export_chrome_trace(trace_path)
    with open(trace_path) as f:
        events = json.load(f)["traceEvents"]
    os.remove(trace_path)
    forward = next(e for e in events if e.get("name") == "kzoo_forward" and e.get("ph") == "X")
    forward_end = forward["ts"] + forward["dur"]
    memory = sorted(
        (e["ts"], e["args"]["Bytes"], e["args"]["Addr"])
        for e in events
        if e.get("name") == "[memory]"
    )
    live, total, peak, kept = {}, 0, 0, 0
    for ts, nbytes, addr in memory:
        if nbytes > 0:
            live[addr] = nbytes
            total += nbytes
        else:
            total -= live.pop(addr, 0)  # 0: allocated before the measurement
        peak = max(peak, total)
        if ts <= forward_end:
            kept = total
    for t in (q, k, v):
        t.grad = None
    return peak, kept


@contextlib.contextmanager
def frees_in_this_thread():
    """Within: this thread, not gloo's, releases the buffers of kzoo's collectives.

    A collective's work object keeps references to its tensors, and gloo's worker thread drops
    them a moment after the caller's ``wait`` returns. When that reference is the last, the
    buffer is freed in the worker thread, where the profiler does not hear of it (the bytes
    would look allocated for ever). Here every collective kzoo's attention makes waits until
    the worker has let go of its tensors, so the caller frees them, as it means to; nothing
    else changes. (Used for the memory figures only: the waiting would show in the timings.)
    """
    import torch.distributed as dist

    from kzoo.backends.torch import cp_all_to_all, cp_ring

    def settle(tensors):
        deadline = time.monotonic() + 5.0
        for t, count in tensors:
            while t._use_count() > count and time.monotonic() < deadline:
                time.sleep(0)
            if t._use_count() > count:
                print(f"warning: gloo still holds a {tuple(t.shape)} buffer after 5 s; the "
                      "memory figures may count it", file=sys.stderr)  # fmt: skip

    real_all_to_all = dist.all_to_all_single

    def all_to_all_single(output, input, *args, **kwargs):
        counts = [(output, output._use_count()), (input, input._use_count())]
        result = real_all_to_all(output, input, *args, **kwargs)
        settle(counts)
        return result

    class Requests(list):
        tensors = ()

    real_exchange, real_wait = cp_ring.exchange, cp_ring.wait

    def exchange(sends, recvs, *args, **kwargs):
        counts = [(t, t._use_count()) for t, _ in list(sends) + list(recvs)]
        requests = Requests(real_exchange(sends, recvs, *args, **kwargs))
        requests.tensors = counts
        return requests

    def wait(requests):
        real_wait(requests)
        settle(getattr(requests, "tensors", ()))

    cp_all_to_all.dist = types.SimpleNamespace(all_to_all_single=all_to_all_single)
    cp_ring.exchange, cp_ring.wait = exchange, wait
    try:
        yield
    finally:
        cp_all_to_all.dist = dist
        cp_ring.exchange, cp_ring.wait = real_exchange, real_wait


def measure_time(step, q, k, v, dout, repeats, barrier=None, slowest=None):
    """Median seconds of one forward + backward (the slowest process's, with a barrier)."""
    import torch

    times = []
    for i in range(repeats + 1):
        if barrier:
            barrier()
        start = time.perf_counter()
        out = step(q, k, v)
        torch.autograd.backward(out, dout)
        elapsed = time.perf_counter() - start
        if slowest:
            elapsed = slowest(elapsed)
        for t in (q, k, v):
            t.grad = None
        if i:  # the first step warms up
            times.append(elapsed)
    return statistics.median(times)


def child_one_process(args):
    """One process, the whole sequence: exact attention and the blockwise kernel."""
    import importlib

    from kzoo.backends.torch import cp_ring

    ra = importlib.import_module("kzoo.ops.ring_attention")
    q, k, v, dout = _inputs(args, args.seq_len, 0)
    mesh = types.SimpleNamespace(
        context_index=0, context_size=1, context_group=None, context_group_order=[0]
    )
    steps = {"blockwise": lambda q, k, v: cp_ring.ring_attention(q, k, v, mesh=mesh, causal=True)}
    if args.seq_len <= args.exact_max_seq:
        steps["exact"] = lambda q, k, v: ra.exact_attention(q, k, v, causal=True)
    result = {}
    for name, step in steps.items():
        peak, kept = measure_memory(step, q, k, v, dout, args.out + f".{name}.trace.json")
        seconds = None if args.no_time else measure_time(step, q, k, v, dout, args.repeats)
        result[name] = {"peak": peak, "kept": kept, "seconds": seconds}
    with open(args.out, "w") as f:
        json.dump(result, f)


def child_processes(args):
    """One of CP torchrun processes: its shard, both strategies; rank 0 writes the report."""
    import keras
    import torch
    import torch.distributed as dist

    from kzoo.backends.torch import cp_all_to_all, cp_ring
    from kzoo.distribution import ContextParallel, list_devices
    from kzoo.ops.ring_attention import kv_replication

    devices = list_devices()
    cp = len(devices)
    mesh = keras.distribution.DeviceMesh((1, cp), ["batch", "context"], devices=devices)
    runtime = ContextParallel(mesh).runtime
    q, k, v, dout = _inputs(args, args.seq_len // cp, runtime.rank)
    repl = kv_replication(cp, args.heads, args.kv_heads)
    steps = {
        "ring": lambda q, k, v: cp_ring.ring_attention(q, k, v, mesh=runtime, causal=True),
        "all_to_all": lambda q, k, v: cp_all_to_all.all_to_all_attention(
            q, k, v, mesh=runtime, causal=True, kv_replication=repl
        ),
    }

    def slowest(seconds):
        t = torch.tensor([seconds], dtype=torch.float64)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return float(t)

    def largest(values):
        t = torch.tensor(values, dtype=torch.float64)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return [int(x) for x in t.tolist()]

    result = {}
    for name in args.strategies.split(","):
        if name == "all_to_all" and repl is None:
            continue
        dist.barrier()
        trace = f"{args.out}.{name}.{runtime.rank}.trace.json"
        with frees_in_this_thread():
            peak, kept = largest(list(measure_memory(steps[name], q, k, v, dout, trace)))
        seconds = None
        if not args.no_time:
            seconds = measure_time(steps[name], q, k, v, dout, args.repeats, dist.barrier, slowest)
        result[name] = {"peak": peak, "kept": kept, "seconds": seconds}
    if runtime.rank == 0:
        with open(args.out, "w") as f:
            json.dump(result, f)
    dist.destroy_process_group()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(args, mode, nproc, seq_len, out):
    env = dict(os.environ, KERAS_BACKEND="torch", CUDA_VISIBLE_DEVICES="")
    env.setdefault("OMP_NUM_THREADS", "1")
    own = [
        "--child", mode, "--seq-len", str(seq_len), "--out", out,
        "--heads", str(args.heads), "--kv-heads", str(args.kv_heads),
        "--head-dim", str(args.head_dim), "--repeats", str(args.repeats),
        "--exact-max-seq", str(args.exact_max_seq), "--strategies", args.strategies,
    ] + (["--no-time"] if args.no_time else [])  # fmt: skip
    if nproc == 1:
        cmd = [sys.executable, __file__, *own]
    else:
        cmd = [
            sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc),
            "--master-addr", "127.0.0.1", "--master-port", str(_free_port()), __file__, *own,
        ]  # fmt: skip
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"{' '.join(cmd)} failed:\n{(done.stdout + done.stderr)[-4000:]}")
    with open(out) as f:
        return json.load(f)


def _mib(n):
    return f"{n / 2**20:.1f}"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seq-lens", default="4096,16384")
    parser.add_argument("--cp", default="2,4")
    parser.add_argument("--strategies", default="ring,all_to_all")
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--kv-heads", type=int, default=4)
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--exact-max-seq", type=int, default=4096)
    parser.add_argument("--no-time", action="store_true")
    parser.add_argument("--json", help="also write the rows to this JSON file")
    parser.add_argument("--child", choices=["one", "processes"], help=argparse.SUPPRESS)
    parser.add_argument("--seq-len", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child == "one":
        return child_one_process(args)
    if args.child == "processes":
        return child_processes(args)

    print(
        f"batch 1, {args.heads} query / {args.kv_heads} key-value heads of {args.head_dim}, "
        "float32, causal, zigzag; one forward + backward of attention. Memory in MiB per "
        "process from the allocator; ratios against one process (exact / blockwise)."
    )
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for seq in [int(s) for s in args.seq_lens.split(",")]:
            one = _run(args, "one", 1, seq, os.path.join(tmp, f"one{seq}.json"))
            base = one.get("exact")
            block = one["blockwise"]
            for name, r in one.items():
                rows.append((seq, 1, name, r, base, block))
            for cp in [int(c) for c in args.cp.split(",")]:
                out = _run(args, "processes", cp, seq, os.path.join(tmp, f"p{seq}_{cp}.json"))
                for name, r in out.items():
                    rows.append((seq, cp, name, r, base, block))
            print(f"S={seq} done", file=sys.stderr, flush=True)

    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                [
                    {"seq_len": seq, "cp": cp, "attention": name, **r}
                    for seq, cp, name, r, _, _ in rows
                ],
                f,
                indent=1,
            )

    def ratio(a, b, key):
        if b is None or a[key] is None or not b[key]:
            return "-"
        return f"{a[key] / b[key]:.3f}"

    print()
    print(
        "| S | CP | attention | peak (MiB) | kept (MiB) | peak / exact | kept / exact "
        "| peak / blockwise | kept / blockwise | 1.3 / CP | step (s) | step / exact "
        "| step / blockwise |"
    )
    print("|" + "---:|" * 2 + "---|" + "---:|" * 10)
    for seq, cp, name, r, base, block in rows:
        seconds = "-" if r["seconds"] is None else f"{r['seconds']:.3f}"
        print(
            f"| {seq} | {cp} | {name} | {_mib(r['peak'])} | {_mib(r['kept'])} "
            f"| {ratio(r, base, 'peak')} | {ratio(r, base, 'kept')} "
            f"| {ratio(r, block, 'peak')} | {ratio(r, block, 'kept')} | {1.3 / cp:.3f} "
            f"| {seconds} | {ratio(r, base, 'seconds')} | {ratio(r, block, 'seconds')} |"
        )


if __name__ == "__main__":
    main()
