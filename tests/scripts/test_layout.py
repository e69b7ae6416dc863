"""scripts/ runs with kzoo installed: no script edits ``sys.path``, and every script path the
docs, the tests, the scripts and kzoo's own modules name exists."""

import re

from tests.scripts.support import ROOT, SCRIPTS

# Any edit of the import path: insert, append, extend, slice assignment, +=, rebinding.
PATH_EDIT = re.compile(r"sys\.path\s*(\.\s*(insert|append|extend)\b|\[|\+=|=(?!=))")
# A script path as written in prose and code: ``scripts/bench/detr.py``, not
# ``tests/scripts/test_x.py``.
SCRIPT_PATH = re.compile(r"(?<![\w/.-])scripts/[a-z0-9_/]+\.py\b")


def test_the_pattern_finds_every_kind_of_path_edit():
    edits = [
        "sys.path.insert(0, ROOT)",
        "sys.path.append(ROOT)",
        "sys.path[:0] = [ROOT]",
        "sys.path += [ROOT]",
        "sys.path = [ROOT] + sys.path",
    ]
    assert all(PATH_EDIT.search(line) for line in edits)
    assert not PATH_EDIT.search("if sys.path == before:")
    assert not PATH_EDIT.search("print(sys.path)")


def test_no_script_edits_sys_path():
    scripts = sorted(SCRIPTS.rglob("*.py"))
    assert len(scripts) > 20
    offenders = [
        f"{path.relative_to(ROOT)}:{number}: {line.strip()}"
        for path in scripts
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if PATH_EDIT.search(line)
    ]
    assert offenders == []


def test_scripts_live_in_their_role_folders():
    top = sorted(p.name for p in SCRIPTS.glob("*.py"))
    # README, CI and the project guide name these two by their paths.
    assert top == ["gpu_check.py", "run_tests.py"]
    assert {p.name for p in SCRIPTS.iterdir() if p.is_dir() and p.name != "__pycache__"} == {
        "bench",
        "profile",
        "tools",
        "train",
    }


def test_every_script_path_named_in_docs_tests_and_scripts_exists():
    texts = [ROOT / "README.md", ROOT / "mkdocs.yml", ROOT / "pyproject.toml"]
    texts += sorted((ROOT / "docs").glob("*.md"))
    texts += sorted(SCRIPTS.rglob("*.py")) + sorted((ROOT / "tests").rglob("*.py"))
    texts += sorted((ROOT / "kzoo").rglob("*.py"))
    named = {
        (match, str(path.relative_to(ROOT)))
        for path in texts
        for match in SCRIPT_PATH.findall(path.read_text())
    }
    assert len(named) > 50
    missing = sorted((script, where) for script, where in named if not (ROOT / script).is_file())
    assert missing == []
