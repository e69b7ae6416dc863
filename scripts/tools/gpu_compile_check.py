"""Compile every Triton and Pallas norm kernel configuration kzoo can pick, for sm_90 and sm_100.

No GPU is needed. For each target (compute capability 9.0: H100/H200; 10.0: B200):

- **Triton (torch)**: every configuration the choosers in ``kzoo.backends.common.norm_configs`` can
  return (kernel, block, warps, rows per program) for float32, float16 and bfloat16 rows of any
  width, in each of the four forms (layer norm, RMS norm and their fused residual forms; forward
  and backward kernels), is compiled by ``triton.compile`` for the target exactly as a launch
  would specialise it: pointers 16-byte aligned, the row length ``N`` as Triton specialises it
  (a multiple of 16, not one, or 1), the row count and rows per program general.
- **Pallas (JAX)**: the four forms, forward and backward, at the benchmark grid's hidden sizes
  (plus 16383, a width that is not a multiple of 16, and 32768, the widest row held in one block
  in half precision) are lowered for CUDA (``jax.jit(f).trace(...).lower(lowering_platforms=
  ("cuda",))``, Pallas's Triton lowering), and the Triton IR each ``pallas_call`` carries is
  compiled by the same Triton wheel for the target.

Registers per thread and spilled bytes come from the wheel's ``ptxas -v`` on the PTX (with
Triton's own flags), shared memory from the compiled kernel's metadata; occupancy is estimated
from them and the multiprocessor's limits (``LIMITS``). A configuration is FAIL when it does not
compile or cannot be launched (shared memory or registers over a block's limit) and SPILL when
ptxas spills registers. Such a configuration must be in ``norm_configs.REMOVED`` for that target
(the choosers then never pick it): one that the choosers can still pick makes the check fail
(exit 1), and a ``REMOVED`` entry that now compiles cleanly is reported as stale.

Each framework runs in a subprocess of its own (importing triton next to JAX's runtime can abort
a process, and Triton's code generator misbehaves under ``TRITON_INTERPRET=1``). Usage::

    python scripts/tools/gpu_compile_check.py                   # everything: a table on stdout
    python scripts/tools/gpu_compile_check.py --write-docs      # and docs/gpu_kernels.md
    python scripts/tools/gpu_compile_check.py --backends triton --targets 90 --dtypes bfloat16

Exit status: 0 when no configuration kzoo can pick fails or spills, 1 otherwise, 2 for a bad
command line, 3 when the triton wheel has no ptxas.
"""

import argparse
import contextlib
import datetime
import importlib.util
import json
import math
import os
import re
import subprocess
import sys
import tempfile

if __name__ == "__main__":
    # The parent process needs only kzoo's pure-Python configurations: keep keras's import light.
    os.environ.setdefault("KERAS_BACKEND", "torch")

from kzoo.backends.common import norm_configs as nc  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DOCS_PAGE = os.path.join(ROOT, "docs", "gpu_kernels.md")
DTYPES = ("float32", "float16", "bfloat16")
ELEMENT_SIZE = {"float32": 4, "float16": 2, "bfloat16": 2}
VARIANTS = ("layer", "rms", "add_layer", "add_rms")
# The benchmark grid's hidden sizes (scripts/bench/layernorm.py), and for Pallas, whose kernels
# are compiled for one row length each, a width that is not a multiple of 16 and the widest row
# held in one block in half precision (the looped path for float32).
GRID_HIDDEN = (256, 1024, 4096, 8192, 16384)
PALLAS_HIDDEN = GRID_HIDDEN + (16383, 32768)
PALLAS_ROWS = 16384
# Multiprocessor limits used for FAIL and the occupancy estimate: H100/H200 (sm_90) and B200
# (sm_100) share them (CUDA programming guide, compute capabilities 9.0 and 10.0).
LIMITS = {
    target: {
        "registers": 65536,  # 32-bit registers per multiprocessor
        "registers_per_thread": 255,
        "register_unit": 256,  # registers are allocated per warp in units of 256
        "threads": 2048,  # resident threads per multiprocessor (64 warps)
        "threads_per_block": 1024,
        "blocks": 32,  # resident blocks per multiprocessor
        "shared": 233472,  # 228 KiB of shared memory per multiprocessor
        "shared_per_block": 232448,  # 227 KiB for one block (opt-in above 48 KiB)
        "shared_reserved": 1024,  # reserved by the system per resident block
    }
    for target in nc.TARGETS
}
TARGET_NAMES = {90: "sm_90 (H100, H200)", 100: "sm_100 (B200)"}
# The compile-time flags of each form; a kernel takes those among its parameters.
FLAGS = {
    "layer": {"HAS_R": False, "HAS_W": True, "HAS_B": True, "HAS_DZ": False, "RMS": False},
    "rms": {"HAS_R": False, "HAS_W": True, "HAS_B": False, "HAS_DZ": False, "RMS": True},
    "add_layer": {"HAS_R": True, "HAS_W": True, "HAS_B": True, "HAS_DZ": True, "RMS": False},
    "add_rms": {"HAS_R": True, "HAS_W": True, "HAS_B": False, "HAS_DZ": True, "RMS": True},
}
FORWARD = ("_fwd_rows", "_fwd_fused", "_fwd_looped")
# Row pointers take the activations' dtype; parameters (float32, as under keras's mixed
# precision policies), statistics and partial sums are float32.
ROW_POINTERS = ("X", "R", "Y", "Z", "DY", "DZ", "DX")
# General values (not 1, not a multiple of 16) for the row count and rows per program, so their
# specialisation is the one most launches get.
ROW_COUNT = 4099
ROWS_PER_PROGRAM = 31


