"""What the tests of ``scripts/`` share: the checkout's root, a script loaded by its path, and
the environment a script runs in as its own process."""

import importlib.util
import os
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]
SCRIPTS = ROOT / "scripts"


def load(path):
    """``scripts/<path>`` as a fresh module: scripts/ is a folder of scripts, not a package."""
    name = "_script_" + path[:-3].replace("/", "_")
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # where dataclasses and pickling look a module up
    spec.loader.exec_module(module)
    return module


def env(**extra):
    """``os.environ`` with this checkout first on ``PYTHONPATH``, so that a script run as its
    own process imports the kzoo under test (and not another installed copy)."""
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    return dict(os.environ, PYTHONPATH=path, **extra)


def as_run(monkeypatch):
    """This process's environment and working directory as a script run from the checkout
    has them (see :func:`env`), for a script's ``main`` called here."""
    monkeypatch.setenv("PYTHONPATH", env()["PYTHONPATH"])
    monkeypatch.chdir(ROOT)
