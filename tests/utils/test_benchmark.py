"""kzoo.utils.benchmark: the alternating timer of the benchmark scripts.

Most tests run it on a fake clock: every callable advances the clock by a known amount, so each
sample's value is known exactly and nothing depends on the machine's speed. The last ones run
real callables on the real clock and check only what does not depend on speed (call order and
counts, one positive sample per round).
"""

import random
import statistics
import sys

import pytest

from kzoo.utils import benchmark


class Clock:
    """A clock that moves only when told; ``log`` records what ran, in order."""

    def __init__(self):
        self.now = 0.0
        self.log = []

    def __call__(self):
        return self.now

    def side(self, name, seconds):
        def run():
            self.log.append(name)
            self.now += seconds
            return name

        return run

    def sleep(self, seconds):
        self.log.append(("sleep", seconds))
        self.now += seconds


def test_without_shuffle_every_round_runs_the_sides_in_their_order_after_the_warmup():
    clock = Clock()
    runs = {"a": clock.side("a", 1.0), "b": clock.side("b", 2.0), "c": clock.side("c", 4.0)}
    samples = benchmark.alternate(runs, rounds=3, warmup=2, clock=clock)
    assert clock.log == ["a", "b", "c"] * 5
    # The warm-up rounds' calls are not samples: three per side, each exactly its own time.
    assert samples == {"a": [1.0] * 3, "b": [2.0] * 3, "c": [4.0] * 3}


def test_shuffle_gives_each_round_a_seeded_order_with_every_side_once():
    names = ["a", "b", "c", "d"]

    def orders(seed):
        clock = Clock()
        runs = {n: clock.side(n, 1.0) for n in names}
        benchmark.alternate(runs, rounds=12, warmup=0, shuffle=True, seed=seed, clock=clock)
        return [tuple(clock.log[i : i + 4]) for i in range(0, 48, 4)]

    first = orders(seed=5)
    assert first == orders(seed=5)
    assert all(sorted(o) == names for o in first)
    assert len(set(first)) > 1  # the order changes between rounds
    assert first != orders(seed=6)
    # Each round shuffles the previous round's list in place with random.Random(seed).
    expected, rng, current = [], random.Random(5), list(names)
    for _ in range(12):
        rng.shuffle(current)
        expected.append(tuple(current))
    assert first == expected


def test_sync_gets_each_samples_last_output_inside_the_timed_region():
    clock = Clock()
    synced = []

    def sync(out):
        synced.append(out)
        clock.now += 0.5  # waiting for the device is part of the sample

    runs = {"a": clock.side("a", 1.0), "b": clock.side("b", 3.0)}
    samples = benchmark.alternate(runs, rounds=2, warmup=1, sync=sync, calls=2, clock=clock)
    # Warm-up: one sync per call; timed: one per sample of two calls, (2 * t + 0.5) / 2.
    assert synced == ["a", "b"] + ["a", "b"] * 2
    assert samples == {"a": [1.25, 1.25], "b": [3.25, 3.25]}


def test_min_seconds_gives_every_side_the_slowest_sides_call_count():
    clock = Clock()
    runs = {"fast": clock.side("fast", 0.001), "slow": clock.side("slow", 0.004)}
    samples = benchmark.alternate(
        runs, rounds=3, warmup=1, min_seconds=0.02, calibration_calls=3, clock=clock
    )
    # warm-up 1 + calibration 3 per side, then 3 rounds of ceil(0.02 / 0.004) = 5 calls each.
    assert clock.log.count("fast") == clock.log.count("slow") == 1 + 3 + 3 * 5
    assert samples["fast"] == pytest.approx([0.001] * 3)
    assert samples["slow"] == pytest.approx([0.004] * 3)


def test_min_seconds_stops_at_max_calls():
    clock = Clock()
    runs = {"a": clock.side("a", 1e-6)}
    benchmark.alternate(runs, rounds=2, warmup=0, min_seconds=1.0, max_calls=7, clock=clock)
    assert clock.log.count("a") == 3 + 2 * 7


def test_budget_cuts_rounds_but_not_below_min_rounds():
    clock = Clock()
    runs = {"a": clock.side("a", 1.0), "b": clock.side("b", 1.0)}
    # Rounds take 2 s; the budget is checked before each round once 3 are done.
    samples = benchmark.alternate(
        runs, rounds=50, warmup=1, budget_seconds=7.0, min_rounds=3, clock=clock
    )
    assert len(samples["a"]) == len(samples["b"]) == 4
    short = benchmark.alternate(
        runs, rounds=50, warmup=0, budget_seconds=0.5, min_rounds=3, clock=clock
    )
    assert len(short["a"]) == 3


def test_pause_and_before_run_outside_the_timed_region_of_timed_samples_only():
    clock = Clock()
    runs = {"a": clock.side("a", 1.0), "b": clock.side("b", 2.0)}
    samples = benchmark.alternate(
        runs,
        rounds=2,
        warmup=1,
        pause=10.0,
        before=lambda: clock.log.append("before"),
        clock=clock,
        sleep=clock.sleep,
    )
    assert samples == {"a": [1.0, 1.0], "b": [2.0, 2.0]}
    timed = ["before", ("sleep", 10.0)]
    assert clock.log == ["a", "b"] + (timed + ["a"] + timed + ["b"]) * 2


