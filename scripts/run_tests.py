"""Run kzoo's checks: ruff, the import layering, the docs build, and the tests under each backend.

Each backend runs in its own pytest processes (keras fixes its backend at import; two halves per
backend), and the slow tests in four more; ``--jobs`` of these steps run at once. The run fails if any step fails.
Usage: ``python scripts/run_tests.py [--backends jax,torch] [--no-slow] [--jobs N]``; extra
arguments after ``--`` go to pytest.
"""

import argparse
import glob
import os
import shutil
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BACKENDS = ("jax", "tensorflow", "torch")
# A backend's suite in two pytest processes of similar length.
PARTS = (
    ("models", ["tests/models", "tests/export"]),
    ("rest", ["tests", "--ignore=tests/models", "--ignore=tests/export"]),
)
SLOW_PARTS = (
    ("DETR training", ["tests/models/detr/training"]),
    ("DETR model", ["tests/models/detr", "--ignore=tests/models/detr/training"]),
    ("CLI", ["tests/cli"]),
    ("others", ["tests", "--ignore=tests/models/detr", "--ignore=tests/cli"]),
)
# The order steps start in: the three longest first, then the rest so that three steps run until
# the last minute (from each step's length in a clean-clone run on 2 cores, 2026-12-08, and a
# simulation of three lanes sharing two cores). A core is idle only once two lanes are empty.
START_ORDER = (
    "tests (tensorflow, models)",
    "tests (jax, models)",
    "slow tests (others)",
    "tests (torch, rest)",
    "tests (torch, models)",
    "tests (tensorflow, rest)",
    "tests (jax, rest)",
    "slow tests (DETR training)",
    "slow tests (CLI)",
    "slow tests (DETR model)",
)


def run(step, cmd, env=None):
    print(f"\n=== {step}: {' '.join(cmd)}", flush=True)
    start = time.time()
    rc = subprocess.call(cmd, cwd=ROOT, env=env)
    print(
        f"=== {step}: {'ok' if rc == 0 else f'FAILED (exit {rc})'} in {time.time() - start:.0f}s",
        flush=True,
    )
    return rc


def run_parallel(jobs, lanes):
    """Run ``(step, cmd, env)`` jobs, ``lanes`` at a time, in order; return their exit codes.

    Each job's output goes to a file and is printed whole when the job ends, so the log reads
    as if the steps had run one after another.
    """
    pending = list(jobs)
    running = {}
    results = {}
    started = time.time()
    while pending or running:
        while pending and len(running) < lanes:
            step, cmd, env = pending.pop(0)
            log = tempfile.TemporaryFile(mode="w+")
            print(f"=== {step}: started ({' '.join(cmd)})", flush=True)
            proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
            running[proc] = (step, log, time.time())
        time.sleep(0.5)
        for proc in [p for p in running if p.poll() is not None]:
            step, log, t0 = running.pop(proc)
            log.seek(0)
            print(f"\n=== {step}: output", flush=True)
            sys.stdout.write(log.read())
            log.close()
            rc = proc.returncode
            results[step] = rc
            print(
                f"=== {step}: {'ok' if rc == 0 else f'FAILED (exit {rc})'} in "
                f"{time.time() - t0:.0f}s (run at {t0 - started:.0f}s)",
                flush=True,
            )
    return results


