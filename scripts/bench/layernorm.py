"""Benchmark: kzoo's norm layers and ops against keras's, torch's and the copy bandwidth.

Four variants, each kzoo layer against the keras layer it replaces (same weights):

- ``layer``: ``kzoo.layers.LayerNormalization`` vs ``keras.layers.LayerNormalization``;
- ``rms``: ``kzoo.layers.RMSNormalization`` vs ``keras.layers.RMSNormalization``;
- ``add_layer``: ``LayerNormalization(...)(x, residual=r)`` (the fused residual add) vs
  ``x + r`` then keras's layer, both returning the normalised sum and the sum;
- ``add_rms``: the same with RMSNormalization.

For each backend (each in its own subprocess, since keras fixes its backend at import), each
variant, shape ``(rows, hidden)`` and dtype it times, alternating between the implementations in
rounds, the forward pass and forward+backward (gradients for the inputs and the weights):

- ``kzoo`` / ``keras``: the layers (dispatch: Triton on CUDA torch, Pallas on JAX GPU, the
  fallback elsewhere);
- ``kzoo-op`` / ``keras-op``: the functions (``kzoo.ops.layer_norm`` / ``rms_norm`` /
  ``add_layer_norm`` / ``add_rms_norm`` against ``keras.ops.layer_normalization`` /
  ``rms_normalization``, unfused add for the residual variants); ``--no-ops`` leaves them out;
- ``kzoo-portable``: kzoo's fallback itself (only on a GPU, where it differs from ``kzoo``);
- ``torch``: ``torch.nn.functional.layer_norm`` / ``rms_norm`` (after ``x + r`` for the residual
  variants; torch backend only), with parameters in the activations' dtype;
- ``copy``: a device copy of the input (read + write of the same bytes), the bandwidth roof.

JAX functions run under ``jax.jit`` and TensorFlow under ``tf.function(jit_compile=True)``, as
keras's ``fit`` runs them; torch runs eagerly. Bandwidth counts the bytes that must move: the
forward pass reads x (and r) and writes y (and the sum), forward+backward also reads the
normalised input and dy (and the sum's gradient) and writes dx, plus the parameters and their
gradients. bfloat16 runs use the ``mixed_bfloat16`` policy (float32 weights, bfloat16
activations). Results: a table on stdout, ``results.json`` and ``layernorm.png`` in ``--out``;
the time ratios kzoo/keras (median of paired rounds) and the verdicts on the targets are
summarised at the end: on the CPU kzoo's layers and ops at most 1.02x keras's time; on a GPU the
forward pass at >= 85% of the copy bandwidth for hidden >= 4096 in bfloat16, and
forward+backward >= 1.3x faster than torch's functions (torch) or keras's unfused ops (JAX).

Usage: ``python scripts/bench/layernorm.py [--quick] [--backends jax,tensorflow,torch]``
(or ``kzoo bench layernorm -- ...``). ``--quick`` is a small CPU-sized grid (minutes); the
default grid is the GPU one, which takes minutes per backend on a GPU: run one backend per
command there (``--backends torch``), or narrow it with ``--rows/--hidden/--dtypes/--variants``;
``--grid gpu-check`` is the short GPU grid that ``scripts/gpu_check.py`` runs.
"""

import argparse
import json
import math
import os
import statistics
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
EPS = 1e-5
VARIANTS = ("layer", "rms", "add_layer", "add_rms")
GRIDS = {
    "full": {
        "rows": "4096,16384,65536",
        "hidden": "256,1024,4096,8192,16384",
        "dtypes": "float32,bfloat16",
        "rounds": 10,
        "min_time": 0.02,
        "case_seconds": None,
    },
    "quick": {
        "rows": "4096",
        "hidden": "256,1024,4096",
        "dtypes": "float32",
        "rounds": 201,
        "min_time": 0.005,
        "case_seconds": 8.0,
    },
    # What gpu_check.py runs: one row count, the bfloat16 sizes of both GPU targets.
    "gpu-check": {
        "rows": "16384",
        "hidden": "1024,4096,8192",
        "dtypes": "bfloat16",
        "rounds": 5,
        "min_time": 0.01,
        "case_seconds": None,
    },
}
# The targets (see the module docstring).
CPU_MAX_RATIO = 1.02
GPU_MIN_COPY_FRACTION = 0.85
GPU_MIN_SPEEDUP = 1.3
IMPLS = ("kzoo", "kzoo-op", "kzoo-portable", "keras", "keras-op", "torch", "copy")
# What identifies one measured case (a result row adds impl, times and ratios).
CASE = ("backend", "platform", "variant", "dtype", "rows", "hidden", "mode")