def test_self_timed_samples_are_what_the_callables_return():
    clock = Clock()
    figures = iter(range(100))

    def side(name):
        def run():
            clock.log.append(name)
            return {"step": next(figures), "name": name}

        return run

    samples = benchmark.alternate(
        {"kzoo": side("kzoo"), "keras": side("keras")}, rounds=3, warmup=1, self_timed=True
    )
    assert benchmark.field(samples, "step") == {"kzoo": [2, 4, 6], "keras": [3, 5, 7]}
    assert benchmark.field(samples, "name")["keras"] == ["keras"] * 3


def test_medians_and_ratio_pair_samples_by_round():
    samples = {"a": [2.0, 6.0, 3.0], "b": [1.0, 2.0, 3.0]}
    assert benchmark.medians(samples) == {"a": 3.0, "b": 2.0}
    # Per-round ratios 2, 3 and 1: their median is 2, not the ratio of the medians (1.5).
    assert benchmark.ratio(samples, "a", "b") == 2.0
    assert benchmark.ratio(samples, "b", "a") == statistics.median([0.5, 1 / 3, 1.0])


def test_ratio_refuses_unknown_sides_and_unpaired_samples():
    with pytest.raises(ValueError, match="no samples of 'c'; the sides are 'a', 'b'"):
        benchmark.ratio({"a": [1.0], "b": [1.0]}, "a", "c")
    with pytest.raises(ValueError, match="not paired by round"):
        benchmark.ratio({"a": [1.0, 2.0], "b": [1.0]}, "a", "b")
    with pytest.raises(ValueError, match="'a' has no samples"):
        benchmark.medians({"a": []})


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"runs": {}}, "`runs` must be a non-empty mapping"),
        ({"runs": {"a": 3}}, r"`runs\['a'\]` must be callable"),
        ({"rounds": 0}, "`rounds` must be an integer >= 1; got 0"),
        ({"rounds": 2.0}, "`rounds` must be an integer >= 1; got 2.0"),
        ({"warmup": -1}, "`warmup` must be an integer >= 0"),
        ({"calls": 0}, "`calls` must be an integer >= 1"),
        ({"pause": -0.1}, "`pause` must be a finite number of seconds >= 0"),
        ({"min_seconds": 0}, "`min_seconds` must be a finite number of seconds > 0"),
        ({"min_seconds": 0.1, "calls": 3}, "give `calls` or `min_seconds`, not both"),
        ({"budget_seconds": float("nan")}, "`budget_seconds` must be a finite number"),
        ({"self_timed": True, "sync": print}, "`self_timed` callables time themselves"),
    ],
)
def test_bad_arguments_are_refused_before_anything_runs(kwargs, message):
    ran = []
    args = {"runs": {"a": lambda: ran.append(1)}, "rounds": 2, **kwargs}
    with pytest.raises(ValueError, match=message):
        benchmark.alternate(**args)
    assert ran == []


def test_real_callables_on_the_real_clock_give_one_positive_sample_per_round():
    log = []

    def side(name, n):
        def run():
            log.append(name)
            return sum(range(n))

        return run

    synced = []
    runs = {"short": side("short", 100), "long": side("long", 10_000)}
    samples = benchmark.alternate(runs, rounds=4, warmup=1, sync=synced.append, calls=3)
    # One warm-up call per side, then each round's samples of three consecutive calls.
    assert log == ["short", "long"] + (["short"] * 3 + ["long"] * 3) * 4
    # Warm-up: one sync per call; timed rounds: one per sample, with the last call's output.
    assert synced == [4950, 49995000] + [4950, 49995000] * 4
    assert list(samples) == ["short", "long"]
    for values in samples.values():
        assert len(values) == 4 and all(v > 0 and v == v and v != float("inf") for v in values)
    assert set(benchmark.medians(samples)) == {"short", "long"}
    assert benchmark.ratio(samples, "long", "short") > 0


def test_min_seconds_on_the_real_clock_gives_both_sides_the_same_call_count():
    import time

    counts = {"sleep": 0, "add": 0}

    def sleeper():
        counts["sleep"] += 1
        time.sleep(0.002)

    def adder():
        counts["add"] += 1
        return 1 + 1

    samples = benchmark.alternate(
        {"sleep": sleeper, "add": adder}, rounds=2, warmup=1, min_seconds=0.01
    )
    # The sleeping side is the slowest: its single calls last at least 2 ms, so a sample
    # needs at most ceil(0.01 / 0.002) = 5 calls; both sides make the same number of calls.
    timed = counts["sleep"] - 1 - 3
    assert counts["add"] == counts["sleep"] and 2 <= timed <= 10 and timed % 2 == 0
    assert all(s >= 0.002 for s in samples["sleep"])


def test_the_module_example_runs():
    import doctest

    result = doctest.testmod(benchmark)
    assert result.attempted >= 3 and result.failed == 0


def test_results_per_backend_gathers_each_subprocess_list_and_survives_a_failure(capsys):
    # A real subprocess per backend: it writes its KERAS_BACKEND, then fails for "torch".
    script = (
        "import json, os, sys; b = os.environ['KERAS_BACKEND']; "
        "json.dump([{'backend': b}], open(sys.argv[1], 'w')); sys.exit(3 if b == 'torch' else 0)"
    )
    results = benchmark.results_per_backend(
        ["jax", "torch", "tensorflow"], lambda out: [sys.executable, "-c", script, out]
    )
    assert [r["backend"] for r in results] == ["jax", "torch", "tensorflow"]
    assert "torch: benchmark failed (exit 3)" in capsys.readouterr().err
