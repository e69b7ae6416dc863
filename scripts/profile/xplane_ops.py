"""Per-op self time from a profiler trace in XSpace form (TensorFlow's and JAX's profilers).

``tf.profiler.experimental`` and ``jax.profiler`` both write ``*.xplane.pb``: per thread, a line
of timed events that nest (a function call holds the ops it runs). An op's *self* time is its
duration less that of the events inside it, so summing self times over a trace counts every
microsecond once. Read with the protobuf classes TensorFlow ships (no tensorboard needed).
"""

import collections
import glob
import os
import re
import tempfile
import time


def _events_self_time(events):
    """``(name, self_ps)`` for each event of one line, children's time taken out."""
    events = sorted(events, key=lambda e: (e[1], -e[2]))
    out = []
    stack = []  # [name, start, end, child_ps]
    for name, start, duration in events:
        end = start + duration
        while stack and stack[-1][2] <= start:
            top = stack.pop()
            out.append((top[0], top[2] - top[1] - top[3]))
        if stack:
            stack[-1][3] += min(end, stack[-1][2]) - start
        stack.append([name, start, end, 0])
    out.extend((top[0], top[2] - top[1] - top[3]) for top in stack)
    return out


def self_times(logdir, name_of=lambda name: name):
    """Self time in milliseconds per ``name_of(event name)`` over every host line of a trace.

    ``name_of`` groups events (e.g. by op type); returning None drops an event's self time.
    """
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    paths = glob.glob(os.path.join(logdir, "**", "*.xplane.pb"), recursive=True)
    if not paths:
        raise FileNotFoundError(f"no *.xplane.pb under {logdir}")
    space = xplane_pb2.XSpace()
    with open(max(paths, key=os.path.getmtime), "rb") as f:
        space.ParseFromString(f.read())
    totals = collections.Counter()
    for plane in space.planes:
        if not plane.name.startswith("/host:"):
            continue
        names = {key: meta.name for key, meta in plane.event_metadata.items()}
        for line in plane.lines:
            events = [
                (names.get(e.metadata_id, "?"), e.offset_ps, e.duration_ps) for e in line.events
            ]
            for name, ps in _events_self_time(events):
                key = name_of(name)
                if key is not None:
                    totals[key] += ps / 1e9
    return totals


def tensorflow_op_type(name):
    """``scope/.../Conv2D:_MklConv2D#id=3#`` -> ``_MklConv2D``; None for the runtime's events
    (``FunctionRun``, ``EagerExecute: ...``, Python frames: waiting and bookkeeping)."""
    match = re.fullmatch(r"[^\s:#]+:(\w+)", name.split("#", 1)[0])
    return match.group(1) if match else None


def xla_op_kind(name):
    """``convolution.21`` -> ``convolution``, ``loop_multiply_fusion.3`` ->
    ``loop_multiply_fusion``; None for the runtime's events (``ThunkExecutor::Execute``,
    ``PjitFunction(...)``, Python frames)."""
    name = name.split("#", 1)[0]
    if not re.fullmatch(r"[a-z][\w.\-]*", name):
        return None
    return re.sub(r"\.\d+$", "", name)


def print_table(totals, title, top=15, wall_ms=None):
    total = sum(totals.values())
    wall = f" (wall time {wall_ms:.1f} ms)" if wall_ms else ""
    print(f"==== {title}: {total:.1f} ms of ops' self time{wall}")
    rows = totals.most_common(top)
    width = max([2] + [len(name) for name, _ in rows])
    print(f"{'op':<{width}} {'ms':>9} {'share':>7}")
    for name, ms in rows:
        print(f"{name:<{width}} {ms:9.1f} {ms / total:7.1%}")


def profile_steps(backend, step, steps=2, by_name=False):
    """Run ``step()`` ``steps`` times under JAX's or TensorFlow's profiler.

    Returns ``(self time in ms per op type, or per op with by_name; wall time in ms)``.
    """
    group = xla_op_kind if backend == "jax" else tensorflow_op_type
    if by_name:
        base = group

        def group(name):
            return name.split("#", 1)[0] if base(name) else None

    with tempfile.TemporaryDirectory() as logdir:
        start = time.perf_counter()
        if backend == "jax":
            import jax

            with jax.profiler.trace(logdir):
                for _ in range(steps):
                    step()
        else:
            import tensorflow as tf

            tf.profiler.experimental.start(logdir)
            for _ in range(steps):
                step()
            tf.profiler.experimental.stop()
        wall_ms = (time.perf_counter() - start) * 1e3
        return self_times(logdir, group), wall_ms