def _timer(fns, sync, rounds, min_time, case_seconds=None, min_rounds=21):
    """Seconds per call of each callable, one sample per round, alternating within a round.

    With ``case_seconds``, no new round starts once the case's rounds have taken that long (but
    at least ``min_rounds`` run): short samples in many rounds pair better than long ones in few
    (the VM's load drifts within a 50 ms sample), and large shapes need fewer of them.

    Every callable runs the same number of calls per sample (enough for the slowest to take
    ``min_time``): a sample pays a fixed cost when the timer switches to another function (cold
    caches for its buffers), and with unequal counts that cost would weigh more on the side with
    fewer calls (identical XLA programs measured 1.04-1.08 apart that way). Each round runs the
    callables in a fresh order, so that no implementation always runs right after the same other
    one (a rotation keeps every predecessor fixed; a large free just before a call, for instance,
    costs the next allocation page faults).
    """
    from kzoo.utils import benchmark

    return benchmark.alternate(
        fns,
        rounds,
        warmup=1,  # compile / warm up
        sync=sync,
        shuffle=True,
        seed=0,
        min_seconds=min_time,
        budget_seconds=case_seconds or None,
        min_rounds=min_rounds,
    )


def _layers(variant, dtype, hidden):
    """kzoo's and keras's layer for ``variant``, built, with the same random weights."""
    import keras
    import numpy as np

    import kzoo

    policy = "mixed_bfloat16" if dtype == "bfloat16" else dtype
    if variant.endswith("rms"):
        ours = kzoo.layers.RMSNormalization(epsilon=EPS, dtype=policy)
        theirs = keras.layers.RMSNormalization(epsilon=EPS, dtype=policy)
    else:
        ours = kzoo.layers.LayerNormalization(epsilon=EPS, dtype=policy)
        theirs = keras.layers.LayerNormalization(epsilon=EPS, dtype=policy)
    rng = np.random.default_rng(0)
    for layer in (ours, theirs):
        layer.build((None, hidden))
    weights = [rng.normal(1.0, 0.1, (hidden,)).astype("float32") for _ in ours.weights]
    ours.set_weights(weights)
    theirs.set_weights(weights)
    return ours, theirs


def _functions(variant, ours, theirs, call, with_ops, with_portable):
    """``{impl: f(ours_params, theirs_params, x, r)}``; residual variants return (y, x + r).

    ``call(layer, params, *args, **kwargs)`` calls a layer with these parameters (JAX's
    stateless call; the layer itself elsewhere).
    """
    import importlib

    import keras

    import kzoo

    # ``kzoo.ops.layer_norm`` the attribute is the function; the module holds the fallbacks.
    module = importlib.import_module("kzoo.ops.layer_norm")
    fused, rms = variant.startswith("add"), variant.endswith("rms")
    if rms:
        kzoo_op, portable = kzoo.ops.rms_norm, module.rms_norm_portable

        def keras_op(x, p):
            return keras.ops.rms_normalization(x, p[0], -1, EPS)
    else:
        kzoo_op, portable = kzoo.ops.layer_norm, module.layer_norm_portable

        def keras_op(x, p):
            return keras.ops.layer_normalization(x, p[0], p[1], -1, EPS)

    def unfused(norm):
        if fused:
            return lambda po, pt, x, r: (norm(po, pt, x + r), x + r)
        return lambda po, pt, x, r: norm(po, pt, x)

    fns = {"keras": unfused(lambda po, pt, x: call(theirs, pt, x))}
    if fused:
        fns["kzoo"] = lambda po, pt, x, r: call(ours, po, x, residual=r)
    else:
        fns["kzoo"] = lambda po, pt, x, r: call(ours, po, x)
    if with_ops:
        fns["keras-op"] = unfused(lambda po, pt, x: keras_op(x, pt))
        if fused:
            fused_op = kzoo.ops.add_rms_norm if rms else kzoo.ops.add_layer_norm
            fns["kzoo-op"] = lambda po, pt, x, r: fused_op(x, r, *po, -1, EPS)
        else:
            fns["kzoo-op"] = lambda po, pt, x, r: kzoo_op(x, *po, -1, EPS)
    if with_portable:
        fns["kzoo-portable"] = unfused(lambda po, pt, x: portable(x, *po, (1,), EPS))
    return fns