# ---------------------------------------------------------------------------------------------
# What to compile (pure Python).


def n_specs(lo, hi):
    """``{specialisation: row length}`` for the lengths ``lo..hi`` (``hi=None``: unbounded):
    Triton compiles ``N == 1`` as a constant and marks multiples of 16 as such."""
    hi = hi if hi is not None else max(lo, 1 << 20)
    specs = {}
    if lo == 1:
        specs["N=1"] = 1
    aligned = hi // 16 * 16
    if aligned >= lo and aligned > 0:
        specs["N%16=0"] = aligned
    other = next((n for n in (hi, hi - 1) if n >= max(lo, 2) and n % 16), None)
    if other is not None:
        specs["N%16!=0"] = other
    return specs


def _grid_widths(lo, hi):
    return [h for h in GRID_HIDDEN if lo <= h and (hi is None or h <= hi)]


def triton_cases(
    dtypes=DTYPES, variants=VARIANTS, targets=nc.TARGETS, kernels=None, grid_only=False
):
    """One case per compile: every configuration reachable for ``None`` (no removals) or any of
    ``targets``, for each dtype, form and row-length specialisation (forms that give a kernel
    the same flags share a case). ``grid_only``: only the configurations ``targets`` pick for
    the benchmark grid's hidden sizes, in their specialisation (multiples of 16)."""
    cases = {}
    for dtype in dtypes:
        size = ELEMENT_SIZE[dtype]
        for chooser in (nc.triton_forward, nc.triton_backward):
            pickable = {t: nc.reachable(chooser, size, t) for t in targets}
            ranges = dict(nc.reachable(chooser, size, None))
            for found in pickable.values():
                for config, span in found.items():
                    ranges.setdefault(config, span)
            for config, (lo, hi) in ranges.items():
                if kernels and config.kernel not in kernels:
                    continue
                # A range that reaches the end of the search goes on for every wider row.
                hi = None if hi >= (1 << 20) else hi
                specs = n_specs(lo, hi)
                if grid_only:
                    if not any(config in pickable[t] for t in targets):
                        continue
                    widths = _grid_widths(lo, hi)
                    specs = {"N%16=0": max(widths)} if widths else {}
                for spec, n in specs.items():
                    for variant in variants:
                        key = (config.kernel, dtype, config.block, config.warps, config.rows, spec)
                        case = cases.setdefault(
                            key + (_kernel_flags(config.kernel, variant),),
                            {
                                "backend": "triton",
                                "kernel": config.kernel,
                                "dtype": dtype,
                                "variants": [],
                                "config": _config_dict(config),
                                "widths": [lo, hi],
                                "grid": _grid_widths(lo, hi),
                                "spec": spec,
                                "n": n,
                                "pickable": {str(t): config in pickable[t] for t in targets},
                            },
                        )
                        case["variants"].append(variant)
    return list(cases.values())


def _kernel_flags(kernel, variant):
    flags = FLAGS[variant]
    if kernel in FORWARD:
        names = ("HAS_R", "HAS_W", "HAS_B", "RMS")
    elif kernel == "_bwd_row_sums":
        names = ("HAS_W", "RMS")
    else:
        names = ("HAS_W", "HAS_B", "HAS_DZ", "RMS")
    return tuple(flags[k] for k in names)


def _config_dict(config):
    return {"block": config.block, "warps": config.warps, "rows": config.rows}


def pallas_cases(dtypes=DTYPES, variants=VARIANTS, targets=nc.TARGETS, hidden=PALLAS_HIDDEN):
    """One lowering per form, dtype, width and distinct choice of configurations; each lists the
    kernels it holds with their configuration and the targets that pick it."""
    cases = []
    for dtype in dtypes:
        size = ELEMENT_SIZE[dtype]
        for n in hidden:
            choices = {}
            for t in (None, *targets):
                picked = (nc.pallas_forward(n, size, target=t), nc.pallas_dx(n, size, target=t))
                choices.setdefault(picked, []).append(t)
            for picked, chosen_by in choices.items():
                kernels = {
                    "fwd": picked[0],
                    "dx": picked[1],
                    "dwdb": nc.pallas_dwdb(),
                }
                for variant in variants:
                    cases.append(
                        {
                            "backend": "pallas",
                            "variant": variant,
                            "dtype": dtype,
                            "rows": PALLAS_ROWS,
                            "n": n,
                            # The target the chooser is asked for (None: nothing removed),
                            # and every target (None included) that chooses the same.
                            "target": chosen_by[0],
                            "chosen_by": chosen_by,
                            "kernels": {
                                name: {
                                    "kernel": c.kernel,
                                    **_config_dict(c),
                                    "pickable": {
                                        str(t): _pallas_pick(name, n, size, t) == c for t in targets
                                    },
                                }
                                for name, c in kernels.items()
                            },
                        }
                    )
    return cases


