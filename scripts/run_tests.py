"""Run kzoo's checks: ruff, the import layering, the docs build, and the tests under each backend.

Each backend runs in its own pytest process (keras fixes its backend at import), and the slow
tests in two more; ``--jobs`` of these steps run at once. The run fails if any step fails.
Usage: ``python scripts/run_tests.py [--backends jax,torch] [--no-slow] [--jobs N]``; extra
arguments after ``--`` go to pytest.
"""

import argparse
import glob
import os
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BACKENDS = ("jax", "tensorflow", "torch")


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
    """Run ``(step, cmd, env)`` jobs, ``lanes`` at a time, longest first; return their exit codes.

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
        default=2,
        help="test steps run at once (default 2: most of a step's time is one core's work, "
        "process start-up and compilation, so two steps share two cores well)",
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
        env = dict(os.environ, KERAS_BACKEND=backend)
        report = f"{reports}/{backend}.xml"
        jobs.append(
            (f"tests ({backend})", pytest_cmd(py, report, "--timeout=900", *args.pytest_args), env)
        )
    slow_steps = []
    if not args.no_slow:
        # Slow tests (multi-process, cross-backend round trips) run once, each choosing the
        # backends it needs in its own subprocesses; DETR's are half of them, hence two steps.
        env = dict(os.environ, KERAS_BACKEND="jax")
        for name, stem, paths in (
            ("slow tests (DETR)", "detr-slow", ["tests/models/detr"]),
            ("slow tests (others)", "others-slow", ["tests", "--ignore=tests/models/detr"]),
        ):
            report = f"{reports}/{stem}.xml"
            cmd = pytest_cmd(py, report, "-m", "slow", "--timeout=1500", *paths)
            jobs.append((name, cmd, env))
            slow_steps.append(name)
    # Longest first (measured on CI: jax, tensorflow, the two slow halves, torch).
    order = {
        "tests (jax)": 0,
        "tests (tensorflow)": 1,
        "slow tests (DETR)": 2,
        "slow tests (others)": 3,
    }
    jobs.sort(key=lambda job: order.get(job[0], 4))
    for step, rc in run_parallel(jobs, args.jobs).items():
        results[step] = 0 if (step in slow_steps and rc == 5) else rc  # 5: none collected
    print("\nsummary:")
    for step, rc in results.items():
        print(f"  {step:<20} {'ok' if rc == 0 else 'FAILED'}")
    failed = [s for s, rc in results.items() if rc != 0]
    counts = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
    for path in glob.glob(os.path.join(reports, "*.xml")):
        for suite in ET.parse(path).getroot().iter("testsuite"):
            for key in counts:
                counts[key] += int(suite.get(key, 0))
    bad = counts["failures"] + counts["errors"]
    passed = counts["tests"] - bad - counts["skipped"]
    print(f"tests: {passed} passed, {bad} failed, {counts['skipped']} skipped")
    return 1 if failed or passed == 0 else 0


if __name__ == "__main__":
    sys.exit(main())
