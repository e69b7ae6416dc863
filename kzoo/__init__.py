"""kzoo: a Keras 3 multi-backend model zoo.

The backend is chosen by ``KERAS_BACKEND``; kzoo imports no framework except through keras.
"""

import os
import sys

from kzoo import _command, _deprecated
from kzoo.backends.environment import check_backend_env
from kzoo.version import __version__

try:
    check_backend_env()
except ValueError as _error:
    # The `kzoo` command reports user mistakes as one line; the check has to run before keras
    # is imported, which is before the command's own error handling exists.
    if _command.parsing:
        print(f"kzoo: error: {_error}", file=sys.stderr)
        raise SystemExit(2) from None
    raise

if _command.parsing:
    # TensorFlow's C++ notes (CPU instruction sets) would bury the command's own few lines;
    # they are printed when TensorFlow loads, so the level is set before anything can load it.
    # A level the user set stays. (TensorFlow 2.21's oneDNN note ignores the level.)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

_deprecated.install()

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


def _import_all():
    """Import keras and kzoo's subpackages, as ``import kzoo`` does for a library user.

    The ``kzoo`` command defers this until its arguments have parsed, so that ``kzoo --help``
    and argument errors load no framework (and print none of a framework's logging).
    """
    global load_preset
    import keras  # noqa: F401

    if _command.parsing:
        import importlib

        _command.parsing = False
        for name in _command.LIGHT_PACKAGES:
            # Opened light by the parsers: now their __init__ runs in full.
            if name in sys.modules:
                importlib.reload(sys.modules[name])

    from kzoo import (  # noqa: F401
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
    from kzoo.presets import load_preset


if not _command.parsing:
    _import_all()