def _pallas_pick(name, n, size, target):
    if name == "fwd":
        return nc.pallas_forward(n, size, target=target)
    if name == "dx":
        return nc.pallas_dx(n, size, target=target)
    return nc.pallas_dwdb()


# ---------------------------------------------------------------------------------------------
# Occupancy and verdicts (pure Python).


def occupancy(registers, warps, shared, target):
    """``(blocks per multiprocessor, active warps / maximum warps)`` from the block's resources,
    or ``(0, 0.0)`` when one block does not fit."""
    lim = LIMITS[target]
    threads = warps * 32
    per_warp = math.ceil(max(registers, 1) * 32 / lim["register_unit"]) * lim["register_unit"]
    by_registers = lim["registers"] // (per_warp * warps)
    by_threads = lim["threads"] // threads if threads <= lim["threads_per_block"] else 0
    by_shared = (
        lim["shared"] // (shared + lim["shared_reserved"])
        if shared <= lim["shared_per_block"]
        else 0
    )
    blocks = min(lim["blocks"], by_registers, by_threads, by_shared)
    return blocks, blocks * warps / (lim["threads"] // 32)


def verdict(result, warps, target):
    """``OK``, ``SPILL`` or ``FAIL`` (with the reason) for one compile result."""
    if result.get("error"):
        return "FAIL", result["error"]
    lim = LIMITS[target]
    if result["shared"] > lim["shared_per_block"]:
        return "FAIL", f"{result['shared']} bytes of shared memory > {lim['shared_per_block']}"
    if warps * 32 > lim["threads_per_block"]:
        return "FAIL", f"{warps * 32} threads per block > {lim['threads_per_block']}"
    if occupancy(result["registers"], warps, result["shared"], target)[0] == 0:
        return "FAIL", f"{result['registers']} registers x {warps * 32} threads do not fit"
    if result["spill_stores"] or result["spill_loads"]:
        return "SPILL", (
            f"spills {result['spill_stores']} bytes (stores; {result['spill_loads']} loads)"
        )
    return "OK", ""


# ---------------------------------------------------------------------------------------------
# Compiling (in the subprocesses).


def _ptxas_report(ptx, target):
    """Registers, spill stores/loads and stack bytes per thread from ptxas -v (Triton's flags)."""
    from triton.backends.nvidia.compiler import get_ptxas, sm_arch_from_capability

    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "kernel.ptx")
        with open(src, "w") as f:
            f.write(ptx)
        cmd = [get_ptxas(target).path, "-v", "--regAllocOptLevel=2"]
        cmd += [f"--gpu-name={sm_arch_from_capability(target)}", src]
        cmd += ["-o", os.path.join(tmp, "kernel.cubin")]
        log = subprocess.run(cmd, capture_output=True, text=True, check=True).stderr

    def number(pattern):
        match = re.search(pattern, log)
        return int(match.group(1)) if match else 0

    return {
        "registers": number(r"Used (\d+) registers"),
        "spill_stores": number(r"(\d+) bytes spill stores"),
        "spill_loads": number(r"(\d+) bytes spill loads"),
        "stack": number(r"(\d+) bytes stack frame"),
    }


def _compiled(kernel, target):
    result = {"shared": int(kernel.metadata.shared), "cubin_bytes": len(kernel.asm["cubin"])}
    result.update(_ptxas_report(kernel.asm["ptx"], target))
    return result


def _error(e):
    return f"{type(e).__name__}: {' '.join(str(e).split())[:300]}"


def compile_triton_case(case, target):
    """Compile one Triton case for ``target`` as a launch would specialise it."""
    import torch
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource, make_backend
    from triton.runtime.jit import create_function_from_signature

    from kzoo.backends.torch import layer_norm_triton as ln

    fn = getattr(ln, case["kernel"])
    gpu = GPUTarget("cuda", target, 32)
    backend = make_backend(gpu)
    row = torch.empty(16, dtype=getattr(torch, case["dtype"]))
    f32 = torch.empty(16, dtype=torch.float32)
    ints = {"N": case["n"], "M": ROW_COUNT, "rows_per_program": ROWS_PER_PROGRAM}
    config = case["config"]
    consts = {k: v for k, v in FLAGS[case["variants"][0]].items() if k in fn.arg_names}
    consts["BLOCK"] = config["block"]
    if "ROWS" in fn.arg_names:
        consts["ROWS"] = config["rows"]
    positional = []
    for name in fn.arg_names:
        if name in consts:
            continue
        if name in ROW_POINTERS:
            positional.append(row)
        elif name in ints:
            positional.append(ints[name])
        elif name == "eps":
            positional.append(1e-5)
        else:  # parameters, statistics and partial sums
            positional.append(f32)
    kwargs = {**consts, "num_warps": config["warps"]}
    binder = create_function_from_signature(fn.signature, fn.params, backend)
    bound, spec, options = binder(*positional, **kwargs)
    options, signature, constexprs, attrs = fn._pack_args(backend, kwargs, bound, spec, options)
    try:
        kernel = triton.compile(
            ASTSource(fn, signature, constexprs, attrs), target=gpu, options=options.__dict__
        )
        return _compiled(kernel, target)
    except Exception as e:  # noqa: BLE001 - a failure is a result to report
        return {"error": _error(e)}


