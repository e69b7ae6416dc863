"""scripts/bench/layernorm.py: a toy-sized real run on this backend (the figures need an idle
machine or a GPU; this checks that every variant and implementation runs and is reported)."""

import json

import keras

from tests.scripts import support


def test_toy_run_times_every_variant_and_implementation(tmp_path, monkeypatch, capfd):
    backend = keras.backend.backend()
    argv = ["--backends", backend, "--rows", "64", "--hidden", "32", "--dtypes", "float32"]
    argv += ["--rounds", "1", "--min-time", "0.0001", "--variants", "rms,add_layer", "--no-plot"]
    argv += ["--out", str(tmp_path)]
    # The script's own part runs here; each backend's worker is its own process, as in a run.
    support.as_run(monkeypatch)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    assert support.load("bench/layernorm.py").main(argv) == 0, capfd.readouterr().err[-3000:]
    report = json.loads((tmp_path / "results.json").read_text())
    impls = {"kzoo", "keras", "kzoo-op", "keras-op"} | ({"torch"} if backend == "torch" else set())
    for variant in ("rms", "add_layer"):
        for mode in ("fwd", "fwd+bwd"):
            rows = [r for r in report["results"] if (r["variant"], r["mode"]) == (variant, mode)]
            assert {r["impl"] for r in rows} == impls | ({"copy"} if mode == "fwd" else set())
            assert all(r["ms"] > 0 and r["gbps"] > 0 for r in rows)
            kzoo = next(r for r in rows if r["impl"] == "kzoo")
            assert kzoo["kzoo_over_keras"] > 0 and kzoo["op_over_keras_op"] > 0
    targets = {(v["variant"], v["mode"], v["target"]) for v in report["verdicts"]}
    assert len(targets) == 8  # layer and op, for both variants and both modes
    assert any(line.startswith("target cpu op time") for line in report["summary"])