# HBM bandwidth (bytes per second) of the cards the roofline predicts times for: H100 SXM, H200,
# B200 (NVIDIA's data sheets).
HBM_BANDWIDTH = {"H100": 3.35e12, "H200": 4.8e12, "B200": 8.0e12}


def roofline_bytes(variant, mode, rows, hidden, dtype, param_size=4):
    """The bytes a pass must move at least, with parameters of ``param_size`` bytes.

    Forward: read x (and the residual), gamma (and beta); write y (and the sum), the float32
    row statistics (1/std, and the mean for layer norm). Backward: read the normalised input (x,
    or the sum), dy (and the sum's gradient), gamma and the statistics; write dx (the residual's
    gradient is the same tensor) and the parameter gradients. ``mode`` is ``fwd``, ``bwd`` or
    ``fwd+bwd``.
    """
    size = 2 if dtype in ("bfloat16", "float16") else 4
    fused = variant.startswith("add")
    rms = variant.endswith("rms")
    params = 1 if rms else 2
    stats = rows * 4 * (1 if rms else 2)  # float32 1/std (and the mean) per row
    row_tensor = rows * hidden * size
    inputs = 2 if fused else 1
    fwd = 2 * inputs * row_tensor + params * hidden * param_size + stats
    bwd = (1 + inputs + 1) * row_tensor + (1 + params) * hidden * param_size + stats
    return {"fwd": fwd, "bwd": bwd, "fwd+bwd": fwd + bwd}[mode]


def predicted_seconds(nbytes, bandwidth):
    """The roofline time of a memory-bound pass: its bytes over the memory bandwidth."""
    return nbytes / bandwidth


def card_bandwidth(device):
    """``(card, bytes per second)`` for a device name such as ``NVIDIA H100 80GB HBM3``, or
    ``None`` for a card without a prediction (the H100 PCIe and NVL have other bandwidths)."""
    name = (device or "").upper()
    if "H100" in name and ("PCIE" in name or "NVL" in name):
        return None
    for card, bandwidth in HBM_BANDWIDTH.items():
        if card in name:
            return card, bandwidth
    return None


def roofline(results, device):
    """Measured time over the roofline time of each GPU result (the copy excepted)."""
    card = card_bandwidth(device)
    if card is None:
        return []
    out = []
    for r in results:
        if r.get("platform") != "gpu" or r["impl"] == "copy":
            continue
        moved = roofline_bytes(r["variant"], r["mode"], r["rows"], r["hidden"], r["dtype"])
        predicted_ms = predicted_seconds(moved, card[1]) * 1e3
        out.append(
            {
                **{k: r[k] for k in CASE},
                "impl": r["impl"],
                "card": card[0],
                "measured_ms": r["ms"],
                "predicted_ms": predicted_ms,
                "of_roofline": predicted_ms / r["ms"],
            }
        )
    return out


def _bytes_moved(variant, mode, impl, elems, hidden, size):
    """The bytes an implementation must move (see the module docstring)."""
    fused = variant.startswith("add")
    if impl == "copy":
        return 2 * elems * size
    tensors = {"fwd": 4 if fused else 2, "fwd+bwd": 8 if fused else 5}[mode]
    params = 1 if variant.endswith("rms") else 2
    vectors = params if mode == "fwd" else 2 * params + 1
    return tensors * elems * size + vectors * hidden * 4