def compile_ttir(path, warps, stages, target):
    """Compile a Pallas kernel's Triton IR (a ``.ttir`` file) for ``target``."""
    import triton
    from triton.backends.compiler import GPUTarget

    try:
        kernel = triton.compile(
            path,
            target=GPUTarget("cuda", target, 32),
            options={"num_warps": warps, "num_stages": stages},
        )
        return _compiled(kernel, target)
    except Exception as e:  # noqa: BLE001
        return {"error": _error(e)}


def _custom_calls(op, found):
    for region in op.regions:
        for block in region.blocks:
            for inner in block.operations:
                if inner.operation.name == "stablehlo.custom_call":
                    found.append(inner.operation)
                _custom_calls(inner.operation, found)
    return found


def lower_pallas_case(case, folder):
    """Lower one Pallas case for CUDA; write each kernel's Triton IR to ``folder``.

    Returns ``{kernel name: {"ttir": path, "warps", "stages", "grid"}}`` or ``{"error": ...}``.
    """
    import jax
    import jax.numpy as jnp
    from jax._src.lib.mlir import ir
    from jax._src.lib.triton import dialect as tt_dialect

    from kzoo.backends.jax import layer_norm_pallas as ln

    variant = case["variant"]
    rms, residual = variant.endswith("rms"), variant.startswith("add")
    target = case["target"]

    def f(x, r, w, b, dy):
        def norm(x, r, w, b):
            return ln.norm_2d(x, r, w, b, 1e-5, rms, interpret=False, target=target)

        out, vjp = jax.vjp(norm, x, r, w, b)
        return out, vjp((dy, dy if residual else None))

    row = jax.ShapeDtypeStruct((case["rows"], case["n"]), case["dtype"])
    param = jax.ShapeDtypeStruct((case["n"],), jnp.float32)
    args = (row, row if residual else None, param, None if rms else param, row)
    try:
        lowered = jax.jit(f).trace(*args).lower(lowering_platforms=("cuda",))
    except Exception as e:  # noqa: BLE001
        return {"error": _error(e)}
    kernels = {}
    for op in _custom_calls(lowered.compiler_ir("stablehlo").operation, []):
        if str(op.attributes["call_target_name"]).strip('"') != "__gpu$xla.gpu.triton":
            continue
        config = op.attributes["mhlo.backend_config"]
        with ir.Context() as context:
            tt_dialect.register_dialect(context)
            module = ir.Module.parse(config["ir"].value_bytes)
            name = str(module.operation.attributes["sym_name"]).strip('"')
            text = module.operation.get_asm()
        kind = name.rsplit("_", 1)[-1]
        path = os.path.join(folder, f"{variant}-{case['dtype']}-{case['n']}-{target}-{kind}.ttir")
        with open(path, "w") as out:
            out.write(text)
        kernels[kind] = {
            "ttir": path,
            "warps": config["num_warps"].value,
            "stages": config["num_stages"].value,
            "grid": [config[f"grid_{a}"].value for a in "xyz"],
        }
    return kernels


def _worker(args):
    with open(args.cases) as f:
        job = json.load(f)
    targets = job["targets"]
    out = []
    progress = open(f"{args.out}.progress", "w")
    if args.worker == "pallas-lower":
        for case in job["cases"]:
            out.append({**case, "lowered": lower_pallas_case(case, job["folder"])})
            print(f"lowered {case['variant']} {case['dtype']} {case['n']}", file=progress)
            progress.flush()
    else:
        from triton.backends.nvidia.compiler import get_ptxas

        missing = [t for t in targets if not os.path.exists(get_ptxas(t).path)]
        if missing:
            print(f"gpu_compile_check: no ptxas for {missing} in the triton wheel", flush=True)
            return 3
        for case in job["cases"]:
            if case["backend"] == "triton":
                case["results"] = {str(t): compile_triton_case(case, t) for t in targets}
                what = f"{case['kernel']} {case['dtype']} {case['config']} {case['spec']}"
            else:
                _compile_pallas_case(case, targets)
                what = f"pallas {case['variant']} {case['dtype']} {case['n']}"
            print(f"compiled {what}", file=progress)
            progress.flush()
            out.append(case)
    progress.close()
    with open(args.out, "w") as f:
        json.dump(out, f)
    return 0


