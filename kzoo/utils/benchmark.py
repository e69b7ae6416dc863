"""Side-by-side timing for the benchmark scripts: run callables in alternation, compare them.

On a shared or drifting machine absolute times move by tens of percent within minutes, so the
scripts in ``scripts/bench/`` time two or more implementations ("sides") in the same process,
one sample of each per round, and compare the samples of the same round. :func:`alternate`
does the timing; :func:`medians`, :func:`ratio` and :func:`field` summarise what it returns.

This module imports no framework: callers pass ``sync`` (e.g. ``jax.block_until_ready`` or a
function calling ``torch.cuda.synchronize()``) to wait for a device inside the timed region.
Importing it imports the ``kzoo`` package, though, and with it keras and its backend: a script
that starts one process per backend imports it in those processes, not in the one that starts
them.

Example:

>>> import math
>>> samples = alternate(
...     {"sum": lambda: sum(range(1000)), "fsum": lambda: math.fsum(range(1000))},
...     rounds=5,
...     warmup=1,
...     shuffle=True,
... )
>>> sorted(samples), len(samples["sum"])
(['fsum', 'sum'], 5)
>>> ratio(samples, "fsum", "sum") > 0  # fsum's time over sum's, median of the 5 rounds
True
"""

import json
import math
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping

__all__ = ["alternate", "field", "medians", "ratio", "results_per_backend"]


def _check_count(name, value, minimum):
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"`{name}` must be an integer >= {minimum}; got {value!r}")


def _check_seconds(name, value, allow_zero):
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"`{name}` must be a finite number of seconds {bound}; got {value!r}")


def alternate(
    runs: Mapping[str, Callable[[], object]],
    rounds: int,
    *,
    warmup: int = 1,
    sync: Callable[[object], object] | None = None,
    shuffle: bool = False,
    seed: int = 0,
    calls: int = 1,
    min_seconds: float | None = None,
    max_calls: int = 1000,
    calibration_calls: int = 3,
    budget_seconds: float | None = None,
    min_rounds: int = 1,
    pause: float = 0.0,
    before: Callable[[], object] | None = None,
    self_timed: bool = False,
    clock: Callable[[], float] = time.perf_counter,
    sleep: Callable[[float], object] = time.sleep,
) -> dict[str, list]:
    """Time each callable of ``runs`` once per round, alternating; ``{name: [sample, ...]}``.

    Each sample is the seconds per call of ``calls`` consecutive calls (``sync`` applied to the
    last call's output, inside the timed region), so neighbouring samples of different sides
    share the machine's state and can be compared round by round (:func:`ratio`).

    Args:
        runs: ``{name: callable}``, called without arguments; the sides, in their order.
        rounds: timed rounds (samples per side), at most.
        warmup: untimed rounds before them (compilation, tracing, caches), in ``runs``' order.
        sync: called with each sample's last output inside the timed region (and after each
            warm-up call), to wait for asynchronous devices.
        shuffle: give every round a fresh order (``random.Random(seed)`` shuffles the list of
            names in place each round), so that no side always follows the same other one;
            otherwise every round runs in ``runs``' order.
        seed: the seed of that order.
        calls: calls per sample, the same for every side.
        min_seconds: instead of ``calls``: after the warm-up, time ``calibration_calls`` single
            calls of each side, and give every side the calls per sample that make the slowest
            side's sample last ``min_seconds`` (at most ``max_calls``). Equal counts matter: a
            sample pays a fixed cost when the timer switches sides (cold caches), and unequal
            counts would weigh it differently on each side.
        max_calls: the most calls per sample ``min_seconds`` may choose.
        calibration_calls: timed single calls per side that ``min_seconds`` uses.
        budget_seconds: start no new round once the timed rounds have taken this long (and at
            least ``min_rounds`` are done); ``None`` runs all ``rounds``.
        min_rounds: the rounds the budget cannot cut.
        pause: seconds idle before each timed sample (lets threads one side leaves spinning go
            to sleep before the other side is timed); not timed, not in warm-up.
        before: called before each timed sample, outside the timed region (a barrier, clearing
            gradients).
        self_timed: the callables measure themselves: the sample is what a call returns (seconds,
            or a mapping of figures, see :func:`field`) instead of the wall time around it.
            ``sync``, ``calls > 1`` and ``min_seconds`` do not apply and are refused.
        clock: the timer (``time.perf_counter``).
        sleep: what ``pause`` calls (``time.sleep``).

    Returns:
        ``{name: [sample of round 1, sample of round 2, ...]}`` in ``runs``' order; every side
        has the same number of samples.
    """
    if not isinstance(runs, Mapping) or not runs:
        raise ValueError(f"`runs` must be a non-empty mapping of name to callable; got {runs!r}")
    for name, fn in runs.items():
        if not callable(fn):
            raise ValueError(f"`runs[{name!r}]` must be callable; got {fn!r}")
    _check_count("rounds", rounds, 1)
    _check_count("warmup", warmup, 0)
    _check_count("calls", calls, 1)
    _check_count("max_calls", max_calls, 1)
    _check_count("calibration_calls", calibration_calls, 1)
    _check_count("min_rounds", min_rounds, 1)
    _check_seconds("pause", pause, allow_zero=True)
    if min_seconds is not None:
        _check_seconds("min_seconds", min_seconds, allow_zero=False)
        if calls != 1:
            raise ValueError("give `calls` or `min_seconds`, not both")
    if budget_seconds is not None:
        _check_seconds("budget_seconds", budget_seconds, allow_zero=False)
    if self_timed and (sync is not None or calls != 1 or min_seconds is not None):
        raise ValueError("`self_timed` callables time themselves: no `sync`, `calls` or "
                         "`min_seconds`")  # fmt: skip

    def call(fn):
        out = fn()
        if sync is not None:
            sync(out)
        return out

    for _ in range(warmup):
        for fn in runs.values():
            call(fn)
    if min_seconds is not None:
        slowest = 0.0
        for fn in runs.values():
            once = []
            for _ in range(calibration_calls):
                start = clock()
                call(fn)
                once.append(clock() - start)
            slowest = max(slowest, statistics.median(once))
        calls = max(1, min(max_calls, math.ceil(min_seconds / max(slowest, 1e-7))))

    names = list(runs)
    order = random.Random(seed)
    samples = {name: [] for name in names}
    started = clock()
    for done in range(rounds):
        if budget_seconds is not None and done >= min_rounds:
            if clock() - started >= budget_seconds:
                break
        if shuffle:
            order.shuffle(names)
        for name in names:
            fn = runs[name]
            if before is not None:
                before()
            if pause:
                sleep(pause)
            if self_timed:
                samples[name].append(fn())
                continue
            start = clock()
            for _ in range(calls):
                out = fn()
            if sync is not None:
                sync(out)
            samples[name].append((clock() - start) / calls)
    return samples


