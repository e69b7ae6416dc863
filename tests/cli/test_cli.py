import json
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


def test_info_keeps_the_table_of_op_implementations(capsys):
    # The demo no longer prints it (issue #24 item 6): `kzoo info` is where it lives.
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert "op implementations (this machine):" in out
    backend = keras.backend.backend()
    rows = [line for line in out.splitlines() if line.startswith(" * ")]
    assert any(line.split()[1:3] == ["layer_norm", backend] for line in rows)
    assert all(line.split()[2] == backend for line in rows)  # * marks this backend's rows


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
    for command in (
        "info",
        "list",
        "train",
        "predict",
        "convert",
        "eval",
        "export",
        "bench",
        "demo",
    ):
        with pytest.raises(SystemExit) as exit_info:
            parser.parse_args([command, "--help"])
        assert exit_info.value.code == 0


# What TensorFlow's C++ code prints on stderr when it loads (TF_CPP_MIN_LOG_LEVEL hides only some).
TF_LOG_MARKERS = ("cpu_feature_guard", "oneDNN", "absl::InitializeLog", "port.cc")
FRAMEWORKS = {"keras", "tensorflow", "torch", "jax", "jaxlib", "numpy"}


def _imported_top_level(importtime_stderr):
    """The top-level packages in ``python -X importtime``'s report."""
    names = set()
    for line in importtime_stderr.splitlines():
        if line.startswith("import time:") and line.count("|") == 2:
            name = line.rsplit("|", 1)[1].strip()
            names.add(name.split(".")[0])
    return names


@pytest.mark.parametrize(
    "argv, code, last_line",
    [
        (["--help"], 0, None),
        (["train", "--help"], 0, None),
        (["export", "--help"], 0, None),
        # A target's own flags: DETR's defaults come from its recipe and TrainConfig.
        (["train", "detr", "--help"], 0, None),
        (
            ["train", "detr", "--epochs", "x"],
            2,
            "kzoo train detr: error: argument --epochs: invalid int",
        ),
        (["trian"], 2, "kzoo: error: argument COMMAND: invalid choice: 'trian'"),
    ],
)
def test_help_and_argument_errors_load_no_framework(argv, code, last_line):
    """Issue #24 item 6: `kzoo --help` with no KERAS_BACKEND loaded keras and TensorFlow, whose
    C++ logging (oneDNN, cpu_feature_guard) came before the usage text."""
    env = {
        k: v for k, v in os.environ.items() if k not in ("KERAS_BACKEND", "TF_CPP_MIN_LOG_LEVEL")
    }
    env["PYTHONPATH"] = ROOT
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "kzoo", *argv],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == code, proc.stderr[-3000:]
    imported = _imported_top_level(proc.stderr)
    assert "kzoo" in imported and "argparse" in imported  # the report is read correctly
    assert not imported & FRAMEWORKS, sorted(imported & FRAMEWORKS)
    printed = proc.stdout + "".join(
        line + "\n" for line in proc.stderr.splitlines() if not line.startswith("import time:")
    )
    assert not [m for m in TF_LOG_MARKERS if m in printed], printed[:2000]
    if code == 0:
        assert proc.stdout.startswith("usage: kzoo")
    else:
        assert printed.strip().splitlines()[-1].startswith(last_line)


def test_import_kzoo_as_a_library_still_loads_keras_and_the_models():
    code = (
        "import sys, kzoo\n"
        "print('keras' in sys.modules, kzoo.models.DETR.__name__, kzoo.load_preset.__name__,\n"
        "      kzoo.models.detr.TrainConfig.__name__)\n"
    )
    env = dict(os.environ, PYTHONPATH=ROOT, KERAS_BACKEND=keras.backend.backend())
    proc = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split() == ["True", "DETR", "load_preset", "TrainConfig"]


@pytest.mark.parametrize(
    "orig_argv, argv0, expected",
    [
        (["python", "-m", "kzoo", "info"], "-m", True),
        (["python", "-X", "importtime", "-m", "kzoo", "--help"], "-m", True),
        (["python", "-mkzoo"], "-m", True),
        (["python", "-m", "pytest", "-m", "kzoo"], "-m", False),
        (["python", "script.py", "-m", "kzoo"], "script.py", False),
        (["python", "-c", "import kzoo", "-m", "kzoo"], "-c", False),
        # The console script; a later "-m" is the command's own argument.
        (["python", "/venv/bin/kzoo", "bench", "x", "-m", "y"], "/venv/bin/kzoo", True),
    ],
)
def test_running_as_the_command_is_read_from_the_interpreter_options(
    orig_argv, argv0, expected, monkeypatch
):
    from kzoo import _command

    monkeypatch.setattr(sys, "orig_argv", orig_argv)
    monkeypatch.setattr(sys, "argv", [argv0] + orig_argv[2:])
    assert _command.running_as_command() is expected


