"""scripts/gpu_check.py on the CPU: the plan, the command line, the report, failing sections.

What needs a GPU (the compiled kernels, the timings) is not run here; ``--cpu`` runs the same
sections at toy sizes through the interpreters, which checks the orchestration for real: real
subprocesses, real timeouts, real files.
"""

import json
import os
import pathlib
import subprocess
import sys

import pytest

from tests.scripts.support import load

# The script runs its sections in subprocesses of their own backend: one CI run is enough.
pytestmark = pytest.mark.backends("torch")
ROOT = pathlib.Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "gpu_check.py"


@pytest.fixture(scope="module")
def gpu_check():
    return load("gpu_check.py")


def _run(*args, timeout=300):
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "KZOO_TEST_GPU")}
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        env=env,
    )


def test_dry_run_prints_the_plan_and_budget_and_writes_nothing(tmp_path):
    out = tmp_path / "report"
    result = _run("--dry-run", "--out", str(out))
    assert result.returncode == 0, result.stderr
    text = result.stdout
    for name in (
        "kernels-triton",
        "kernels-pallas",
        "bench-torch",
        "bench-jax",
        "convlstm",
        "detr",
    ):
        assert name in text
    assert "total time budget 480 s" in text
    assert not out.exists()
    result = _run("--dry-run", "--budget", "100", "--sections", "detr,bench-torch")
    lines = [line.split() for line in result.stdout.splitlines() if line.startswith("  ")]
    # In the order asked, each limit cut to the budget (detr's own is 60 s, bench-torch's 70 s).
    assert [(w[0], w[1]) for w in lines[1:]] == [("detr", "60s"), ("bench-torch", "70s")]
    result = _run(
        "--dry-run", "--budget", "50", "--timeout", "detr=5", "--sections", "detr,convlstm"
    )
    assert [line.split()[1] for line in result.stdout.splitlines()[2:4]] == ["5s", "50s"]


@pytest.mark.parametrize(
    "args, match",
    [
        (["--budget", "0"], "--budget must be a positive"),
        (["--budget", "nan"], "--budget must be a positive"),
        (["--sections", "kernels-triton,nope"], "--sections: unknown nope"),
        (["--sections", ""], "--sections: unknown"),
        (["--timeout", "detr"], "--timeout expects SECTION=SECONDS"),
        (["--timeout", "detr=-3"], "--timeout expects SECTION=SECONDS"),
        (["--timeout", "bogus=10"], "--timeout expects SECTION=SECONDS"),
        (["--frobnicate"], "unrecognized arguments"),
    ],
)
def test_bad_command_lines_are_one_line_errors(gpu_check, capsys, args, match):
    with pytest.raises(SystemExit) as exc:
        gpu_check.main([*args, "--dry-run"])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("gpu_check: error:") and match in err[0]


def _bench_rows(**over):
    row = {
        "backend": "torch",
        "platform": "gpu",
        "variant": "layer",
        "dtype": "bfloat16",
        "rows": 16384,
        "hidden": 4096,
        "mode": "fwd",
        "kzoo_over_keras": 0.5,
        "op_over_keras_op": None,
    }
    return {**row, **over}


def test_verdicts_on_given_numbers():
    bench = load("bench/layernorm.py")
    results = [
        # GPU forward at 3.8 of 4.2 TB/s copy: 90% meets; the RMS variant at 80% misses.
        _bench_rows(impl="kzoo", ms=1.0, gbps=3800.0),
        _bench_rows(impl="copy", ms=0.9, gbps=4200.0),
        _bench_rows(variant="rms", impl="kzoo", ms=1.0, gbps=3360.0),
        _bench_rows(variant="rms", impl="copy", ms=0.9, gbps=4200.0),
        # Forward+backward: 1.4x torch meets; on JAX the baseline is keras (1.2x misses).
        _bench_rows(mode="fwd+bwd", impl="kzoo", ms=1.0, gbps=1.0),
        _bench_rows(mode="fwd+bwd", impl="torch", ms=1.4, gbps=1.0),
        _bench_rows(mode="fwd+bwd", impl="keras", ms=3.0, gbps=1.0),
        _bench_rows(backend="jax", mode="fwd+bwd", impl="kzoo", ms=1.0, gbps=1.0),
        _bench_rows(backend="jax", mode="fwd+bwd", impl="keras", ms=1.2, gbps=1.0),
        # Below hidden 4096 there is no bandwidth target.
        _bench_rows(hidden=1024, impl="kzoo", ms=1.0, gbps=10.0),
        _bench_rows(hidden=1024, impl="copy", ms=1.0, gbps=4000.0),
        # CPU: kzoo/keras ratios, layer and op, against 1.02.
        _bench_rows(platform="cpu", dtype="float32", impl="kzoo", ms=1.0, gbps=1.0,
                    kzoo_over_keras=1.01, op_over_keras_op=1.05),
    ]  # fmt: skip
    got = {
        (v["backend"], v["platform"], v["variant"], v["hidden"], v["mode"], v["target"]): (
            round(v["value"], 4),
            v["met"],
        )
        for v in bench.verdicts(results)
    }
    assert got == {
        ("torch", "gpu", "layer", 4096, "fwd", "fwd >= 85% of copy bandwidth"): (0.9048, True),
        ("torch", "gpu", "rms", 4096, "fwd", "fwd >= 85% of copy bandwidth"): (0.8, False),
        ("torch", "gpu", "layer", 4096, "fwd+bwd", "fwd+bwd >= 1.3x faster than torch"): (
            1.4,
            True,
        ),
        ("jax", "gpu", "layer", 4096, "fwd+bwd", "fwd+bwd >= 1.3x faster than keras"): (
            1.2,
            False,
        ),
        ("torch", "cpu", "layer", 4096, "fwd", "cpu layer time <= 1.02x keras"): (1.01, True),
        ("torch", "cpu", "layer", 4096, "fwd", "cpu op time <= 1.02x keras"): (1.05, False),
    }


