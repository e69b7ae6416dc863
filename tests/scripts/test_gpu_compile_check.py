"""scripts/tools/gpu_compile_check.py: what it compiles, its verdicts, and a compile for sm_90.

The fast tests check the enumeration (every configuration the choosers can return) and the
arithmetic of the verdicts and the occupancy by hand; compiling for a GPU target is CPU-heavy
and runs only in the slow step, on a small subset, with the triton wheel's ptxas.
"""

import importlib.util
import pathlib

import pytest

# Pure Python plus subprocesses of their own backend: one CI run is enough.
pytestmark = pytest.mark.backends("torch")
ROOT = pathlib.Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def tool():
    spec = importlib.util.spec_from_file_location(
        "gpu_compile_check", ROOT / "scripts" / "tools" / "gpu_compile_check.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_row_length_specialisations(tool):
    assert tool.n_specs(1, 1) == {"N=1": 1}
    assert tool.n_specs(2, 2) == {"N%16!=0": 2}
    assert tool.n_specs(5, 8) == {"N%16!=0": 8}
    assert tool.n_specs(9, 16) == {"N%16=0": 16, "N%16!=0": 15}
    assert tool.n_specs(4097, 8192) == {"N%16=0": 8192, "N%16!=0": 8191}
    assert tool.n_specs(16385, None) == {"N%16=0": 1 << 20, "N%16!=0": (1 << 20) - 1}


def test_occupancy_by_hand(tool):
    # 128 registers x 512 threads = the whole register file: one block, 16 of 64 warps.
    assert tool.occupancy(128, 16, 64, 90) == (1, 0.25)
    # 32 registers, 8 warps: 8 blocks by registers (1024 per warp) and by threads: all warps.
    assert tool.occupancy(32, 8, 0, 90) == (8, 1.0)
    # 41 registers round up to 48 per thread (units of 256 per warp): 65536 // (1536 * 4) = 10
    # blocks; 40 need no rounding: 65536 // (1280 * 4) = 12.
    assert tool.occupancy(41, 4, 0, 100) == (10, 40 / 64)
    assert tool.occupancy(40, 4, 0, 100) == (12, 48 / 64)
    # 100 KiB of shared memory (plus 1 KiB reserved) per block: two fit in 228 KiB.
    assert tool.occupancy(32, 4, 102400, 90) == (2, 8 / 64)
    # One warp per block: the 32-block limit.
    assert tool.occupancy(16, 1, 0, 90) == (32, 0.5)
    # Over a block's limits: nothing fits.
    assert tool.occupancy(32, 4, 240000, 90) == (0, 0.0)
    assert tool.occupancy(255, 32, 0, 90) == (0, 0.0)


def test_verdicts(tool):
    clean = {"registers": 64, "spill_stores": 0, "spill_loads": 0, "shared": 64}
    assert tool.verdict(clean, 16, 90) == ("OK", "")
    assert tool.verdict({**clean, "spill_stores": 8, "spill_loads": 4}, 16, 90)[0] == "SPILL"
    status, why = tool.verdict({**clean, "shared": 300000}, 4, 90)
    assert status == "FAIL" and "shared memory" in why
    status, why = tool.verdict(clean, 64, 90)
    assert status == "FAIL" and "2048 threads" in why
    assert tool.verdict({**clean, "registers": 200}, 16, 90)[0] == "FAIL"
    assert tool.verdict({"error": "CompilationError: x"}, 4, 100) == ("FAIL", "CompilationError: x")


def test_every_configuration_the_choosers_return_is_compiled(tool):
    from kzoo.backends.common import norm_configs as nc

    cases = tool.triton_cases()
    for dtype, size in (("float32", 4), ("bfloat16", 2), ("float16", 2)):
        compiled = {
            (c["kernel"], c["config"]["block"], c["config"]["warps"], c["config"]["rows"])
            for c in cases
            if c["dtype"] == dtype
        }
        # Ask the choosers directly, at every row length up to 70000.
        expected = set()
        for target in (None, *nc.TARGETS):
            for n in sorted(set(range(1, 70001, 7)) | set(range(1, 17))):
                picked = (nc.triton_forward(n, size, target=target),)
                picked += nc.triton_backward(n, size, target=target)
                expected |= {(c.kernel, c.block, c.warps, c.rows) for c in picked}
        assert compiled == expected, dtype
    by_key = {
        (c["kernel"], c["dtype"], c["config"]["block"], c["spec"], tuple(c["variants"])): c
        for c in cases
    }
    # The removed configurations are compiled (the table shows why) but not pickable there.
    spilled = by_key[("_fwd_fused", "bfloat16", 32768, "N%16=0", ("layer",))]
    assert spilled["pickable"] == {"90": False, "100": False}
    assert spilled["widths"] == [16385, 32768] and spilled["n"] == 32768
    kept = by_key[("_fwd_fused", "bfloat16", 16384, "N%16!=0", ("add_rms",))]
    assert kept["pickable"] == {"90": True, "100": True} and kept["n"] == 16383
    # A kernel without a flag's parameter shares one compile between the forms.
    sums = [c for c in cases if c["kernel"] == "_bwd_row_sums" and c["dtype"] == "float32"]
    assert sorted(tuple(c["variants"]) for c in sums) == [
        ("layer", "add_layer"),
        ("layer", "add_layer"),
        ("rms", "add_rms"),
        ("rms", "add_rms"),
    ]


def test_pallas_cases_lower_the_removed_choice_and_its_replacement(tool):
    cases = tool.pallas_cases(dtypes=("bfloat16",), variants=("layer",), hidden=(4096, 32768))
    assert [(c["n"], c["target"]) for c in cases] == [(4096, None), (32768, None), (32768, 90)]
    plain, removed = cases[1]["kernels"]["dx"], cases[2]["kernels"]["dx"]
    assert (plain["kernel"], plain["block"]) == ("dx", 32768)
    assert plain["pickable"] == {"90": False, "100": False}
    assert (removed["kernel"], removed["block"]) == ("dx_looped", 4096)
    assert removed["pickable"] == {"90": True, "100": True}


def test_summary_names_a_pickable_configuration_that_spills(tool):
    def row(kernel, block, status, pickable, n=4096):
        entry = {"registers": 128, "spill_stores": 8 if status == "SPILL" else 0}
        entry.update(status=status, why="spills 8 bytes" if status == "SPILL" else "")
        entry.update(pickable=pickable)
        return {
            "backend": "triton",
            "kernel": kernel,
            "variants": ["layer"],
            "dtype": "bfloat16",
            "shape": f"N {n // 2 + 1}-{n}",
            "spec": "N%16=0",
            "n": n,
            "block": block,
            "warps": 16,
            "rows": 1,
            "targets": {"90": entry},
        }

    rows = [
        row("_fwd_fused", 4096, "OK", True),
        row("_bwd_fused", 8192, "SPILL", True, 8192),
        row("_fwd_fused", 32768, "SPILL", False, 32768),
    ]
    stats = tool.summary(rows, (90,))["90"]
    assert (stats["compiled"], stats["pickable"], stats["spill"]) == (3, 2, 2)
    assert (stats["pickable_spill"], stats["pickable_spill_le_8192"]) == (1, 1)
    assert len(stats["bad"]) == 1 and "_bwd_fused" in stats["bad"][0]
    assert len(stats["removed"]) == 1 and "32768" in stats["removed"][0]
    assert stats["stale"] == []


def test_bad_command_lines(tool):
    for argv in (["--targets", "80"], ["--dtypes", "float64"], ["--backends", "tf"]):
        with pytest.raises(SystemExit) as exc:
            tool.parse_args(argv)
        assert exc.value.code == 2


@pytest.mark.slow
@pytest.mark.backends("jax", "tensorflow", "torch")
def test_the_grid_configurations_compile_for_sm90_without_failing_or_spilling(tool):
    # What the choosers pick on an H100 for the benchmark grid's hidden sizes (bfloat16, the
    # fused residual layer norm, the heaviest form), Triton and Pallas, forward and backward,
    # compiled for sm_90 with the triton wheel's ptxas. A configuration made illegal (a block
    # that spills or does not fit, too many warps) makes this fail.
    # Triton and JAX run in subprocesses of their own, so any backend's test process will do
    # (CI's slow step runs under JAX).
    from kzoo.backends.common import norm_configs as nc

    if importlib.util.find_spec("triton") is None:
        pytest.skip("triton is not installed")
    if tool.ptxas_path(90) is None:
        pytest.skip("the triton wheel has no ptxas for sm_90: nothing to compile with")
    rows = tool.check(
        backends=("triton", "pallas"),
        targets=(90,),
        dtypes=("bfloat16",),
        variants=("add_layer",),
        hidden=(4096,),
        grid_only=True,
    )
    triton = {
        (r["kernel"], r["block"], r["warps"], r["rows"]) for r in rows if r["backend"] == "triton"
    }
    picked = set()
    for n in tool.GRID_HIDDEN:
        for c in (nc.triton_forward(n, 2, target=90), *nc.triton_backward(n, 2, target=90)):
            picked.add((c.kernel, c.block, c.warps, c.rows))
    assert triton == picked
    pallas = {r["kernel"] for r in rows if r["backend"] == "pallas"}
    assert pallas == {"fwd", "dx", "dwdb"}
    for r in rows:
        entry = r["targets"]["90"]
        assert entry["pickable"], r
        assert entry["status"] == "OK", f"{tool._label(r)}: {entry['status']} {entry['why']}"
        assert entry["cubin_bytes"] > 0 and 0 < entry["registers"] <= 255