# The command runs on TensorFlow whatever this run's backend is: run once, in TensorFlow's run.
@pytest.mark.backends("tensorflow")
@pytest.mark.parametrize("level", [None, "0"])
def test_commands_quiet_tensorflow_notes_unless_the_user_chose_a_level(level):
    # TF_CPP_MIN_LOG_LEVEL has to be set before TensorFlow loads, which for the command is after
    # the arguments have parsed; every command, not only the demo.
    env = dict(os.environ, KERAS_BACKEND="tensorflow", PYTHONPATH=ROOT)
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)
    if level is not None:
        env["TF_CPP_MIN_LOG_LEVEL"] = level
    proc = subprocess.run(
        [sys.executable, "-m", "kzoo", "info"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "backend   tensorflow" in proc.stdout  # TensorFlow loaded
    # What level 2 hides: TensorFlow's note on CPU instructions, printed when it loads; a level
    # the user set stays.
    assert ("cpu_feature_guard" in proc.stderr) is (level == "0"), proc.stderr[-3000:]


def test_unknown_benchmark_is_one_line_error(capsys):
    assert main(["bench", "no_such_bench"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("kzoo: error: no benchmark named 'no_such_bench'")


def test_unknown_benchmark_lists_the_benchmarks_in_scripts_bench(capsys):
    assert main(["bench", "no_such_bench"]) == 2
    listed = capsys.readouterr().err.strip().split("; available: ")[1].split(", ")
    assert {"convlstm", "cp_torch", "detr", "detr_train", "layernorm"} <= set(listed)
    assert "convlstm_grid" not in listed  # the grid the ConvLSTM benchmark reads, not a script


def test_bench_runs_the_script_from_scripts_bench(tmp_path, monkeypatch):
    # --from-json --plot draws saved grid figures without timing anything.
    monkeypatch.setattr(sys, "argv", list(sys.argv))  # the command replaces sys.argv
    runs = tmp_path / "run.json"
    runs.write_text(json.dumps([{"backend": "torch", "name": "mnist-like", "speedup": 1.1}]))
    out = tmp_path / "grid.png"
    with pytest.raises(SystemExit) as exit_info:  # the script ends with sys.exit(main())
        main(["bench", "convlstm", "--from-json", str(runs), "--plot", str(out)])
    assert exit_info.value.code == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


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


@pytest.mark.parametrize(
    "argv, option",
    [
        (["predict", "convlstm-color", "--out", "/sys/kzoo-x.png"], "--out '/sys/kzoo-x.png'"),
        (["predict", "convlstm-color", "--out", "/sys/new/x.gif"], "--out '/sys/new/x.gif'"),
        (["train", "convlstm-color", "--output-dir", "/sys/run"], "--output-dir '/sys/run'"),
        (["export", "convlstm-color", "--format", "onnx", "--out", "/sys/m.onnx"], "--out"),
    ],
)
def test_outputs_on_a_read_only_filesystem_are_refused_before_any_work(argv, option, capsys):
    """Issue #24 item 10: ``os.access`` says root may write /sys, so ``--out /sys/x.png`` ran
    the whole inference and then failed naming a hidden temporary file. Creating a file there
    is tried instead, before anything runs."""
    from kzoo.utils.files import write_probe

    if write_probe("/sys") is None:
        pytest.skip("/sys accepts new files here; no read-only filesystem to test with")
    assert main(argv) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"kzoo: error: {option}"), captured.err
    assert "/sys is not writable" in lines[0] and "kzoo-tmp" not in lines[0]
    assert captured.out == ""  # nothing ran


@pytest.mark.backends("tensorflow")
def test_a_value_error_tf_data_wrapped_is_reported_as_its_own_line():
    # What tf.data makes of a ValueError a PyDataset raises after the batches keras peeks at.
    import tensorflow as tf

    from kzoo.cli.main import wrapped_value_error

    def batches():
        yield 1.0
        raise ValueError("train.json: image id 5 (a.png) cannot be read: too large")

    dataset = tf.data.Dataset.from_generator(batches, output_signature=tf.TensorSpec((), "float32"))
    with pytest.raises(tf.errors.OpError) as error:
        list(dataset)
    assert "Traceback" in str(error.value)
    expected = "train.json: image id 5 (a.png) cannot be read: too large"
    assert wrapped_value_error(error.value) == expected
    # Errors that are not a framework's wrapping stay bugs with their traceback.
    assert wrapped_value_error(RuntimeError("ValueError: x")) is None
    assert wrapped_value_error(tf.errors.InternalError(None, None, "no python error")) is None
