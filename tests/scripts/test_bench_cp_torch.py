"""scripts/bench/cp_torch.py at a tiny size: it runs (one process, then 2 torchrun processes)
and its allocator figures show what context parallelism is for - the activations each process
keeps for the backward pass are 1 / CP of one process's blockwise kernel, and far below exact
attention's."""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.mark.slow
@pytest.mark.multiprocess
@pytest.mark.backends("torch")
def test_memory_per_process_scales_with_one_over_cp(tmp_path):
    out = tmp_path / "rows.json"
    done = subprocess.run(
        [
            sys.executable,
            os.path.join(ROOT, "scripts", "bench", "cp_torch.py"),
            "--seq-lens",
            "512",
            "--cp",
            "2",
            "--no-time",
            "--json",
            str(out),
        ],  # fmt: skip
        env=dict(os.environ, PYTHONPATH=ROOT),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    assert "| 512 | 2 | ring |" in done.stdout
    rows = {(r["cp"], r["attention"]): r for r in json.loads(out.read_text())}
    assert set(rows) == {(1, "exact"), (1, "blockwise"), (2, "ring"), (2, "all_to_all")}
    block, exact = rows[(1, "blockwise")], rows[(1, "exact")]
    assert exact["kept"] > 4 * block["kept"]  # the whole score matrix (6x at 512 tokens)
    for name in ("ring", "all_to_all"):
        r = rows[(2, name)]
        # Query, key, value, output and log-sum-exp of half the sequence (ids are a few KiB).
        assert abs(r["kept"] / block["kept"] - 0.5) < 0.01, (name, r, block)
        assert r["peak"] < 0.65 * block["peak"] and r["peak"] < 0.3 * exact["peak"], name
