"""kzoo's declared layering (pyproject's ``[tool.importlinter]``) holds, and its checks catch a break.

``scripts/run_tests.py`` runs ``lint-imports`` on the tree; these tests check that the checks
themselves work: an import against the layers, or a cycle, planted in a copy of the package is
reported (a contract that could not fail would prove nothing).
"""

import os
import shutil
import subprocess
import sys

import pytest

from tests.robustness.support import ROOT

LINT_IMPORTS = os.path.join(os.path.dirname(sys.executable), "lint-imports")
IMPORT_GRAPH = os.path.join(ROOT, "scripts", "tools", "import_graph.py")

pytestmark = pytest.mark.backends("jax")  # reads source only: once is enough


def _copy(tmp_path):
    shutil.copytree(
        os.path.join(ROOT, "kzoo"),
        tmp_path / "kzoo",
        ignore=shutil.ignore_patterns("__pycache__", "builtin"),
    )
    shutil.copy(os.path.join(ROOT, "pyproject.toml"), tmp_path / "pyproject.toml")
    return tmp_path


def _lint(root):
    # The copy, not the installed package: PYTHONPATH comes before the editable install.
    env = dict(os.environ, PYTHONPATH=str(root))
    return subprocess.run(
        [LINT_IMPORTS, "--no-cache"], cwd=root, env=env, capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip


def test_the_tree_keeps_every_contract():
    proc = _lint(ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert "Contracts: 3 kept, 0 broken." in proc.stdout


@pytest.mark.parametrize(
    "module, source, contract, message",
    [
        # utils is the bottom layer: reaching up into a model breaks the layers contract.
        ("kzoo/utils/upward.py", "import kzoo.models.detr\n", "BROKEN",
         "kzoo.utils is not allowed to import kzoo.models"),
        # the JAX backend reaching into torch's folder breaks the backends' independence.
        ("kzoo/backends/jax/sideways.py", "from kzoo.backends.torch import layout\n", "BROKEN",
         "kzoo.backends.jax is not allowed to import kzoo.backends.torch"),
    ],
)  # fmt: skip
def test_a_planted_import_against_the_layering_is_reported(
    tmp_path, module, source, contract, message
):
    root = _copy(tmp_path)
    with open(root / module, "w") as f:
        f.write(source)
    proc = _lint(root)
    assert proc.returncode == 1, proc.stdout[-3000:]
    assert message in proc.stdout
    assert module.replace("/", ".")[:-3] in proc.stdout


def test_import_graph_finds_no_cycle_in_kzoo():
    proc = subprocess.run([sys.executable, IMPORT_GRAPH], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-2000:]
    assert "module-level import cycles: 0" in proc.stdout
    assert "cycles counting function-level imports too: 0" in proc.stdout


def test_import_graph_reports_a_planted_cycle(tmp_path):
    root = _copy(tmp_path)
    # presets -> data at module level, data -> presets inside a function: a function-level cycle.
    with open(root / "kzoo/presets/knot.py", "w") as f:
        f.write("from kzoo.data import knot_back\n")
    with open(root / "kzoo/data/knot_back.py", "w") as f:
        f.write("def f():\n    from kzoo.presets import knot\n    return knot\n")
    proc = subprocess.run(
        [sys.executable, IMPORT_GRAPH, "--root", str(root / "kzoo")], capture_output=True, text=True
    )
    assert proc.returncode == 1, proc.stdout[-2000:]
    assert "module-level import cycles: 0" in proc.stdout
    assert "cycles counting function-level imports too: 1" in proc.stdout
    assert "kzoo.data.knot_back <-> kzoo.presets.knot" in proc.stdout
