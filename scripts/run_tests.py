"""Run kzoo's checks: ruff, the docs build, and the test suite under jax, tensorflow and torch.

Each backend runs in its own pytest process (keras fixes its backend at import). The run fails
if any step fails. Usage: ``python scripts/run_tests.py [--backends jax,torch] [--fast]``;
extra arguments after ``--`` go to pytest.
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


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--backends", default=",".join(BACKENDS))
    parser.add_argument("--no-lint", action="store_true", help="skip ruff and the docs build")
    parser.add_argument("--no-slow", action="store_true", help="skip the slow-marked tests")
    parser.add_argument("pytest_args", nargs="*")
    args = parser.parse_args()
    py = sys.executable
    results = {}
    reports = tempfile.mkdtemp(prefix="kzoo-tests-")
    if not args.no_lint:
        results["ruff check"] = run("ruff check", [py, "-m", "ruff", "check", "."])
        results["ruff format"] = run("ruff format", [py, "-m", "ruff", "format", "--check", "."])
        results["docs"] = run(
            "docs",
            [py, "-m", "mkdocs", "build", "--strict", "-q", "-d", os.path.join(ROOT, "site")],
        )
    for backend in args.backends.split(","):
        env = dict(os.environ, KERAS_BACKEND=backend)
        results[f"tests ({backend})"] = run(
            f"tests ({backend})",
            [
                py,
                "-m",
                "pytest",
                "-q",
                "-ra",
                "--timeout=900",
                f"--junitxml={reports}/{backend}.xml",
                *args.pytest_args,
            ],
            env=env,
        )
    if not args.no_slow:
        # Slow tests (multi-process, cross-backend round trips) run once, each choosing the
        # backends it needs in its own subprocesses.
        env = dict(os.environ, KERAS_BACKEND="jax")
        rc = run(
            "slow tests",
            [
                py,
                "-m",
                "pytest",
                "-q",
                "-ra",
                "-m",
                "slow",
                "--timeout=1500",
                f"--junitxml={reports}/slow.xml",
            ],
            env=env,
        )
        results["slow tests"] = 0 if rc == 5 else rc  # 5: none collected
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
