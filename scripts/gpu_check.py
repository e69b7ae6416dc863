"""Every GPU check of kzoo in one command: norm kernels, norm benchmarks, ConvLSTM and DETR timings.

On a machine with an NVIDIA GPU (and the CUDA builds of torch and JAX, see
docs/installation.md), ``python scripts/gpu_check.py`` runs, within one time budget (8 minutes
by default):

- ``kernels-triton`` / ``kernels-pallas``: the compiled Triton (torch) and Pallas (JAX) norm
  kernels against their float64 references and for bitwise-reproducible gradients: the kernel
  tests and the norm layer tests with ``KZOO_TEST_GPU=1`` (so nothing runs in an interpreter),
  in a few concurrent pytest shards;
- ``bench-torch`` / ``bench-jax``: ``scripts/bench/layernorm.py --grid gpu-check`` for
  LayerNorm, RMSNorm and the fused residual variants, with each target's verdict (forward at
  >= 85% of the copy bandwidth measured in the same run for hidden >= 4096 in bfloat16;
  forward+backward >= 1.3x torch's functions or keras's unfused ops);
- ``convlstm``: kzoo's ConvLSTM2D against keras's in the color frame predictor (torch, one
  configuration, ``scripts/bench/convlstm.py``);
- ``detr``: DETR R50 inference against transformers' DetrForObjectDetection on the GPU (torch,
  one 480x640 image, ``scripts/bench/detr.py``).

Each section runs in its own subprocess (its own process group) with its own timeout, cut to
what is left of the budget, so a hang or a crash loses only that section; what a section wrote
before it was stopped (test results so far, benchmark shapes done) is still reported. Every
figure goes to ``gpu_check.json`` and the tables, ready for docs/benchmarks.md, to
``gpu_check.md``, in ``--out`` (a new time-stamped folder under ``out/gpu_check/`` by default;
an existing report is replaced only with ``--overwrite``); the sections' logs go to ``logs/``.

For every benchmark shape the measured time is also set against its roofline: the bytes the
pass must move (``roofline_bytes`` of ``scripts/bench/layernorm.py``) over the card's HBM
bandwidth (H100 3.35, H200 4.8, B200 8 TB/s), printed as the section ends and tabled in
``gpu_check.md`` ("% of roofline" = predicted time / measured time). ``docs/gpu_kernels.md``
has the predictions for the whole benchmark grid.

``--dry-run`` prints the plan and the budget and runs nothing. ``--cpu`` runs the same plan on a
machine without a GPU at toy sizes, through the Triton and Pallas interpreters: a check of this
script, not of the GPU. Otherwise a machine where the NVIDIA driver reports no GPU is refused
before anything runs. The script installs nothing. Exit status: 0 when every section passed,
1 otherwise, 2 for a bad command line, 3 when the machine has no NVIDIA GPU.
"""

import argparse
import dataclasses
import datetime
import glob
import importlib.util
import json
import os
import platform
import re
import signal
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = os.path.join(ROOT, "scripts")
DEFAULT_BUDGET = 480.0
# A section is not started with less than this left of the budget.
MIN_SECTION_S = 20.0
SHARD_ENV = "KZOO_GPU_CHECK_SHARD"


@dataclasses.dataclass(frozen=True)
class Section:
    name: str
    title: str
    backend: str
    timeout: float
    runs: str


