"""scripts/bench/attention.py: a toy-sized real run on this backend (the figures need an idle
machine; this checks that every side runs, agrees with keras and is reported)."""

import json

import keras

from kzoo.backends import environment
from kzoo.backends.common.attention import MIN_QUERIES
from tests.scripts import support


def test_toy_run_times_every_side_and_reports_the_dispatch(tmp_path, monkeypatch, capfd):
    backend = keras.backend.backend()
    out = tmp_path / "results.json"
    argv = ["--backends", backend, "--lengths", f"16,{MIN_QUERIES}", "--heads", "2"]
    argv += ["--head-dim", "4", "--rounds", "1", "--min-time", "0.0001", "--padding", "0.25"]
    argv += ["--out", str(out)]
    # The script's own part runs here; each backend's worker is its own process, as in a run.
    support.as_run(monkeypatch)
    assert support.load("bench/attention.py").main(argv) == 0, capfd.readouterr().err[-3000:]
    assert "| backend | tokens | dispatched |" in capfd.readouterr().out
    rows = json.loads(out.read_text())
    assert [r["length"] for r in rows] == [16, MIN_QUERIES]
    blocked = {"jax": "jax-query-blocks", "tensorflow": "tensorflow-query-blocks"}
    has_blocked = backend in blocked and environment.platform() == "cpu"
    sides = {"keras", "kzoo"} | ({"blocked"} if backend in blocked else set())
    for r in rows:
        assert set(r["ms"]) == sides and all(ms > 0 for ms in r["ms"].values())
        assert set(r["over_keras"]) == sides - {"keras"}
        assert all(d < 1e-5 for d in r["max_diff"].values()), r["max_diff"]
        long = r["length"] >= MIN_QUERIES
        assert r["dispatched"] == (blocked[backend] if long and has_blocked else "keras")
