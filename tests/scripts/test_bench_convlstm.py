"""scripts/bench/convlstm.py: its default mode at a toy size, and --from-json (grid figures
of several runs merged and plotted)."""

import json
import subprocess
import sys

import keras

from tests.scripts.support import ROOT, as_run, env, load

SCRIPT = ROOT / "scripts" / "bench" / "convlstm.py"


def test_the_default_mode_runs_both_layers_in_a_child_process(monkeypatch, capfd):
    backend = keras.backend.backend()
    argv = ["--backends", backend, "--batches", "1", "--repeats", "1", "--no-memory"]
    argv += ["--models", "next", "--batch", "2", "--frames", "2", "--size", "12"]
    argv += ["--filters", "4", "--kernel-sizes", "3"]
    # The script's own part runs here; the benchmark is the child process, as in a run.
    as_run(monkeypatch)
    assert load("bench/convlstm.py").main(argv) == 0
    (row,) = [
        line for line in capfd.readouterr().out.splitlines() if line.startswith(f"| {backend} |")
    ]
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[1] == "next" and float(cells[-1]) < 1e-4  # same numbers from both layers


def _row(backend, name, speedup):
    return {"backend": backend, "name": name, "speedup": speedup}


def test_a_later_run_replaces_a_point_and_points_keep_the_grid_order(tmp_path):
    first, second = tmp_path / "a.json", tmp_path / "b.json"
    first.write_text(
        json.dumps([_row("torch", "mnist-like", 0.9), _row("torch", "tiny-1layer", 2)])
    )
    second.write_text(json.dumps([_row("torch", "mnist-like", 1.1), _row("jax", "k1-64f", None)]))
    rows = load("bench/convlstm.py").merge_grid_json([str(first), str(second)])
    assert [(r["name"], r["speedup"]) for r in rows] == [("tiny-1layer", 2), ("mnist-like", 1.1)]


def test_the_command_writes_the_png(tmp_path):
    runs = tmp_path / "run.json"
    runs.write_text(json.dumps([_row("torch", "mnist-like", 1.1), _row("jax", "mnist-like", 15)]))
    out = tmp_path / "grid.png"
    cmd = [sys.executable, str(SCRIPT)]
    cmd += ["--from-json", str(runs), "--plot", str(out)]
    result = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env(), timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