SECTIONS = (
    Section(
        "kernels-triton",
        "Triton norm kernels (compiled) against float64",
        "torch",
        90,
        "pytest tests/backends/test_layer_norm_triton.py + norm layer tests, 4 shards",
    ),
    Section(
        "kernels-pallas",
        "Pallas norm kernels (compiled) against float64",
        "jax",
        110,
        "pytest tests/backends/test_layer_norm_pallas.py + norm layer tests, 4 shards",
    ),
    Section(
        "bench-torch",
        "LayerNorm, RMSNorm and fused add+norm: torch",
        "torch",
        70,
        "scripts/bench/layernorm.py --grid gpu-check (bf16, 16384 rows, hidden 1024/4096/8192)",
    ),
    Section(
        "bench-jax",
        "LayerNorm, RMSNorm and fused add+norm: JAX",
        "jax",
        100,
        "scripts/bench/layernorm.py --grid gpu-check (bf16, 16384 rows, hidden 1024/4096/8192)",
    ),
    Section(
        "convlstm",
        "ConvLSTM2D: kzoo against keras",
        "torch",
        50,
        "scripts/bench/convlstm.py: color predictor, batch 4, 6 frames of 32x32, filters 32,32",
    ),
    Section(
        "detr",
        "DETR R50 inference: kzoo against transformers",
        "torch",
        60,
        "scripts/bench/detr.py: one 480x640 image, 2 warm-up + 5 timed rounds",
    ),
)
BY_NAME = {s.name: s for s in SECTIONS}
KERNEL_TESTS = {
    "torch": "tests/backends/test_layer_norm_triton.py",
    "jax": "tests/backends/test_layer_norm_pallas.py",
}
LAYER_TESTS = ("tests/layers/test_layer_normalization.py", "tests/layers/test_rms_normalization.py")


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        # One line, as kzoo's command line reports a user's mistake.
        print(f"gpu_check: error: {message}", file=sys.stderr)
        raise SystemExit(2)


def parse_args(argv=None):
    parser = _Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", help="report folder (default: out/gpu_check/<date-time>)")
    parser.add_argument("--overwrite", action="store_true", help="replace a report in --out")
    parser.add_argument(
        "--budget", type=float, default=DEFAULT_BUDGET, help="total seconds for all sections"
    )
    parser.add_argument(
        "--sections",
        default=",".join(s.name for s in SECTIONS),
        help="comma-separated sections to run, in this order",
    )
    parser.add_argument(
        "--timeout",
        action="append",
        default=[],
        metavar="SECTION=SECONDS",
        help="a section's own time limit (repeatable)",
    )
    parser.add_argument("--dry-run", action="store_true", help="print the plan; run nothing")
    parser.add_argument(
        "--cpu", action="store_true", help="toy sizes through the interpreters, no GPU needed"
    )
    parser.add_argument("--run-section", help=argparse.SUPPRESS)
    parser.add_argument("--workdir", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if not args.budget > 0:
        parser.error(f"--budget must be a positive number of seconds; got {args.budget}")
    names = [n for n in args.sections.split(",") if n]
    unknown = [n for n in names if n not in BY_NAME]
    if unknown or not names:
        parser.error(
            f"--sections: unknown {', '.join(unknown) or '(none given)'}; "
            f"choose from {', '.join(BY_NAME)}"
        )
    args.sections = names
    timeouts = {}
    for item in args.timeout:
        name, sep, value = item.partition("=")
        try:
            seconds = float(value)
        except ValueError:
            seconds = -1.0
        if not sep or name not in BY_NAME or not seconds > 0:
            parser.error(f"--timeout expects SECTION=SECONDS with a known section; got {item!r}")
        timeouts[name] = seconds
    args.timeouts = timeouts
    return args


def plan(args):
    """``[(section, timeout)]`` in run order: each section's limit, cut to the budget."""
    return [
        (BY_NAME[n], min(args.timeouts.get(n, BY_NAME[n].timeout), args.budget))
        for n in args.sections
    ]


def print_plan(args, out):
    print(f"gpu_check plan ({'CPU toy sizes, interpreters' if args.cpu else 'GPU'}):")
    print(f"  {'section':<16} {'limit':>7}  runs")
    for section, limit in plan(args):
        print(f"  {section.name:<16} {limit:>6.0f}s  {section.runs} [{section.backend}]")
    total = sum(limit for _, limit in plan(args))
    print(
        f"total time budget {args.budget:.0f} s (sections' limits add up to {total:.0f} s; each "
        f"is cut to what is left, none starts with under {MIN_SECTION_S:.0f} s)"
    )
    print(f"report: {os.path.join(out, 'gpu_check.json')} and gpu_check.md")


# ---------------------------------------------------------------------------------------------
# Inside a section's subprocess.


def _probe(backend):
    """Exit with a clear message unless ``backend`` sees an NVIDIA GPU; print the device."""
    if backend == "torch":
        import torch

        if not torch.cuda.is_available():
            print("gpu_check: no CUDA device visible to torch (a CUDA build of torch is needed)")
            raise SystemExit(3)
        print(f"gpu_check device: {torch.cuda.get_device_name(0)}", flush=True)
    else:
        import jax

        if jax.default_backend() != "gpu":
            print(f"gpu_check: JAX runs on {jax.default_backend()}, not a GPU (needs jax[cuda])")
            raise SystemExit(3)
        print(f"gpu_check device: {jax.devices()[0].device_kind}", flush=True)


def _section_env(backend, cpu):
    env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="2")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (ROOT, SCRIPTS, env.get("PYTHONPATH")) if p)
    # Shards and HF's torch share the GPU with JAX: JAX must not reserve most of its memory.
    env["XLA_PYTHON_CLIENT_PREALLOCATE"] = "false"
    if not cpu:
        env["KZOO_TEST_GPU"] = "1"
    return env


