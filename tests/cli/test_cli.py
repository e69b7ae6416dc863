import os
import subprocess
import sys

import keras
import pytest

from kzoo.cli.main import build_parser, main

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _kzoo(*args, backend=None):
    env = dict(
        os.environ, KERAS_BACKEND=backend or keras.backend.backend(), TF_CPP_MIN_LOG_LEVEL="3"
    )
    return subprocess.run(
        [sys.executable, "-m", "kzoo", *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_info_reports_backend_versions_devices_and_kernels(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    backend = keras.backend.backend()
    assert f"backend   {backend} " in out
    assert f"keras     {keras.__version__}" in out
    assert "devices   " in out and "cpu" in out.lower()
    assert "kernels   on" in out


def test_info_with_kernels_off(capsys, monkeypatch):
    monkeypatch.setenv("KZOO_KERNELS", "off")
    assert main(["info"]) == 0
    assert "kernels   off" in capsys.readouterr().out


def test_list_prints_a_table(capsys):
    assert main(["list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:3] == ["name", "model", "license"]
    assert set(lines[1].replace(" ", "")) == {"-"}


def test_every_subcommand_has_help():
    parser = build_parser()
    for command in ("info", "list", "train", "predict", "convert", "bench", "demo"):
        with pytest.raises(SystemExit) as exit_info:
            parser.parse_args([command, "--help"])
        assert exit_info.value.code == 0


def test_unknown_benchmark_is_one_line_error(capsys):
    assert main(["bench", "no_such_bench"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("kzoo: error: no benchmark named 'no_such_bench'")


def test_python_m_kzoo_and_bad_backend_as_processes():
    ok = _kzoo("info")
    assert ok.returncode == 0, ok.stderr
    assert "keras     3." in ok.stdout
    bad = _kzoo("info", backend="pytorch")
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines()[-1].startswith("kzoo: error: KERAS_BACKEND='pytorch'")
    assert "Traceback" not in bad.stderr


def test_missing_command_is_usage_error():
    result = _kzoo()
    assert result.returncode == 2
    assert "usage: kzoo" in result.stderr
