"""kzoo: a Keras 3 multi-backend model zoo.

The backend is chosen by ``KERAS_BACKEND``; kzoo imports no framework except through keras.
"""

import os
import sys

from kzoo import _deprecated
from kzoo.backends.environment import check_backend_env
from kzoo.version import __version__


def _running_as_cli():
    """Whether this process is the ``kzoo`` command (the console script or ``python -m kzoo``)."""
    if os.path.basename(sys.argv[0]) == "kzoo":
        return True
    # The interpreter's own options come before ``-m``; a later "-m" belongs to a script.
    argv = getattr(sys, "orig_argv", [])
    i = 1
    while i < len(argv):
        arg = argv[i]
        if arg == "-m":
            return argv[i + 1 : i + 2] == ["kzoo"]
        if arg.startswith("-m"):
            return arg == "-mkzoo"
        if not arg.startswith("-") or arg.startswith("-c") or arg == "--":
            return False
        i += 2 if arg in ("-X", "-W") else 1
    return False


try:
    check_backend_env()
except ValueError as _error:
    # The `kzoo` command reports user mistakes as one line; the check has to run before keras
    # is imported, which is before the command's own error handling exists.
    if _running_as_cli():
        print(f"kzoo: error: {_error}", file=sys.stderr)
        raise SystemExit(2) from None
    raise

# True in the kzoo command until its arguments have parsed (then ``_import_all`` runs). The
# parsers read defaults from light modules inside packages whose ``__init__`` imports keras
# (``kzoo.models.detr.recipe``, ``...training.config``); those packages (``_LIGHT_PACKAGES``)
# skip importing their contents while it is set.
_light = _running_as_cli()
_LIGHT_PACKAGES = ("kzoo.models.detr", "kzoo.models")  # inner first: the outer imports from it

if _light:
    # TensorFlow's C++ notes (oneDNN, CPU instruction sets) would bury the command's own few
    # lines; they are printed when TensorFlow loads, so the level is set before anything can
    # load it. A level the user set stays.
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
    global _light, load_preset
    import keras  # noqa: F401

    if _light:
        import importlib

        _light = False
        for name in _LIGHT_PACKAGES:
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


if not _light:
    _import_all()