def _run_pytest_shards(section, workdir, cpu):
    files = [KERNEL_TESTS[section.backend], *LAYER_TESTS]
    shards = 1 if cpu else 4
    base = [
        sys.executable,
        "-m",
        "pytest",
        "-v",
        "-rfE",
        "-p",
        "no:cacheprovider",
        "-p",
        "gpu_check",
    ]
    base += ["-m", "not slow", "--timeout", "600"]
    if cpu:
        # Through the interpreters: the deterministic-gradient tests, a few seconds each.
        base += ["-k", "deterministic"]
    procs = []
    for k in range(shards):
        env = _section_env(section.backend, cpu)
        env[SHARD_ENV] = f"{k}/{shards}"
        log = open(os.path.join(workdir, f"shard{k}.log"), "w")
        procs.append(
            (
                subprocess.Popen(
                    base + files, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT
                ),
                log,
            )
        )
    codes = []
    for proc, log in procs:
        codes.append(proc.wait())
        log.close()
    return max(codes)


def pytest_collection_modifyitems(config, items):
    """As a pytest plugin (``-p gpu_check``): keep this shard's share of the tests."""
    shard = os.environ.get(SHARD_ENV)
    if not shard:
        return
    k, n = (int(v) for v in shard.split("/"))
    keep = [item for i, item in enumerate(items) if i % n == k]
    config.hook.pytest_deselected(items=[item for i, item in enumerate(items) if i % n != k])
    items[:] = keep


def _section_command(section, workdir, cpu):
    """The command a benchmark section runs (it replaces the section's process)."""
    if section.name.startswith("bench-"):
        script = os.path.join("bench", "layernorm.py")
        sizes = "--grid gpu-check"
        if cpu:
            sizes = "--rows 256 --hidden 64 --dtypes float32 --variants layer --rounds 2"
            sizes += " --min-time 0.001"
        sizes += f" --no-ops --no-plot --worker-out {os.path.join(workdir, 'results.json')}"
    elif section.name == "convlstm":
        script = os.path.join("bench", "convlstm.py")
        sizes = "--child --models color --batch 4 --batches 4 --frames 6 --size 32"
        sizes += " --filters 32,32 --repeats 3"
        if cpu:
            sizes = "--child --models color --batch 2 --batches 2 --frames 3 --size 16"
            sizes += " --filters 4,4 --repeats 1"
    else:
        script = os.path.join("bench", "detr.py")
        sizes = "--child --rounds 5 --warmup 2"
        if cpu:
            sizes = "--child --rounds 1 --warmup 0 --height 64 --width 64"
    return [sys.executable, os.path.join(SCRIPTS, script), *sizes.split()]


def run_section(name, workdir, cpu):
    """The body of a section's subprocess: check the device, then do the section's work."""
    section = BY_NAME[name]
    os.makedirs(workdir, exist_ok=True)
    if not cpu:
        _probe(section.backend)
    if name.startswith("kernels-"):
        return _run_pytest_shards(section, workdir, cpu)
    cmd = _section_command(section, workdir, cpu)
    sys.stdout.flush()
    os.execve(cmd[0], cmd, _section_env(section.backend, cpu))