def _compile_pallas_case(case, targets):
    lowered = case["lowered"]
    for name, kernel in case["kernels"].items():
        got = lowered.get(name) if "error" not in lowered else None
        kernel["results"] = {}
        for t in targets:
            # Compiled for the targets that choose this lowering, and the unrestricted lowering
            # (target None) also, for the targets it is removed on, where it shows why.
            own = t in case["chosen_by"]
            if not own and not (None in case["chosen_by"] and not kernel["pickable"][str(t)]):
                continue
            if got is None:
                error = lowered.get("error", f"no {name} kernel in the lowering")
                kernel["results"][str(t)] = {"error": error}
            else:
                kernel["results"][str(t)] = compile_ttir(
                    got["ttir"], got["warps"], got["stages"], t
                )
                kernel["lowered"] = {k: got[k] for k in ("warps", "stages", "grid")}


class WorkerError(RuntimeError):
    def __init__(self, code, text):
        super().__init__(f"worker exited {code}:\n{text}")
        self.code = code


def _run_workers(kind, cases, targets, folder, backend, jobs=1):
    """Run ``cases`` in ``jobs`` concurrent worker processes; their results in order."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.update(KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="2", JAX_PLATFORMS="cpu")
    env["TRITON_DEFAULT_FP_FUSION"] = env.get("TRITON_DEFAULT_FP_FUSION", "1")
    jobs = max(1, min(jobs, len(cases)))
    procs = []
    for k in range(jobs):
        job = os.path.join(folder, f"{kind}-{k}-job.json")
        out = os.path.join(folder, f"{kind}-{k}-out.json")
        with open(job, "w") as f:
            json.dump({"cases": cases[k::jobs], "targets": list(targets), "folder": folder}, f)
        cmd = [sys.executable, os.path.abspath(__file__), "--worker", kind, "--cases", job]
        log = open(os.path.join(folder, f"{kind}-{k}.log"), "w+")
        proc = subprocess.Popen(cmd + ["--out", out], env=env, stdout=log, stderr=log)
        procs.append((proc, log, out))
    parts = []
    for proc, log, out in procs:
        code = proc.wait()
        log.seek(0)
        text = log.read()
        log.close()
        if code != 0:
            raise WorkerError(code, "\n".join(text.strip().splitlines()[-20:]))
        with open(out) as f:
            parts.append(json.load(f))
    # Interleave back into the original order.
    merged = []
    for i in range(max(len(p) for p in parts)):
        merged += [p[i] for p in parts if i < len(p)]
    return merged


def check(
    backends=("triton", "pallas"),
    targets=nc.TARGETS,
    dtypes=DTYPES,
    variants=VARIANTS,
    kernels=None,
    hidden=PALLAS_HIDDEN,
    grid_only=False,
    jobs=1,
):
    """Compile the selected cases in ``jobs`` processes; the report rows (one per kernel)."""
    rows = []
    with tempfile.TemporaryDirectory(prefix="kzoo-gpu-compile-") as folder:
        cases = []
        if "triton" in backends:
            cases += triton_cases(dtypes, variants, targets, kernels, grid_only)
        if "pallas" in backends:
            pallas = pallas_cases(dtypes, variants, targets, hidden)
            if pallas:
                cases += _run_workers("pallas-lower", pallas, targets, folder, "jax", jobs)
        if cases:
            for case in _run_workers("compile", cases, targets, folder, "torch", jobs):
                rows += _rows(case, targets)
    return rows


def _rows(case, targets):
    """Flatten a compiled case into report rows with verdicts per target."""
    if case["backend"] == "triton":
        entries = [
            (
                {
                    "backend": "triton",
                    "kernel": case["kernel"],
                    "variants": case["variants"],
                    "dtype": case["dtype"],
                    "shape": _widths_text(case["widths"]),
                    "grid": case["grid"],
                    "spec": case["spec"],
                    "n": case["n"],
                    **case["config"],
                },
                case["results"],
                case["pickable"],
            )
        ]
    else:
        entries = []
        for kernel in case["kernels"].values():
            if not kernel.get("results"):
                continue
            entries.append(
                (
                    {
                        "backend": "pallas",
                        "kernel": kernel["kernel"],
                        "variants": [case["variant"]],
                        "dtype": case["dtype"],
                        "shape": f"{case['rows']}x{case['n']}",
                        "grid": [case["n"]] if case["n"] in GRID_HIDDEN else [],
                        "spec": "",
                        "n": case["n"],
                        "block": kernel["block"],
                        "warps": kernel.get("lowered", {}).get("warps", kernel["warps"]),
                        "rows": kernel["rows"],
                    },
                    kernel["results"],
                    kernel["pickable"],
                )
            )
    rows = []
    for row, results, pickable in entries:
        row["targets"] = {}
        for t in targets:
            result = results.get(str(t))
            if result is None:
                continue
            status, why = verdict(result, row["warps"], t)
            blocks, occ = (0, 0.0)
            if "error" not in result:
                blocks, occ = occupancy(result["registers"], row["warps"], result["shared"], t)
            row["targets"][str(t)] = {
                **result,
                "status": status,
                "why": why,
                "blocks_per_sm": blocks,
                "occupancy": occ,
                "pickable": pickable[str(t)],
                "removed": _is_removed(row, t),
            }
        rows.append(row)
    return rows


def _widths_text(widths):
    lo, hi = widths
    if hi is None:
        return f"N >= {lo}"
    return f"N = {lo}" if lo == hi else f"N {lo}-{hi}"


def summary(rows, targets):
    """Per target: counts, the pickable configurations that fail or spill (must be none), the
    removed ones and why, and stale ``REMOVED`` entries."""
    out = {}
    for t in targets:
        key = str(t)
        entries = [(r, r["targets"][key]) for r in rows if key in r["targets"]]
        picked = [(r, e) for r, e in entries if e["pickable"]]
        bad = [(r, e) for r, e in picked if e["status"] != "OK"]
        removed = [(r, e) for r, e in entries if not e["pickable"] and _is_removed(r, t)]
        removed_keys = {_removal_key(r) for r, _ in removed}
        spilling_keys = {_removal_key(r) for r, e in removed if e["status"] != "OK"}
        stale = sorted(
            k
            for k, where in nc.REMOVED.items()
            if t in where and k in removed_keys and k not in spilling_keys
        )
        small = [(r, e) for r, e in picked if e["spill_stores"] and r["n"] <= 8192]
        out[key] = {
            "compiled": len(entries),
            "pickable": len(picked),
            "ok": sum(e["status"] == "OK" for _, e in entries),
            "spill": sum(e["status"] == "SPILL" for _, e in entries),
            "fail": sum(e["status"] == "FAIL" for _, e in entries),
            "pickable_fail": sum(e["status"] == "FAIL" for _, e in picked),
            "pickable_spill": sum(e["status"] == "SPILL" for _, e in picked),
            "pickable_spill_le_8192": len(small),
            "bad": [_label(r) + f": {e['status']} {e['why']}" for r, e in bad],
            "removed": _removed_lines(removed),
            "stale": [" ".join(map(str, k)) for k in stale],
            "max_registers": max((e.get("registers", 0) for _, e in picked), default=0),
        }
    return out


def _is_removed(row, target):
    backend, kernel, size, block, rows = _removal_key(row)
    return nc.is_removed(backend, kernel, size, block, target, rows)


def _removed_lines(removed):
    """One line per removed configuration and dtype: how many of its compiles (forms and
    row-length specialisations) spill or fail, and the worst."""
    groups = {}
    for r, e in removed:
        groups.setdefault(_removal_key(r) + (r["dtype"],), []).append((r, e))
    lines = []
    for (backend, kernel, _, block, rows, dtype), items in groups.items():
        bad = [(r, e) for r, e in items if e["status"] != "OK"]
        worst = max((e.get("spill_stores", 0) for _, e in bad), default=0)
        config = f"block {block}" + (f", {rows} rows" if kernel == "_fwd_rows" else "")
        text = f"{backend} {kernel} {dtype} ({config}; {items[0][0]['shape']}): "
        text += f"{len(bad)} of {len(items)} compiles "
        text += f"spill or fail (up to {worst} bytes spilled)" if bad else "spill or fail"
        lines.append(text)
    return lines


def _removal_key(row):
    return (row["backend"], row["kernel"], ELEMENT_SIZE[row["dtype"]], row["block"], row["rows"])


def _label(row):
    config = f"block {row['block']}, {row['warps']} warps"
    if row["rows"] > 1:
        config += f", {row['rows']} rows"
    spec = f", {row['spec']}" if row["spec"] else ""
    return (
        f"{row['backend']} {row['kernel']} {row['dtype']} {'/'.join(row['variants'])} "
        f"({config}; {row['shape']}{spec})"
    )


# ---------------------------------------------------------------------------------------------
# The report.


def _cell(entry):
    if entry is None:
        return "", "", "", "", ""
    if "error" in entry:
        return "-", "-", "-", "-", f"FAIL: {entry['why'][:80]}"
    status = entry["status"]
    if not entry["pickable"]:
        status = f"{'removed' if entry.get('removed') else 'not picked'} ({status})"
    return (
        str(entry["registers"]),
        str(entry["spill_stores"]),
        str(entry["shared"]),
        f"{entry['occupancy']:.0%} ({entry['blocks_per_sm']})",
        status,
    )


def table(rows, targets, backend):
    """Markdown table rows for one backend: a row per compiled kernel, columns per target."""
    head = ["kernel", "forms", "dtype", "shape", "N", "config"]
    for t in targets:
        sm = f"sm_{t}"
        head += [f"{sm} regs", f"{sm} spill B", f"{sm} smem B", f"{sm} occupancy", f"{sm}"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        if row["backend"] != backend:
            continue
        config = f"{row['block']}/{row['warps']}w" + (f"/{row['rows']}r" if row["rows"] > 1 else "")
        cells = [
            row["kernel"],
            ", ".join(row["variants"]),
            row["dtype"],
            row["shape"],
            row["spec"] or str(row["n"]),
            config,
        ]
        for t in targets:
            cells += _cell(row["targets"].get(str(t)))
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _bench():
    spec = importlib.util.spec_from_file_location(
        "bench_layernorm", os.path.join(ROOT, "scripts", "bench", "layernorm.py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def roofline_table():
    """Predicted times for every shape of the benchmark's GPU grid at each card's bandwidth."""
    bench = _bench()
    grid = bench.GRIDS["full"]
    cards = list(bench.HBM_BANDWIDTH)
    head = ["variant", "dtype", "rows x hidden", "fwd MB"]
    head += [f"fwd µs {c}" for c in cards] + ["fwd+bwd MB"]
    head += [f"fwd+bwd µs {c}" for c in cards]
    lines = ["| " + " | ".join(head) + " |", "|---|---|---|" + "---:|" * (len(head) - 3)]
    for variant in bench.VARIANTS:
        for dtype in grid["dtypes"].split(","):
            for rows in (int(r) for r in grid["rows"].split(",")):
                for hidden in (int(h) for h in grid["hidden"].split(",")):
                    cells = [variant, dtype, f"{rows}x{hidden}"]
                    for mode in ("fwd", "fwd+bwd"):
                        moved = bench.roofline_bytes(variant, mode, rows, hidden, dtype)
                        cells.append(f"{moved / 1e6:.1f}")
                        cells += [
                            f"{bench.predicted_seconds(moved, bench.HBM_BANDWIDTH[c]) * 1e6:.1f}"
                            for c in cards
                        ]
                    lines.append("| " + " | ".join(cells) + " |")
    return lines


def ptxas_path(target):
    """The triton wheel's ptxas for ``target``, asked in a subprocess (importing triton next to
    another framework's runtime can abort a process); ``None`` when it has none."""
    code = (
        "import os, sys; from triton.backends.nvidia.compiler import get_ptxas; "
        f"p = get_ptxas({int(target)}).path; print(p if p and os.path.exists(p) else '')"
    )
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    path = result.stdout.strip()
    return path or None