def _report(sections):
    return {
        "started": "2026-12-01T12:00:00+00:00",
        "host": "h",
        "device": "NVIDIA H200",
        "mode": "gpu",
        "budget_s": 480.0,
        "elapsed_s": 400.0,
        "sections": sections,
    }


def test_report_holds_every_figure_and_is_never_overwritten_unasked(gpu_check, tmp_path):
    bench = load("bench/layernorm.py")
    results = [
        _bench_rows(impl="kzoo", ms=1.0, gbps=3800.0),
        _bench_rows(impl="copy", ms=0.9, gbps=4200.0),
    ]
    table, summary = bench._summarise(results)
    sections = [
        {
            "name": "kernels-triton",
            "title": "Triton",
            "status": "failed",
            "seconds": 80.0,
            "error": "exit 1: 1 failed",
            "figures": {
                "tests": 3,
                "counts": {"passed": 2, "failed": 1},
                "failed": ["tests/backends/test_layer_norm_triton.py::test_x[a]"],
            },
        },
        {
            "name": "bench-torch",
            "title": "bench",
            "status": "ok",
            "seconds": 60.0,
            "error": None,
            "figures": {
                "results": results,
                "verdicts": bench.verdicts(results),
                "table": table,
                "summary": summary,
            },
        },
        {
            "name": "convlstm",
            "title": "ConvLSTM",
            "status": "ok",
            "seconds": 30.0,
            "figures": {
                "rows": [
                    {
                        "backend": "torch",
                        "model": "color",
                        "max_diff": 1e-7,
                        "fit": {"kzoo_s": 0.01, "keras_s": 0.03, "speedup": 3.0},
                        "predict": {"kzoo_s": 0.01, "keras_s": 0.02, "speedup": 2.0},
                    }
                ]
            },
        },
        {
            "name": "detr",
            "title": "DETR",
            "status": "timeout",
            "seconds": 60.0,
            "error": "stopped after 60 s (its time limit)",
            "figures": {},
        },
    ]
    out = tmp_path / "report"
    path = gpu_check.write_report(_report(sections), str(out))
    assert json.loads(pathlib.Path(path).read_text()) == _report(sections)
    md = (out / "gpu_check.md").read_text()
    assert "| kernels-triton | failed | 80 | exit 1: 1 failed |" in md
    assert "| 3 | 2 | 1 | 0 | 0 |" in md and "test_x[a]" in md
    assert (
        "| layer | bfloat16 | 16384x4096 | fwd | fwd >= 85% of copy bandwidth | 0.905 | meets |"
        in md
    )
    assert "| torch | color | 0.0100 | 0.0300 | 3.00x | 2.00x | 1.0e-07 |" in md
    assert "| detr | timeout | 60 | stopped after 60 s (its time limit) |" in md
    with pytest.raises(FileExistsError, match="--overwrite"):
        gpu_check.write_report(_report([]), str(out))
    # The command line refuses too, before running anything.
    result = _run("--out", str(out), "--sections", "detr")
    assert result.returncode == 2 and "already holds a report" in result.stderr
    assert json.loads(pathlib.Path(path).read_text()) == _report(sections)


