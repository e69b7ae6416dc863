"""kzoo: a Keras 3 multi-backend model zoo.

The backend is chosen by ``KERAS_BACKEND``; kzoo imports no framework except through keras.
"""

import os
import sys

from kzoo.backend import check_backend_env
from kzoo.version import __version__

try:
    check_backend_env()
except ValueError as _error:
    # The `kzoo` command reports user mistakes as one line; the check has to run before keras
    # is imported, which is before the command's own error handling exists.
    if os.path.basename(sys.argv[0]) == "kzoo" or sys.argv[0].endswith(
        os.path.join("kzoo", "__main__.py")
    ):
        print(f"kzoo: error: {_error}", file=sys.stderr)
        raise SystemExit(2) from None
    raise

import keras  # noqa: E402,F401

from kzoo import data, distribution, kernels, layers, models, ops, presets  # noqa: E402,F401

__all__ = ["__version__", "data", "distribution", "kernels", "layers", "models", "ops", "presets"]