def _versions():
    """The triton and jax versions and the wheel's ptxas, without importing either."""
    from importlib import metadata

    spec = importlib.util.find_spec("triton")
    bin_dir = os.path.join(os.path.dirname(spec.origin), "backends", "nvidia", "bin")
    try:
        listed = (
            subprocess.run(
                [os.path.join(bin_dir, "ptxas-blackwell"), "--version"],
                capture_output=True,
                text=True,
            )
            .stdout.strip()
            .splitlines()
        )
        ptxas = listed[-2] if len(listed) >= 2 else "?"
    except OSError:
        ptxas = "?"
    return metadata.version("triton"), metadata.version("jax"), ptxas


def markdown(rows, targets, stats):
    triton_v, jax_v, ptxas_v = _versions()
    lines = [
        "# GPU kernels on Hopper and Blackwell, compiled without a GPU",
        "",
        "Generated by `python scripts/tools/gpu_compile_check.py --write-docs` on "
        f"{datetime.date.today().isoformat()} (triton {triton_v}, jax {jax_v}, the wheel's "
        f"ptxas: {ptxas_v}); see [Normalization](normalization.md#compiled-for-the-gpu-targets) "
        "for what it checks and how. Do not edit by hand.",
        "",
        "Limits used for FAIL and the occupancy estimate (the same for sm_90 and sm_100): 65536 "
        "registers, 2048 threads (64 warps) and 32 blocks per multiprocessor, 1024 threads and "
        "255 registers per thread, registers allocated per warp in units of 256, 228 KiB of "
        "shared memory per multiprocessor (227 KiB for one block, 1 KiB reserved per block). "
        "Occupancy is active warps over 64, with the resident blocks per multiprocessor in "
        "brackets. `spill B` is ptxas's spill stores per thread, `smem B` the shared memory a "
        "block asks for. `N` is the row-length specialisation Triton compiles (a multiple of 16, "
        "not, or 1); config is block/warps (/rows per program).",
        "",
        "## Summary",
        "",
        "| target | compiled | kzoo can pick | OK | SPILL | FAIL | picked and FAIL | "
        "picked and spilling | of those at N <= 8192 | most registers picked |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for t in targets:
        s = stats[str(t)]
        lines.append(
            f"| {TARGET_NAMES[t]} | {s['compiled']} | {s['pickable']} | {s['ok']} | {s['spill']} "
            f"| {s['fail']} | {s['pickable_fail']} | {s['pickable_spill']} "
            f"| {s['pickable_spill_le_8192']} | {s['max_registers']} |"
        )
    lines += [
        "",
        "### Removed from the choosers' lists (`kzoo/backends/common/norm_configs.py`)",
        "",
    ]
    for t in targets:
        for item in stats[str(t)]["removed"]:
            lines.append(f"- sm_{t}: {item}")
        for item in stats[str(t)]["stale"]:
            lines.append(f"- sm_{t}: stale entry (compiles cleanly now): {item}")
    lines += [
        "",
        "## Triton kernels (torch)",
        "",
        "Every configuration the choosers can return, for any row length; `shape` is the range "
        "of row lengths that picks it. `removed (...)`: in `REMOVED` for that target, with its "
        "verdict there; `not picked (...)`: compiled because another target picks it.",
        "",
    ]
    lines += table(rows, targets, "triton")
    lines += [
        "",
        "## Pallas kernels (JAX)",
        "",
        f"Each form lowered for CUDA at {PALLAS_ROWS} rows and the benchmark grid's hidden sizes, "
        "plus 16383 and 32768; the Triton IR of each `pallas_call` compiled with the triton "
        "wheel (XLA compiles the same IR with its own copy of Triton, so its figures may "
        "differ slightly).",
        "",
    ]
    lines += table(rows, targets, "pallas")
    bench = _bench()
    lines += [
        "",
        "## Roofline: predicted times for the benchmark's GPU grid",
        "",
        "The bytes each pass must move at least (`scripts/bench/layernorm.py`'s "
        "`roofline_bytes`: forward reads x (and the residual) and the parameters and writes y "
        "(and the sum) and the float32 row statistics; the backward reads the normalised input, "
        "dy (and the sum's gradient), the parameters and the statistics and writes dx and the "
        "parameter gradients; parameters float32) over the HBM bandwidth: "
        + ", ".join(f"{c} {bw / 1e12:g} TB/s" for c, bw in bench.HBM_BANDWIDTH.items())
        + ". `scripts/gpu_check.py` prints each measured time against these.",
        "",
    ]
    lines += roofline_table()
    return "\n".join(lines) + "\n"


def _atomic_write(path, text):
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--backends", default="triton,pallas")
    parser.add_argument("--targets", default=",".join(map(str, nc.TARGETS)))
    parser.add_argument("--dtypes", default=",".join(DTYPES))
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--kernels", help="Triton kernel names to compile (default: all)")
    parser.add_argument("--hidden", help="Pallas row lengths (default: the grid, 16383, 32768)")
    parser.add_argument("--jobs", type=int, default=1, help="worker processes (default 1)")
    parser.add_argument("--json", help="write the rows and the summary to this file")
    parser.add_argument("--write-docs", action="store_true", help=f"write {DOCS_PAGE}")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--cases", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    def pick(value, allowed, name, cast=str):
        items = [cast(v) for v in value.split(",") if v]
        bad = [v for v in items if v not in allowed]
        if bad or not items:
            parser.error(f"--{name}: unknown {bad or '(none)'}; choose from {list(allowed)}")
        return tuple(items)

    try:
        args.backends = pick(args.backends, ("triton", "pallas"), "backends")
        args.targets = pick(args.targets, nc.TARGETS, "targets", int)
        args.dtypes = pick(args.dtypes, DTYPES, "dtypes")
        args.variants = pick(args.variants, VARIANTS, "variants")
        args.hidden = tuple(int(h) for h in args.hidden.split(",")) if args.hidden else None
    except ValueError as e:
        parser.error(str(e))
    if args.kernels:
        args.kernels = tuple(args.kernels.split(","))
    return args


def main(argv=None):
    args = parse_args(argv)
    if args.worker:
        return _worker(args)
    try:
        rows = check(
            args.backends,
            args.targets,
            args.dtypes,
            args.variants,
            args.kernels,
            args.hidden or PALLAS_HIDDEN,
            jobs=args.jobs,
        )
    except WorkerError as e:
        print(f"gpu_compile_check: {e}", file=sys.stderr)
        return 3 if e.code == 3 else 1
    stats = summary(rows, args.targets)
    for backend in args.backends:
        print("\n".join(table(rows, args.targets, backend)))
        print()
    for t in args.targets:
        s = stats[str(t)]
        print(
            f"sm_{t}: {s['compiled']} compiled, {s['pickable']} pickable; FAIL {s['fail']} "
            f"({s['pickable_fail']} pickable), SPILL {s['spill']} ({s['pickable_spill']} "
            f"pickable, {s['pickable_spill_le_8192']} at N <= 8192)"
        )
        for item in s["bad"]:
            print(f"  PICKABLE AND BROKEN: {item}")
        for item in s["stale"]:
            print(f"  stale REMOVED entry: {item}")
    if args.json:
        _atomic_write(args.json, json.dumps({"rows": rows, "summary": stats}, indent=1))
    if args.write_docs:
        _atomic_write(DOCS_PAGE, markdown(rows, args.targets, stats))
        print(f"wrote {DOCS_PAGE}")
    return 1 if any(stats[str(t)]["bad"] for t in args.targets) else 0


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        sys.exit(main())