def _torch_cases(variant, rows, hidden, dtype, platform, opts):
    import torch
    import torch.nn.functional as F

    device = "cuda" if torch.cuda.is_available() else "cpu"
    tdtype = getattr(torch, dtype)
    x = torch.randn(rows, hidden, device=device, dtype=tdtype)
    r = torch.randn(rows, hidden, device=device, dtype=tdtype) if variant[:3] == "add" else None
    dy = torch.randn(rows, hidden, device=device, dtype=tdtype)
    dz = torch.randn(rows, hidden, device=device, dtype=tdtype)
    ours, theirs = _layers(variant, dtype, hidden)
    po = [v.value for v in ours.trainable_variables]
    pt = [v.value for v in theirs.trainable_variables]

    def call(layer, params, *args, **kwargs):
        return layer(*args, **kwargs)

    fns = _functions(variant, ours, theirs, call, opts.ops, platform == "gpu" or opts.portable)
    # torch's own kernels get parameters in the activations' dtype, as a bf16 torch model has.
    own = [torch.nn.Parameter(p.detach().clone().to(tdtype)) for p in po]
    if variant.endswith("rms"):

        def native(x):
            return F.rms_norm(x, (hidden,), own[0], EPS)
    else:

        def native(x):
            return F.layer_norm(x, (hidden,), own[0], own[1], EPS)

    if variant.startswith("add"):
        fns["torch"] = lambda po_, pt_, x, r: (native(x + r), x + r)
    else:
        fns["torch"] = lambda po_, pt_, x, r: native(x)

    def forward(f):
        def run():
            with torch.no_grad():
                return f(po, pt, x, r)

        return run

    xg = x.detach().clone().requires_grad_()
    rg = None if r is None else r.detach().clone().requires_grad_()

    def forward_backward(f):
        def run():
            xg.grad = None
            if rg is not None:
                rg.grad = None
            out = f(po, pt, xg, rg)
            outs = out if isinstance(out, tuple) else (out,)
            torch.autograd.backward(outs, (dy, dz)[: len(outs)])

        return run

    def sync(_):
        if device == "cuda":
            torch.cuda.synchronize()

    fwd = {k: forward(f) for k, f in fns.items()}
    fwd["copy"] = lambda: x.clone()
    return fwd, {k: forward_backward(f) for k, f in fns.items()}, sync


def _jax_cases(variant, rows, hidden, dtype, platform, opts):
    import jax
    import jax.numpy as jnp

    x = jax.random.normal(jax.random.PRNGKey(0), (rows, hidden), jnp.float32).astype(dtype)
    r = None
    if variant.startswith("add"):
        r = jax.random.normal(jax.random.PRNGKey(2), (rows, hidden), jnp.float32).astype(dtype)
    dy = jax.random.normal(jax.random.PRNGKey(1), (rows, hidden), jnp.float32).astype(dtype)
    dz = jax.random.normal(jax.random.PRNGKey(3), (rows, hidden), jnp.float32).astype(dtype)
    ours, theirs = _layers(variant, dtype, hidden)
    po = [v.value for v in ours.trainable_variables]
    pt = [v.value for v in theirs.trainable_variables]

    def call(layer, params, *args, **kwargs):
        return layer.stateless_call(params, [], *args, **kwargs)[0]

    fns = _functions(variant, ours, theirs, call, opts.ops, platform == "gpu" or opts.portable)

    def forward(f):
        g = jax.jit(f)
        return lambda: g(po, pt, x, r)

    def forward_backward(f):
        def grads(po, pt, x, r, dy, dz):
            out, vjp = jax.vjp(f, po, pt, x, r)
            return vjp((dy, dz) if isinstance(out, tuple) else dy)

        g = jax.jit(grads)
        return lambda: g(po, pt, x, r, dy, dz)

    copy = jax.jit(jnp.copy)
    fwd = {k: forward(f) for k, f in fns.items()}
    fwd["copy"] = lambda: copy(x)
    return fwd, {k: forward_backward(f) for k, f in fns.items()}, jax.block_until_ready