def step_environment(jobs, **overrides):
    """This process's environment for a test step, with the frameworks' threads per operation
    capped at the step's share of the cores.

    When the steps outnumber the cores, a framework's idle pool threads spin waiting for work
    the other steps are using the cores for. One thread an operation cut the CPU time of three
    concurrent DETR test runs (one per backend) by 5 % and their wall time by 10 % on 2 cores
    (2026-12-07); across whole clean-clone runs the gain was within the runs' spread. A
    variable the caller already set is kept.
    """
    env = dict(os.environ, **overrides)
    threads = max(1, (os.cpu_count() or 1) // jobs)
    env.setdefault("OMP_NUM_THREADS", str(threads))  # torch
    env.setdefault("TF_NUM_INTRAOP_THREADS", str(threads))
    if threads == 1 and "xla_cpu_multi_thread_eigen" not in env.get("XLA_FLAGS", ""):
        env["XLA_FLAGS"] = (
            env.get("XLA_FLAGS", "") + " --xla_cpu_multi_thread_eigen=false"
        ).strip()
    return env


def pytest_cmd(py, report, *args):
    # Each step has its own temporary directory: concurrent sessions sharing pytest's default
    # one would prune each other's.
    basetemp = os.path.splitext(report)[0] + "-tmp"
    return [
        py,
        "-m",
        "pytest",
        "-q",
        "-ra",
        f"--junitxml={report}",
        f"--basetemp={basetemp}",
        *args,
    ]


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--backends", default=",".join(BACKENDS))
    parser.add_argument("--no-lint", action="store_true", help="skip ruff and the docs build")
    parser.add_argument("--no-slow", action="store_true", help="skip the slow-marked tests")
    parser.add_argument(
        "--jobs",
        type=int,
        default=3,
        help="test steps run at once (default 3: on 2 cores, two steps left half the CPU idle, "
        "since much of a step's time is one thread's work or waiting on its subprocesses)",
    )
    parser.add_argument("pytest_args", nargs="*")
    args = parser.parse_args()
    if args.jobs < 1:
        parser.error(f"--jobs must be >= 1; got {args.jobs}")
    py = sys.executable
    results = {}
    reports = tempfile.mkdtemp(prefix="kzoo-tests-")
    if not args.no_lint:
        # --no-cache: a cache written before a ruff upgrade or a settings change can pass files
        # a fresh run (CI's clean clone) fails.
        results["ruff check"] = run("ruff check", [py, "-m", "ruff", "check", "--no-cache", "."])
        results["ruff format"] = run("ruff format", [py, "-m", "ruff", "format", "--check", "."])
        # The declared layering (pyproject's [tool.importlinter]; docs/architecture.md).
        lint_imports = os.path.join(os.path.dirname(py), "lint-imports")
        results["import layers"] = run("import layers", [lint_imports, "--no-cache"])
        results["docs"] = run(
            "docs",
            [py, "-m", "mkdocs", "build", "--strict", "-q", "-d", os.path.join(ROOT, "site")],
        )
    jobs = []
    for backend in args.backends.split(","):
        env = step_environment(args.jobs, KERAS_BACKEND=backend)
        # Each backend's suite in two halves, so that the lanes stay full until the end (one
        # process when pytest arguments name what to run).
        for part, paths in PARTS if not args.pytest_args else (("all", []),):
            report = f"{reports}/{backend}-{part}.xml"
            cmd = pytest_cmd(py, report, "--timeout=900", *paths, *args.pytest_args)
            jobs.append((f"tests ({backend}, {part})", cmd, env))
    slow_steps = []
    if not args.no_slow:
        # Slow tests (multi-process, cross-backend round trips, full-size models) run once,
        # each choosing the backends it needs in its own subprocesses.
        env = step_environment(args.jobs, KERAS_BACKEND="jax")
        for part, paths in SLOW_PARTS:
            report = f"{reports}/slow-{part}.xml"
            cmd = pytest_cmd(py, report, "-m", "slow", "--timeout=1500", *paths)
            jobs.append((f"slow tests ({part})", cmd, env))
            slow_steps.append(f"slow tests ({part})")
    order = {name: rank for rank, name in enumerate(START_ORDER)}
    jobs.sort(key=lambda job: order.get(job[0], len(order)))
    for step, rc in run_parallel(jobs, args.jobs).items():
        results[step] = 0 if (step in slow_steps and rc == 5) else rc  # 5: none collected
    print("\nsummary:")
    for step, rc in results.items():
        print(f"  {step:<28} {'ok' if rc == 0 else 'FAILED'}")
    failed = [s for s, rc in results.items() if rc != 0]
    totals = {}
    for path in sorted(glob.glob(os.path.join(reports, "*.xml"))):
        name = os.path.basename(path)
        group = "slow" if name.startswith("slow-") else name.split("-")[0]
        counts = totals.setdefault(group, {"tests": 0, "failures": 0, "errors": 0, "skipped": 0})
        try:
            suites = list(ET.parse(path).getroot().iter("testsuite"))
        except ET.ParseError:
            # A step that died mid-write (killed, a full disk) leaves a cut report.
            print(f"  {name}: unreadable report (the step did not finish)")
            counts["errors"] += 1
            continue
        for suite in suites:
            for key in counts:
                counts[key] += int(suite.get(key, 0))
    passed = 0
    for group, counts in totals.items():
        bad = counts["failures"] + counts["errors"]
        ok = counts["tests"] - bad - counts["skipped"]
        passed += ok
        print(f"  {group}: {ok} passed, {bad} failed, {counts['skipped']} skipped")
    bad = sum(c["failures"] + c["errors"] for c in totals.values())
    skipped = sum(c["skipped"] for c in totals.values())
    print(f"tests: {passed} passed, {bad} failed, {skipped} skipped")
    code = 1 if failed or bad or passed == 0 else 0
    if code == 0:
        # The steps' temporary folders (presets, exports, checkpoints) take gigabytes a run.
        shutil.rmtree(reports, ignore_errors=True)
    else:
        print(f"reports and the tests' temporary files are kept in {reports}")
    return code


if __name__ == "__main__":
    sys.exit(main())