# ---------------------------------------------------------------------------------------------
# In the parent: run the sections, collect their figures (also from a section cut short).

_PYTEST_LINE = re.compile(r"^(\S+::\S+) (PASSED|FAILED|ERROR|SKIPPED|XFAIL|XPASS)\b", re.M)


def _bench_module():
    spec = importlib.util.spec_from_file_location(
        "bench_layernorm", os.path.join(SCRIPTS, "bench", "layernorm.py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def nvidia_gpus():
    """The NVIDIA GPUs the driver reports (none without the driver): its entries under
    ``/proc/driver/nvidia/gpus``, else the ``GPU ...`` lines of ``nvidia-smi -L``."""
    found = sorted(glob.glob("/proc/driver/nvidia/gpus/*"))
    if found:
        return found
    try:
        listed = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return []
    return [line for line in listed.stdout.splitlines() if line.startswith("GPU ")]


def collect(name, workdir, log_text):
    """The figures a section left in ``workdir`` and its log (partial when it was stopped)."""
    device = re.search(r"^gpu_check device: (.+)$", log_text, re.M)
    figures = {"device": device.group(1).strip() if device else None}
    if name.startswith("kernels-"):
        outcomes = {}
        for file in sorted(os.listdir(workdir)):
            if file.startswith("shard") and file.endswith(".log"):
                with open(os.path.join(workdir, file)) as f:
                    for test, outcome in _PYTEST_LINE.findall(f.read()):
                        outcomes[test] = outcome
        counts = {}
        for outcome in outcomes.values():
            counts[outcome.lower()] = counts.get(outcome.lower(), 0) + 1
        figures.update(
            tests=len(outcomes),
            counts=counts,
            failed=sorted(t for t, o in outcomes.items() if o in ("FAILED", "ERROR")),
        )
    elif name.startswith("bench-"):
        path = os.path.join(workdir, "results.json")
        results = []
        if os.path.exists(path):
            with open(path) as f:
                results = json.load(f)
        bench = _bench_module()
        table, summary = bench._summarise(results) if results else ([], [])
        figures.update(
            results=results,
            verdicts=bench.verdicts(results),
            table=table,
            summary=summary,
            roofline=bench.roofline(results, figures["device"]),
        )
    elif name == "convlstm":
        figures["rows"] = [
            json.loads(line) for line in log_text.splitlines() if line.startswith("{")
        ]
    else:
        figures["rows"] = [
            json.loads(line[len("RESULT ") :])
            for line in log_text.splitlines()
            if line.startswith("RESULT ")
        ]
    return figures


def _run_one(section, limit, out, cpu):
    """Run one section in its own process group; ``(status, seconds, figures, error)``."""
    workdir = os.path.join(out, "logs", section.name)
    os.makedirs(workdir, exist_ok=True)
    log_path = os.path.join(out, "logs", f"{section.name}.log")
    cmd = [sys.executable, os.path.abspath(__file__), "--run-section", section.name]
    cmd += ["--workdir", workdir] + (["--cpu"] if cpu else [])
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join(p for p in (ROOT, os.environ.get("PYTHONPATH")) if p)
    )
    start = time.monotonic()
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            rc = proc.wait(timeout=limit)
            status = "ok" if rc == 0 else "failed"
        except subprocess.TimeoutExpired:
            # The whole group: pytest shards and benchmark workers go with their section.
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            rc, status = None, "timeout"
    seconds = time.monotonic() - start
    with open(log_path, errors="replace") as f:
        log_text = f.read()
    error = None
    if status == "failed":
        error = f"exit {rc}: " + (log_text.strip().splitlines() or ["(no output)"])[-1][-300:]
    elif status == "timeout":
        error = f"stopped after {limit:.0f} s (its time limit)"
    try:
        figures = collect(section.name, workdir, log_text)
    except Exception as e:  # noqa: BLE001 - a bad figure must not lose the other sections
        figures = {}
        error = (error + "; " if error else "") + f"collecting figures: {type(e).__name__}: {e}"
        status = "failed"
    return status, seconds, figures, error


def run(args, out):
    started = datetime.datetime.now().astimezone()
    t0 = time.monotonic()
    sections = []
    for section, limit in plan(args):
        left = args.budget - (time.monotonic() - t0)
        entry = {"name": section.name, "title": section.title, "backend": section.backend}
        if left < min(MIN_SECTION_S, limit):
            entry.update(status="skipped", seconds=0.0, figures={}, error="time budget spent")
        else:
            limit = min(limit, left)
            print(f"gpu_check: {section.name} (limit {limit:.0f} s) ...", flush=True)
            status, seconds, figures, error = _run_one(section, limit, out, args.cpu)
            entry.update(status=status, seconds=round(seconds, 1), limit_s=round(limit, 1))
            entry.update(figures=figures, error=error)
            print(
                f"gpu_check: {section.name}: {status} in {seconds:.0f} s"
                + (f" ({error})" if error else ""),
                flush=True,
            )
            for line in roofline_lines(figures.get("roofline") or []):
                print(f"gpu_check: {section.name}: {line}", flush=True)
        sections.append(entry)
    device = next(
        (s["figures"].get("device") for s in sections if s["figures"].get("device")), None
    )
    report = {
        "started": started.isoformat(timespec="seconds"),
        "host": platform.node(),
        "device": device or ("CPU (--cpu: interpreters, toy sizes)" if args.cpu else None),
        "mode": "cpu" if args.cpu else "gpu",
        "budget_s": args.budget,
        "elapsed_s": round(time.monotonic() - t0, 1),
        "sections": sections,
    }
    write_report(report, out, overwrite=True)
    return report


# ---------------------------------------------------------------------------------------------
# The report.


def _atomic_write(path, text):
    # kzoo.utils.files.atomic_file would import keras (and a backend) into this orchestrating
    # process; the same rename-into-place, without it.
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def roofline_lines(rows, impls=("kzoo",)):
    """One line per measured shape: measured over predicted time, as % of the roofline."""
    return [
        f"roofline {r['impl']} {r['variant']} {r['dtype']} {r['rows']}x{r['hidden']} "
        f"{r['mode']}: {r['measured_ms']:.4f} ms measured / {r['predicted_ms']:.4f} ms "
        f"predicted on {r['card']} = {r['of_roofline']:.0%} of roofline"
        for r in rows
        if r["impl"] in impls
    ]


def markdown(report):
    """The report as Markdown tables, ready to paste into docs/benchmarks.md."""
    lines = [
        f"# GPU check, {report['started']}",
        "",
        f"Device: {report.get('device') or 'unknown'}; host {report['host']}; "
        f"{report['elapsed_s']:.0f} s of a {report['budget_s']:.0f} s budget "
        "(`python scripts/gpu_check.py`).",
        "",
        "| section | status | seconds | note |",
        "| --- | --- | ---: | --- |",
    ]
    for s in report["sections"]:
        lines.append(
            f"| {s['name']} | {s['status']} | {s['seconds']:.0f} | {s.get('error') or ''} |"
        )
    for s in report["sections"]:
        fig = s.get("figures") or {}
        lines += ["", f"## {s['title']} ({s['status']})", ""]
        if s["name"].startswith("kernels-"):
            counts = fig.get("counts", {})
            lines += [
                "| tests run | passed | failed | errors | skipped |",
                "| ---: | ---: | ---: | ---: | ---: |",
                f"| {fig.get('tests', 0)} | {counts.get('passed', 0)} | {counts.get('failed', 0)} "
                f"| {counts.get('error', 0)} | {counts.get('skipped', 0)} |",
            ]
            lines += [f"- failed: `{t}`" for t in fig.get("failed", [])]
        elif s["name"].startswith("bench-"):
            lines += fig.get("table") or ["(no figures)"]
            verdicts = fig.get("verdicts") or []
            if verdicts:
                lines += [
                    "",
                    "| variant | dtype | rows x hidden | mode | target | value | verdict |",
                    "| --- | --- | --- | --- | --- | ---: | --- |",
                ]
                for v in verdicts:
                    lines.append(
                        f"| {v['variant']} | {v['dtype']} | {v['rows']}x{v['hidden']} | {v['mode']} "
                        f"| {v['target']} | {v['value']:.3f} | {'meets' if v['met'] else 'misses'} |"
                    )
            roof = fig.get("roofline") or []
            if roof:
                lines += [
                    "",
                    f"Against the roofline ({roof[0]['card']} HBM bandwidth; predicted time = "
                    "bytes that must move / bandwidth):",
                    "",
                    "| variant | dtype | rows x hidden | mode | impl | measured ms | predicted ms "
                    "| % of roofline |",
                    "| --- | --- | --- | --- | --- | ---: | ---: | ---: |",
                ]
                for r in roof:
                    lines.append(
                        f"| {r['variant']} | {r['dtype']} | {r['rows']}x{r['hidden']} "
                        f"| {r['mode']} | {r['impl']} | {r['measured_ms']:.4f} "
                        f"| {r['predicted_ms']:.4f} | {r['of_roofline']:.0%} |"
                    )
        elif s["name"] == "convlstm":
            lines += [
                "| backend | model | train step kzoo (s) | keras (s) | speedup | predict speedup | max abs diff |",
                "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
            ]
            for r in fig.get("rows", []):
                f, p = r["fit"], r["predict"]
                lines.append(
                    f"| {r['backend']} | {r['model']} | {f['kzoo_s']:.4f} | {f['keras_s']:.4f} "
                    f"| {f['speedup']:.2f}x | {p['speedup']:.2f}x | {r['max_diff']:.1e} |"
                )
        else:
            lines += [
                "| backend | kzoo (s) | HF (s) | kzoo / HF | HF device | first call (s) |",
                "| --- | ---: | ---: | ---: | --- | ---: |",
            ]
            for r in fig.get("rows", []):
                lines.append(
                    f"| {r['backend']} | {r['kzoo_median_s']:.4f} | {r['hf_median_s']:.4f} "
                    f"| {r['ratio_median']:.2f}x | {r.get('hf_device', '?')} "
                    f"| {r['kzoo_first_call_s']:.1f} |"
                )
    return "\n".join(lines) + "\n"


def write_report(report, out, overwrite=False):
    """Write ``gpu_check.json`` and ``gpu_check.md`` in ``out`` (never over a report unasked)."""
    os.makedirs(out, exist_ok=True)
    json_path = os.path.join(out, "gpu_check.json")
    if os.path.exists(json_path) and not overwrite:
        raise FileExistsError(f"{json_path} exists; pass --overwrite to replace it")
    _atomic_write(json_path, json.dumps(report, indent=1) + "\n")
    _atomic_write(os.path.join(out, "gpu_check.md"), markdown(report))
    return json_path


def main(argv=None):
    args = parse_args(argv)
    if args.run_section:
        return run_section(args.run_section, args.workdir, args.cpu)
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    out = os.path.abspath(args.out or os.path.join(ROOT, "out", "gpu_check", stamp))
    if args.dry_run:
        print_plan(args, out)
        return 0
    if os.path.exists(os.path.join(out, "gpu_check.json")) and not args.overwrite:
        print(
            f"gpu_check: error: {out} already holds a report; pass --overwrite to replace it",
            file=sys.stderr,
        )
        return 2
    if not args.cpu and not nvidia_gpus():
        print(
            "gpu_check: error: no NVIDIA GPU on this machine (no /proc/driver/nvidia/gpus entry "
            "and `nvidia-smi -L` lists none); nothing was run. --cpu runs the same sections at "
            "toy sizes through the interpreters, --dry-run prints the plan.",
            file=sys.stderr,
        )
        return 3
    report = run(args, out)
    print(f"gpu_check: wrote {os.path.join(out, 'gpu_check.json')} and gpu_check.md")
    return 0 if all(s["status"] == "ok" for s in report["sections"]) else 1


if __name__ == "__main__":
    sys.exit(main())