def _tf_cases(variant, rows, hidden, dtype, platform, opts):
    import tensorflow as tf

    x = tf.cast(tf.random.normal((rows, hidden), seed=0), dtype)
    r = tf.cast(tf.random.normal((rows, hidden), seed=2), dtype) if variant[:3] == "add" else None
    dy = tf.cast(tf.random.normal((rows, hidden), seed=1), dtype)
    dz = tf.cast(tf.random.normal((rows, hidden), seed=3), dtype)
    ours, theirs = _layers(variant, dtype, hidden)
    po, pt = list(ours.trainable_variables), list(theirs.trainable_variables)

    def call(layer, params, *args, **kwargs):
        return layer(*args, **kwargs)

    fns = _functions(variant, ours, theirs, call, opts.ops, platform == "gpu" or opts.portable)

    def forward(f):
        g = tf.function(lambda x, r: f(po, pt, x, r), jit_compile=True)
        return lambda: g(x, r)

    def forward_backward(f):
        def grads(x, r, dy, dz):
            sources = [t for t in (x, r) if t is not None]
            with tf.GradientTape() as tape:
                tape.watch(sources)
                out = f(po, pt, x, r)
            outs = list(out) if isinstance(out, tuple) else [out]
            return tape.gradient(outs, sources + po + pt, output_gradients=[dy, dz][: len(outs)])

        g = tf.function(grads, jit_compile=True)
        return lambda: g(x, r, dy, dz)

    # Grappler removes a multiplication by one (and an identity); doubling must read and write.
    copy = tf.function(lambda x: x * 2.0, jit_compile=True)
    fwd = {k: forward(f) for k, f in fns.items()}
    fwd["copy"] = lambda: copy(x)

    def sync(out):
        if platform == "gpu":
            tf.test.experimental.sync_devices()

    return fwd, {k: forward_backward(f) for k, f in fns.items()}, sync


def _paired(samples, a, b):
    """Median over rounds of ``a``'s time over ``b``'s in the same round (``None`` if absent)."""
    from kzoo.utils import benchmark

    if a not in samples or b not in samples:
        return None
    return benchmark.ratio(samples, a, b)


def _worker(args):
    import keras

    from kzoo.backends import environment as kb

    backend = keras.backend.backend()
    platform = kb.platform()
    make = {"torch": _torch_cases, "jax": _jax_cases, "tensorflow": _tf_cases}[backend]
    results = []
    for variant in args.variants.split(","):
        for dtype in args.dtypes.split(","):
            size = 2 if dtype in ("bfloat16", "float16") else 4
            for rows in (int(r) for r in args.rows.split(",")):
                for hidden in (int(h) for h in args.hidden.split(",")):
                    fwd, fb, sync = make(variant, rows, hidden, dtype, platform, args)
                    for mode, fns in (("fwd", fwd), ("fwd+bwd", fb)):
                        samples = _timer(fns, sync, args.rounds, args.min_time, args.case_seconds)
                        times = {k: statistics.median(v) for k, v in samples.items()}
                        # Neighbouring samples share the machine's load: compare them pairwise.
                        layer_ratio = _paired(samples, "kzoo", "keras")
                        op_ratio = _paired(samples, "kzoo-op", "keras-op")
                        case = (backend, platform, variant, dtype, rows, hidden, mode)
                        for impl, seconds in times.items():
                            moved = _bytes_moved(variant, mode, impl, rows * hidden, hidden, size)
                            results.append(
                                {
                                    **dict(zip(CASE, case)),
                                    "impl": impl,
                                    "ms": seconds * 1e3,
                                    "gbps": moved / seconds / 1e9,
                                    "kzoo_over_keras": layer_ratio,
                                    "op_over_keras_op": op_ratio,
                                }
                            )
                        line = "  ".join(f"{k}={v * 1e3:.3f}ms" for k, v in times.items())
                        print(
                            f"[{backend}/{platform}] {variant} {dtype} {rows}x{hidden} {mode}: "
                            f"{line}",
                            flush=True,
                        )
                        # Written after every shape, so that a run cut short keeps its figures.
                        _write_json(args.worker_out, results)
                    del fwd, fb


def _write_json(path, data):
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(data, f)
    os.replace(tmp, path)


def _groups(results):
    groups = {}
    for r in results:
        groups.setdefault(tuple(r.get(k, "layer") for k in CASE), {})[r["impl"]] = r
    return groups