def test_figures_are_collected_from_shard_logs_of_a_stopped_section(gpu_check, tmp_path):
    (tmp_path / "shard0.log").write_text(
        "tests/a.py::test_one PASSED [ 50%]\ntests/a.py::test_two[x] FAILED [100%]\n"
    )
    (tmp_path / "shard1.log").write_text(
        "gpu_check device: NVIDIA H200\ntests/a.py::test_three SKIPPED\n"
    )
    figures = gpu_check.collect("kernels-triton", str(tmp_path), "gpu_check device: NVIDIA H200\n")
    assert figures == {
        "device": "NVIDIA H200",
        "tests": 3,
        "counts": {"passed": 1, "failed": 1, "skipped": 1},
        "failed": ["tests/a.py::test_two[x]"],
    }


def test_pytest_shards_split_the_tests(tmp_path):
    (tmp_path / "test_many.py").write_text(
        "import pytest\n\n@pytest.mark.parametrize('i', range(7))\ndef test_i(i):\n    pass\n"
    )
    seen = []
    for shard in ("0/3", "1/3", "2/3"):
        env = dict(os.environ, KZOO_GPU_CHECK_SHARD=shard, PYTHONPATH=str(ROOT / "scripts"))
        result = subprocess.run(
            [sys.executable, "-m", "pytest", "-v", "-p", "gpu_check", "-p", "no:cacheprovider",
             "--rootdir", str(tmp_path), str(tmp_path / "test_many.py")],
            capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120,
        )  # fmt: skip
        assert result.returncode == 0, result.stdout[-2000:]
        seen.append(
            sorted(
                line.split("::")[1].split()[0]
                for line in result.stdout.splitlines()
                if " PASSED" in line
            )
        )
    assert [len(s) for s in seen] == [3, 2, 2]
    assert sorted(sum(seen, [])) == sorted(f"test_i[{i}]" for i in range(7))


def test_a_section_that_hangs_or_fails_loses_only_itself(tmp_path):
    # bench-torch runs (toy sizes on the CPU); detr is stopped by its 1 s limit. The report
    # still holds bench-torch's figures, and the exit status says not everything passed.
    out = tmp_path / "report"
    result = _run(
        "--cpu", "--sections", "bench-torch,detr", "--timeout", "detr=1", "--out", str(out)
    )
    assert result.returncode == 1, result.stdout + result.stderr
    report = json.loads((out / "gpu_check.json").read_text())
    status = {s["name"]: s for s in report["sections"]}
    assert status["bench-torch"]["status"] == "ok"
    figures = status["bench-torch"]["figures"]
    assert {r["impl"] for r in figures["results"]} >= {"kzoo", "keras", "torch", "copy"}
    assert {v["mode"] for v in figures["verdicts"]} == {"fwd", "fwd+bwd"}
    assert status["detr"]["status"] == "timeout" and status["detr"]["seconds"] < 10
    md = (out / "gpu_check.md").read_text()
    assert "| bench-torch | ok |" in md and "| detr | timeout |" in md
    assert (out / "logs" / "detr.log").exists()


def test_without_a_gpu_the_script_refuses_before_running_anything(gpu_check, tmp_path):
    if gpu_check.nvidia_gpus():
        pytest.skip("this machine has an NVIDIA GPU")
    out = tmp_path / "report"
    result = _run("--out", str(out), timeout=120)
    assert result.returncode == 3, result.stdout + result.stderr
    err = result.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("gpu_check: error: no NVIDIA GPU"), err
    assert "--cpu" in err[0] and not out.exists() and "gpu_check:" not in result.stdout


def test_a_gpu_section_without_a_gpu_fails_with_a_clear_reason(gpu_check, tmp_path):
    # A section run where its framework sees no GPU (a CPU build of torch on a GPU machine)
    # stops at its device probe with the reason.
    if gpu_check.nvidia_gpus():
        pytest.skip("this machine has an NVIDIA GPU")
    result = _run("--run-section", "kernels-triton", "--workdir", str(tmp_path / "w"))
    assert result.returncode == 3
    assert "no CUDA device visible to torch" in result.stdout