def _side(samples, name):
    if name not in samples:
        raise ValueError(f"no samples of {name!r}; the sides are {', '.join(map(repr, samples))}")
    if not samples[name]:
        raise ValueError(f"{name!r} has no samples")
    return samples[name]


def medians(samples: Mapping[str, list]) -> dict[str, float]:
    """The median sample of each side."""
    return {name: statistics.median(_side(samples, name)) for name in samples}


def ratio(samples: Mapping[str, list], a: str, b: str) -> float:
    """The median over rounds of ``a``'s sample divided by ``b``'s sample of the same round.

    Pairing by round cancels what the machine's load does to both sides of a round; the median
    of the ratios is therefore not the ratio of the medians.
    """
    xs, ys = _side(samples, a), _side(samples, b)
    if len(xs) != len(ys):
        raise ValueError(f"{a!r} has {len(xs)} samples and {b!r} {len(ys)}: not paired by round")
    return statistics.median(x / y for x, y in zip(xs, ys))


def field(samples: Mapping[str, list], key: str) -> dict[str, list[float]]:
    """``{name: [sample[key], ...]}`` of self-timed samples that are mappings of figures."""
    return {name: [sample[key] for sample in values] for name, values in samples.items()}


def results_per_backend(backends, command, cwd=None):
    """Run ``command(out_path)`` (an argv list) once per backend, each in a subprocess with
    ``KERAS_BACKEND`` set (keras fixes its backend at import), and return the concatenation of
    the JSON lists the subprocesses write to ``out_path``.

    A backend whose subprocess fails is reported on stderr and contributes what it wrote, if
    anything; the others still run.
    """
    results = []
    for backend in backends:
        with tempfile.TemporaryDirectory() as tmp:
            out = os.path.join(tmp, "results.json")
            env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="2")
            rc = subprocess.call(command(out), env=env, cwd=cwd)
            if rc != 0:
                print(f"{backend}: benchmark failed (exit {rc})", file=sys.stderr)
            if os.path.exists(out):
                with open(out) as f:
                    results += json.load(f)
    return results
