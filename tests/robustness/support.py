"""Shared pieces of the robustness tests: the real ``kzoo`` CLI in a subprocess, tiny models."""

import os
import subprocess
import sys

import keras
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def kzoo(*args, cwd=None, prefix=(), timeout=180, env=None):
    """Run ``python -m kzoo ARGS`` as its own process with this checkout on PYTHONPATH.

    ``prefix`` is a command line the process runs under (``unshare ...``).
    """
    full_env = dict(
        os.environ,
        KERAS_BACKEND=keras.backend.backend(),
        PYTHONPATH=ROOT,
        TF_CPP_MIN_LOG_LEVEL="3",
        **(env or {}),
    )
    return subprocess.run(
        [*prefix, sys.executable, "-m", "kzoo", *map(str, args)],
        cwd=cwd or ROOT,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def kzoo_in_process(*args, cwd=None):
    """Run ``kzoo ARGS`` through ``kzoo.cli.main.main`` in this process; a ``CompletedProcess``.

    The command's whole path (parsing, checks, the model, its one-line errors) without a new
    interpreter's framework imports, about 5 CPU-seconds a call. What only a process shows (the
    exit status of ``python -m kzoo``, mounts, kills, imports) stays with :func:`kzoo`. Only for
    commands that leave keras's global state alone: ``predict``, ``convert``, ``list``, and
    ``train`` calls refused before it seeds the generators and sets the dtype policy.
    """
    import contextlib
    import io
    import traceback

    from kzoo.cli.main import main

    argv = [str(a) for a in args]
    out, err = io.StringIO(), io.StringIO()
    previous = os.getcwd()
    os.chdir(cwd or ROOT)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main(argv)
            except SystemExit as e:
                if isinstance(e.code, str):
                    print(e.code, file=sys.stderr)
                code = 1 if isinstance(e.code, str) else (e.code or 0)
            except Exception:
                # What the interpreter does with an exception nothing caught.
                traceback.print_exc()
                code = 1
    finally:
        os.chdir(previous)
    return subprocess.CompletedProcess(["kzoo", *argv], code, out.getvalue(), err.getvalue())


def kzoo_parallel(*calls):
    """Run several ``kzoo(...)`` calls at once (each ``(args, kwargs)``); results in order.

    The processes are independent, and most of each one's time is importing the frameworks.
    """
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=3) as pool:
        futures = [pool.submit(kzoo, *args, **kwargs) for args, kwargs in calls]
        return [f.result() for f in futures]


def assert_cli_error(result, *fragments):
    """Exit status 2, no traceback, and one ``kzoo: error:`` line holding every fragment."""
    assert result.returncode == 2, (result.returncode, result.stdout[-2000:], result.stderr[-3000:])
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("kzoo: error:")]
    assert len(errors) == 1, result.stderr[-3000:]
    for fragment in fragments:
        assert fragment in errors[0], errors[0]
    return errors[0]


def tiny_detr(num_classes=3, seed=0):
    """A DETR small enough to build and run in a second, with non-trivial weights."""
    from kzoo.models.detr import DETR
    from kzoo.presets import preset_io

    model = DETR(
        num_classes=num_classes,
        num_queries=4,
        d_model=16,
        num_heads=2,
        num_encoder_layers=1,
        num_decoder_layers=1,
        ffn_dim=16,
        backbone="small",
    )
    with preset_io.placeholder_initializers(model):
        model.build((None, None, None, 3))
    rng = np.random.default_rng(seed)
    for v in model.weights:
        value = rng.normal(size=v.shape) * 0.1
        v.assign(np.abs(value) + 0.5 if "variance" in v.path else value)
    return model


def tree(path):
    """Every path under ``path`` (relative), with file contents, to compare before and after."""
    found = {}
    for folder, dirs, files in os.walk(path):
        for name in dirs:
            found[os.path.relpath(os.path.join(folder, name), path)] = None
        for name in files:
            full = os.path.join(folder, name)
            with open(full, "rb") as f:
                found[os.path.relpath(full, path)] = f.read()
    return found
