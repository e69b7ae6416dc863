"""kzoo: a Keras 3 multi-backend model zoo.

The backend is chosen by ``KERAS_BACKEND``; kzoo imports no framework except through keras.
"""

import os
import sys

from kzoo import _deprecated
from kzoo.backends.environment import check_backend_env
from kzoo.version import __version__


def _running_as_cli():
    argv = getattr(sys, "orig_argv", sys.argv)
    if "-m" in argv:
        return argv[argv.index("-m") + 1 : argv.index("-m") + 2] == ["kzoo"]
    return os.path.basename(sys.argv[0]) == "kzoo"


try:
    check_backend_env()
except ValueError as _error:
    # The `kzoo` command reports user mistakes as one line; the check has to run before keras
    # is imported, which is before the command's own error handling exists.
    if _running_as_cli():
        print(f"kzoo: error: {_error}", file=sys.stderr)
        raise SystemExit(2) from None
    raise

if _running_as_cli() and sys.argv[1:2] == ["demo"]:
    # A newcomer's first command prints a few lines; TensorFlow's C++ notes (CPU instruction
    # sets) would bury them. A level the user set stays.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

_deprecated.install()

import keras  # noqa: E402,F401

from kzoo import (  # noqa: E402,F401
    backends,
    data,
    distribution,
    export,
    layers,
    metrics,
    models,
    ops,
    presets,
)
from kzoo.presets import load_preset  # noqa: E402

__all__ = [
    "__version__",
    "load_preset",
    "backends",
    "data",
    "distribution",
    "export",
    "layers",
    "metrics",
    "models",
    "ops",
    "presets",
]