def verdicts(results):
    """Each target checked on these results: a list of dicts with ``met`` True/False.

    On the CPU: kzoo's layer and op at most ``CPU_MAX_RATIO`` times keras's (median of paired
    rounds). On a GPU: the forward pass at ``GPU_MIN_COPY_FRACTION`` of the copy bandwidth for
    hidden >= 4096 in bfloat16, and forward+backward ``GPU_MIN_SPEEDUP`` times faster than
    torch's functions (torch backend) or keras's layer (the unfused keras ops; other backends).
    """
    out = []
    for key, g in sorted(_groups(results).items()):
        backend, platform, variant, dtype, rows, hidden, mode = key
        if "kzoo" not in g:
            continue
        where = dict(zip(CASE, key))
        if platform != "gpu":
            for impl, field in (("layer", "kzoo_over_keras"), ("op", "op_over_keras_op")):
                ratio = g["kzoo"].get(field)
                if ratio is not None:
                    out.append(
                        {
                            **where,
                            "target": f"cpu {impl} time <= {CPU_MAX_RATIO}x keras",
                            "value": ratio,
                            "met": ratio <= CPU_MAX_RATIO,
                        }
                    )
            continue
        if mode == "fwd" and dtype == "bfloat16" and hidden >= 4096 and "copy" in g:
            frac = g["kzoo"]["gbps"] / g["copy"]["gbps"]
            out.append(
                {
                    **where,
                    "target": f"fwd >= {GPU_MIN_COPY_FRACTION:.0%} of copy bandwidth",
                    "value": frac,
                    "met": frac >= GPU_MIN_COPY_FRACTION,
                }
            )
        baseline = "torch" if "torch" in g else "keras"
        if mode == "fwd+bwd" and baseline in g:
            speedup = g[baseline]["ms"] / g["kzoo"]["ms"]
            out.append(
                {
                    **where,
                    "target": f"fwd+bwd >= {GPU_MIN_SPEEDUP}x faster than {baseline}",
                    "value": speedup,
                    "met": speedup >= GPU_MIN_SPEEDUP,
                }
            )
    return out


def _summarise(results):
    """Markdown table rows and the summary lines (kzoo/keras ratios, verdicts)."""
    groups = _groups(results)
    present = {r["impl"] for r in results}
    impls = [i for i in IMPLS if i in present]
    lines = [
        "| backend | variant | dtype | rows | hidden | mode | "
        + " | ".join(f"{i} ms (GB/s)" for i in impls)
        + " | kzoo/keras | op/keras-op |",
        "|" + "---|" * (8 + len(impls)),
    ]
    ratios = {}
    for key, g in sorted(groups.items()):
        cells = [
            f"{g[i]['ms']:.3f} ({g[i]['gbps']:.{0 if g[i]['gbps'] >= 100 else 1}f})"
            if i in g
            else "-"
            for i in impls
        ]
        kz = g.get("kzoo", {})
        paired = [kz.get("kzoo_over_keras"), kz.get("op_over_keras_op")]
        for name, value in zip(("layer", "op"), paired):
            if value is not None:
                ratios.setdefault((key[0], key[1], key[2], name, key[6]), []).append(value)
        lines.append(
            f"| {key[0]}/{key[1]} | {key[2]} | {key[3]} | {key[4]} | {key[5]} | {key[6]} | "
            + " | ".join(cells)
            + " | "
            + " | ".join("-" if v is None else f"{v:.3f}" for v in paired)
            + " |"
        )
    summary = []
    for (backend, platform, variant, kind, mode), rs in sorted(ratios.items()):
        summary.append(
            f"{backend}/{platform} {variant} {kind} {mode}: kzoo/keras time ratio (median of "
            f"paired rounds) median over shapes {statistics.median(rs):.3f}"
            f" (min {min(rs):.3f}, max {max(rs):.3f}, {len(rs)} shapes)"
        )
    for v in verdicts(results):
        summary.append(
            f"target {v['target']}: {v['backend']}/{v['platform']} {v['variant']} {v['dtype']} "
            f"{v['rows']}x{v['hidden']} {v['mode']} {v['value']:.3f} "
            f"({'meets' if v['met'] else 'misses'})"
        )
    return lines, summary