def test_roofline_bytes_and_times_by_hand():
    bench = load("bench/layernorm.py")
    # LayerNorm, bfloat16, 4096 x 1024. Forward: x read and y written (2 bytes each), gamma and
    # beta read (float32), mean and 1/std written (float32 per row).
    fwd = 2 * 4096 * 1024 * 2 + 2 * 1024 * 4 + 4096 * 8
    assert fwd == 16_818_176
    assert bench.roofline_bytes("layer", "fwd", 4096, 1024, "bfloat16") == fwd
    # Backward: x, dy read and dx written; gamma read, dgamma and dbeta written; stats read.
    bwd = 3 * 4096 * 1024 * 2 + 3 * 1024 * 4 + 4096 * 8
    assert bench.roofline_bytes("layer", "bwd", 4096, 1024, "bfloat16") == bwd == 25_210_880
    assert bench.roofline_bytes("layer", "fwd+bwd", 4096, 1024, "bfloat16") == fwd + bwd
    # Fused residual RMS norm, float32, 16384 x 4096: x and r read, y and z written, gamma read,
    # 1/std written.
    assert bench.roofline_bytes("add_rms", "fwd", 16384, 4096, "float32") == 1_073_823_744
    # At H100's 3.35 TB/s: 16818176 / 3.35e12 s = 5.0203 us; at B200's 8 TB/s 2.1023 us.
    assert bench.predicted_seconds(fwd, bench.HBM_BANDWIDTH["H100"]) == pytest.approx(
        5.0203e-6, rel=1e-4
    )
    assert bench.predicted_seconds(fwd, bench.HBM_BANDWIDTH["B200"]) == pytest.approx(
        2.1023e-6, rel=1e-4
    )
    # Without the row statistics the roofline is the bytes the benchmark's bandwidth counts.
    for variant in ("layer", "rms", "add_layer", "add_rms"):
        for mode in ("fwd", "fwd+bwd"):
            stats = 4096 * 4 * (1 if variant.endswith("rms") else 2) * (2 if "bwd" in mode else 1)
            assert bench.roofline_bytes(variant, mode, 4096, 1024, "bfloat16") - stats == (
                bench._bytes_moved(variant, mode, "kzoo", 4096 * 1024, 1024, 2)
            )


def test_cards_are_told_apart_by_name():
    bench = load("bench/layernorm.py")
    assert bench.card_bandwidth("NVIDIA H100 80GB HBM3") == ("H100", 3.35e12)
    assert bench.card_bandwidth("NVIDIA H200") == ("H200", 4.8e12)
    assert bench.card_bandwidth("NVIDIA B200") == ("B200", 8.0e12)
    # Other bandwidths than the SXM card's, or no prediction at all.
    assert bench.card_bandwidth("NVIDIA H100 PCIe") is None
    assert bench.card_bandwidth("NVIDIA A100-SXM4-80GB") is None
    assert bench.card_bandwidth(None) is None


def test_bench_figures_are_set_against_the_roofline(gpu_check, tmp_path):
    rows = [
        _bench_rows(impl="kzoo", ms=0.1, gbps=1.0),
        _bench_rows(impl="torch", ms=0.2, gbps=1.0),
        _bench_rows(impl="copy", ms=0.09, gbps=1.0),
    ]
    (tmp_path / "results.json").write_text(json.dumps(rows))
    figures = gpu_check.collect(
        "bench-torch", str(tmp_path), "gpu_check device: NVIDIA H100 80GB HBM3\n"
    )
    roof = {r["impl"]: r for r in figures["roofline"]}
    assert set(roof) == {"kzoo", "torch"}  # the copy moves other bytes
    # 16384 x 4096 bfloat16 layer norm forward: 268599296 bytes / 3.35e12 B/s = 0.0801789 ms.
    assert roof["kzoo"]["predicted_ms"] == pytest.approx(0.0801789, rel=1e-6)
    assert roof["kzoo"]["of_roofline"] == pytest.approx(0.801789, rel=1e-6)
    assert roof["torch"]["of_roofline"] == pytest.approx(0.4008945, rel=1e-6)
    assert gpu_check.roofline_lines(figures["roofline"]) == [
        "roofline kzoo layer bfloat16 16384x4096 fwd: 0.1000 ms measured / 0.0802 ms "
        "predicted on H100 = 80% of roofline"
    ]
    section = {
        "name": "bench-torch",
        "title": "bench",
        "status": "ok",
        "seconds": 60.0,
        "error": None,
        "figures": figures,
    }
    gpu_check.write_report(_report([section]), str(tmp_path / "report"))
    md = (tmp_path / "report" / "gpu_check.md").read_text()
    assert "| layer | bfloat16 | 16384x4096 | fwd | kzoo | 0.1000 | 0.0802 | 80% |" in md
    # No prediction for a card of unknown bandwidth.
    unknown = gpu_check.collect("bench-torch", str(tmp_path), "gpu_check device: NVIDIA L4\n")
    assert unknown["roofline"] == []


@pytest.mark.slow
def test_cpu_run_of_the_kernel_sections_through_the_interpreters(tmp_path):
    # The pytest sections end to end (device probe skipped, interpreters, shard logs parsed).
    out = tmp_path / "report"
    result = _run(
        "--cpu", "--sections", "kernels-triton,kernels-pallas", "--out", str(out), timeout=900
    )
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads((out / "gpu_check.json").read_text())
    for section in report["sections"]:
        figures = section["figures"]
        assert section["status"] == "ok" and figures["tests"] >= 4
        assert figures["counts"] == {"passed": figures["tests"]}