def _plot(results, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def panel_of(r):
        return (r["backend"], r["platform"], r.get("variant", "layer"), r["dtype"], r["mode"])

    panels = sorted({panel_of(r) for r in results})
    cols = min(4, len(panels))
    nrows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(4.2 * cols, 3.4 * nrows), squeeze=False)
    for ax, panel in zip(axes.flat, panels):
        sel = [r for r in results if panel_of(r) == panel]
        rows = max(r["rows"] for r in sel)
        for impl in IMPLS:
            pts = sorted(
                (r["hidden"], r["gbps"]) for r in sel if r["impl"] == impl and r["rows"] == rows
            )
            if pts:
                style = "k--" if impl == "copy" else "o-"
                ax.plot([p[0] for p in pts], [p[1] for p in pts], style, label=impl)
        ax.set_xscale("log", base=2)
        ax.set_title(
            f"{panel[0]}/{panel[1]} {panel[2]} {panel[3]} {panel[4]} ({rows} rows)", fontsize=8
        )
        ax.set_xlabel("hidden size")
        ax.set_ylabel("GB/s")
        ax.legend(fontsize=6)
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--backends", default="jax,tensorflow,torch")
    parser.add_argument("--grid", choices=sorted(GRIDS), default="full")
    parser.add_argument("--quick", action="store_true", help="--grid quick: a CPU-sized grid")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--rows", help="comma-separated row counts")
    parser.add_argument("--hidden", help="comma-separated hidden sizes")
    parser.add_argument("--dtypes", help="comma-separated dtypes (float32, bfloat16, float16)")
    parser.add_argument("--rounds", type=int, default=None, help="timed rounds per implementation")
    parser.add_argument("--min-time", type=float, default=None, help="seconds per timed sample")
    parser.add_argument(
        "--case-seconds",
        type=float,
        default=None,
        help="cut the rounds so that each case takes about this long (at least 21 rounds)",
    )
    parser.add_argument("--out", default=os.path.join(ROOT, "out", "bench_layernorm"))
    parser.add_argument("--no-ops", dest="ops", action="store_false", help="time the layers only")
    parser.add_argument(
        "--with-portable", dest="portable", action="store_true", help="time kzoo's fallback too"
    )
    parser.add_argument("--no-plot", dest="plot", action="store_false")
    parser.add_argument("--worker-out", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    grid = GRIDS["quick" if args.quick else args.grid]
    for key in ("rows", "hidden", "dtypes", "rounds", "min_time", "case_seconds"):
        if getattr(args, key) is None:
            setattr(args, key, grid[key])
    unknown = set(args.variants.split(",")) - set(VARIANTS)
    if unknown:
        parser.error(f"--variants: unknown {sorted(unknown)}; choose from {', '.join(VARIANTS)}")
    return args


def _worker_command(args, out):
    cmd = [sys.executable, os.path.abspath(__file__), "--worker-out", out]
    cmd += ["--rows", str(args.rows), "--hidden", str(args.hidden), "--dtypes", args.dtypes]
    cmd += ["--variants", args.variants, "--rounds", str(args.rounds)]
    cmd += ["--min-time", str(args.min_time)]
    cmd += ["--case-seconds", str(args.case_seconds)] if args.case_seconds else []
    cmd += [] if args.ops else ["--no-ops"]
    cmd += ["--with-portable"] if args.portable else []
    return cmd


def main(argv=None):
    args = parse_args(argv)
    if args.worker_out:
        return _worker(args)

    os.makedirs(args.out, exist_ok=True)
    from kzoo.utils import benchmark

    results = benchmark.results_per_backend(
        args.backends.split(","), lambda out: _worker_command(args, out), cwd=ROOT
    )
    if not results:
        return 1
    lines, summary = _summarise(results)
    print("\n" + "\n".join(lines) + "\n\n" + "\n".join(summary))
    payload = {"results": results, "summary": summary, "verdicts": verdicts(results)}
    _write_json(os.path.join(args.out, "results.json"), payload)
    written = "results.json"
    if args.plot:
        _plot(results, os.path.join(args.out, "layernorm.png"))
        written += " and layernorm.png"
    print(f"\nwrote {written} in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
