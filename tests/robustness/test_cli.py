"""Issue #17, items 1, 2 and 8 through the real command.

Every mistake ends with exit status 2 and one ``kzoo: error:`` line naming the option, before
any model runs; nothing the user owns is deleted or overwritten. Checks that need a process of
their own (a mount namespace, ``train``'s global seeding) and those refused before the
frameworks load run ``python -m kzoo``; the others run the same ``main`` in this process.
"""

import importlib.util
import json
import os
import shutil
import stat
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from tests.robustness.support import (
    ROOT,
    assert_cli_error,
    kzoo,
    kzoo_in_process,
    kzoo_parallel,
    tiny_detr,
    tree,
)


def _checkpoints():
    name = "detr_checkpoints"
    if name not in sys.modules:
        path = os.path.join(ROOT, "tests", "models", "detr", "detr_checkpoints.py")
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        sys.modules[name] = module
    return sys.modules[name]


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """A tiny DETR preset and a JPEG photo, shared by the module's tests."""
    root = tmp_path_factory.mktemp("cli")
    tiny_detr().save_to_preset(root / "preset")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (40, 56, 3), dtype=np.uint8)).save(root / "photo.jpg")
    return root


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return _checkpoints().reference(tmp_path_factory, "coco_tiny") / "detr-tiny.pth"


def _predict_call(work, image=None, out=None, prefix=()):
    args = ["predict", "detr", "--preset", work / "preset", "--image", image or work / "photo.jpg"]
    args += ["--threshold", "0", "--shortest-edge", "32", "--longest-edge", "64"]
    return [*args, *(["--out", out] if out is not None else [])], {"prefix": prefix}


def _predict(work, image=None, out=None, prefix=()):
    """``kzoo predict detr`` as its own process (under ``prefix``)."""
    args, kwargs = _predict_call(work, image, out, prefix)
    return kzoo(*args, **kwargs)


def _predicts(work, *calls, in_process=True):
    """Several predictions, each given as a dict of ``_predict`` arguments; as processes, at
    once."""
    if in_process:
        return [kzoo_in_process(*_predict_call(work, **call)[0]) for call in calls]
    return kzoo_parallel(*(_predict_call(work, **call) for call in calls))


# ----------------------------------------------------------------------------- item 1


def test_convert_into_a_project_directory_deletes_nothing(tmp_path, checkpoint):
    project = tmp_path / "myproject"
    project.mkdir()
    (project / "train.py").write_text("# my code")
    (project / "data").mkdir()
    (project / "data" / "labels.csv").write_text("a,b")
    before = tree(project)
    result = kzoo_in_process("convert", "detr", checkpoint, ".", cwd=project)
    line = assert_cli_error(result, "not a kzoo preset", "train.py", "--force")
    assert "force=True" not in line
    assert tree(project) == before
    # Asked for explicitly, the directory is replaced by the preset.
    forced = kzoo_in_process("convert", "detr", checkpoint, project, "--force")
    assert forced.returncode == 0, forced.stderr[-3000:]
    assert sorted(os.listdir(project)) == ["config.json", "metadata.json", "model.weights.h5"]


def test_convert_refuses_an_existing_preset_with_the_cli_flag(tmp_path, work, checkpoint):
    shutil.copytree(work / "preset", tmp_path / "p")
    before = tree(tmp_path / "p")
    result = kzoo_in_process("convert", "detr", checkpoint, tmp_path / "p", "--no-overwrite")
    line = assert_cli_error(result, "already holds a kzoo preset", "drop --no-overwrite")
    assert "overwrite=True" not in line
    assert tree(tmp_path / "p") == before


# ----------------------------------------------------------------------------- item 2


def test_predict_never_overwrites_its_input_image(tmp_path, work):
    photo = tmp_path / "photo.jpg"
    shutil.copy(work / "photo.jpg", photo)
    before = photo.read_bytes()
    os.link(photo, tmp_path / "alias.jpg")  # the same file under another name
    same, alias = _predicts(
        work, dict(image=photo, out=photo), dict(image=photo, out=tmp_path / "alias.jpg")
    )
    assert_cli_error(same, "--out", "is the --image file")
    assert "detection" not in same.stdout  # refused before the model ran
    assert_cli_error(alias, "--out", "is the --image file")
    assert photo.read_bytes() == before


def test_predict_writes_the_format_its_extension_names(tmp_path, work):
    kinds = (("boxes.jpg", b"\xff\xd8\xff"), ("boxes.png", b"\x89PNG"))
    *written, text = _predicts(
        work, *(dict(out=tmp_path / name) for name, _ in kinds), dict(out=tmp_path / "boxes.txt")
    )
    for (name, magic), result in zip(kinds, written):
        assert result.returncode == 0, result.stderr[-3000:]
        assert (tmp_path / name).read_bytes()[: len(magic)] == magic, name
        assert Image.open(tmp_path / name).size == (56, 40)
    assert_cli_error(text, "--out", "image extension")


# ----------------------------------------------------------------------------- item 8


def test_unwritable_out_is_refused_before_inference(tmp_path, work):
    readonly = tmp_path / "old.png"
    readonly.write_bytes(b"keep me")
    readonly.chmod(0o444)
    (tmp_path / "afile").write_text("x")
    # Refused before the frameworks load, so as processes: the check a user's shell meets.
    result, under_file = _predicts(
        work, dict(out=readonly), dict(out=tmp_path / "afile" / "boxes.png"), in_process=False
    )
    assert_cli_error(result, "--out", "read-only")
    assert "detection" not in result.stdout
    assert readonly.read_bytes() == b"keep me"
    assert_cli_error(under_file, "--out", "not a directory")


def _read_only(directory):
    """A command prefix under which ``directory`` cannot be written, or None."""
    if os.geteuid() != 0:
        directory.chmod(0o555)
        return None if os.access(directory, os.W_OK) else ()
    # Root writes through any permission bits: mount a read-only filesystem on the directory
    # in a private mount namespace instead.
    mount = f"mount -t tmpfs -o ro,size=1m tmpfs {directory}"
    probe = subprocess.run(["unshare", "-m", "sh", "-c", mount], capture_output=True)
    if shutil.which("unshare") is None or probe.returncode != 0:
        return None
    return ("unshare", "-m", "sh", "-c", f'{mount} && exec "$@"', "sh")


def test_out_on_a_read_only_filesystem_or_directory(tmp_path, work):
    locked = tmp_path / "locked"
    locked.mkdir()
    prefix = _read_only(locked)
    if prefix is None:
        pytest.skip("cannot make a directory unwritable here")
    result = _predict(work, out=locked / "sub" / "boxes.png", prefix=prefix)
    assert_cli_error(result, "--out", "not writable")
    assert "detection" not in result.stdout
    assert os.listdir(locked) == []


def test_an_output_folder_that_refuses_new_files_is_found_before_training(tmp_path):
    """Issue #24 item 10: an existing --output-dir on a filesystem that refuses new files
    (sysfs, as /sys) although its parent is writable and ``os.access`` says yes to root."""
    run = tmp_path / "run"
    run.mkdir()
    mount = f"mount -t sysfs sysfs {run}"
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("mounting a filesystem in a private namespace needs root and unshare")
    if subprocess.run(["unshare", "-m", "sh", "-c", mount], capture_output=True).returncode:
        pytest.skip("cannot mount sysfs in a private mount namespace here")
    prefix = ("unshare", "-m", "sh", "-c", f'{mount} && exec "$@"', "sh")
    result = kzoo("train", "convlstm-color", "--output-dir", run, "--epochs", "1", prefix=prefix)
    assert_cli_error(result, f"--output-dir '{run}'", f"the directory {run} is not writable")
    assert "loss" not in result.stdout
    assert os.listdir(run) == []


def test_paths_that_are_not_image_files(tmp_path, work):
    os.mkfifo(tmp_path / "pipe.jpg")
    side = int(np.sqrt(2 * Image.MAX_IMAGE_PIXELS)) + 16
    Image.new("1", (side, side)).save(tmp_path / "bomb.png")
    # A folder is predicted image by image; one holding no image file (a FIFO named .jpg is
    # not a file) is refused.
    (tmp_path / "nothing").mkdir()
    os.mkfifo(tmp_path / "nothing" / "pipe.jpg")
    folder, fifo, bomb = _predicts(
        work,
        dict(image=tmp_path / "nothing"),
        dict(image=tmp_path / "pipe.jpg"),
        dict(image=tmp_path / "bomb.png"),
    )
    assert_cli_error(folder, "--image", "folder without image files")
    assert_cli_error(fifo, "--image", "FIFO")
    assert_cli_error(bomb, "--image", "too large")


def test_convert_mistakes(tmp_path, work, checkpoint):
    # Bytes torch's legacy reader chokes on differently from a JPEG's (it raised KeyError: 101).
    (tmp_path / "image.jpg").write_text("hello, not an image at all")
    photo, text, heads = (
        kzoo_in_process("convert", "detr", work / "photo.jpg", tmp_path / "p"),
        kzoo_in_process("convert", "detr", tmp_path / "image.jpg", tmp_path / "p"),
        kzoo_in_process("convert", "detr", checkpoint, tmp_path / "p", "--num-heads", "0"),
    )
    assert_cli_error(photo, "photo.jpg", "PyTorch checkpoint")
    assert_cli_error(text, "image.jpg", "not a PyTorch checkpoint")
    assert_cli_error(heads, "--num-heads must be >= 1")
    assert not os.path.exists(tmp_path / "p")


def test_invalid_metadata_json(tmp_path, work):
    shutil.copytree(work / "preset", tmp_path / "p")
    (tmp_path / "p" / "metadata.json").write_text("{broken")
    args = ["predict", "detr", "--preset", tmp_path / "p", "--image", work / "photo.jpg"]
    result = kzoo_in_process(*args, "--out", tmp_path / "b.png")
    assert_cli_error(result, "metadata.json", "not valid JSON")


def test_list_with_an_unknown_model_class():
    result = kzoo_in_process("list", "--model", "Nope")
    line = assert_cli_error(result, "--model 'Nope'", "Classes with presets:")
    assert "DETR" in line


def test_generic_out_check_covers_every_command(tmp_path):
    readonly = tmp_path / "grid.png"
    readonly.write_bytes(b"keep")
    readonly.chmod(stat.S_IRUSR)
    result = kzoo("predict", "convlstm-color", "--out", readonly)
    assert_cli_error(result, "--out", "read-only")
    assert readonly.read_bytes() == b"keep"


TINY = [
    "--epochs", "1", "--batch-size", "2", "--train-images", "2", "--eval-images", "2",
    "--image-size", "32", "--num-queries", "4", "--max-objects", "2", "--d-model", "16",
    "--num-heads", "2", "--num-encoder-layers", "1", "--num-decoder-layers", "2",
    "--ffn-dim", "16", "--verbose", "0",
]  # fmt: skip


def _interrupted_run(out, *args):
    """A run directory as an interrupted ``kzoo train detr`` leaves it: a backup of epoch 1."""
    backup = out / "backup"
    backup.mkdir(parents=True)
    code = (
        "import sys, argparse\n"
        "from kzoo.cli.detr import train as t\n"
        "from kzoo.models.detr.training import engine\n"
        "p = argparse.ArgumentParser(); t.add_arguments(p)\n"
        f"a = p.parse_args({[*TINY, *args]!r})\n"
        "c = t.config_from_args(a).resolved()\n"
        "m = engine.synthetic_model(c); m.optimizer.build(m.trainable_variables)\n"
        f"m.save_weights({str(backup / 'latest.weights.h5')!r})\n"
        f"open({str(backup / 'training_metadata.json')!r}, 'w').write('{{\"epoch\": 0}}')\n"
    )
    env = dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="3")
    proc = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_resuming_with_another_architecture_says_what_differs(tmp_path):
    # The recorded architecture is compared before any model is built; the backup's content
    # does not matter for the check, only that there is one to resume.
    out = tmp_path / "run"
    (out / "backup").mkdir(parents=True)
    (out / "backup" / "training_metadata.json").write_text('{"epoch": 0}')
    (out / "architecture.json").write_text(
        json.dumps(
            {"num_classes": 3, "num_queries": 4, "d_model": 16, "num_heads": 2,
             "num_encoder_layers": 1, "num_decoder_layers": 2, "ffn_dim": 16}
        )
    )  # fmt: skip
    result = kzoo("train", "detr", "--out", out, *TINY, "--d-model", "32")
    assert_cli_error(result, "--d-model 16 (now 32)", "--fresh")


@pytest.mark.slow
def test_resuming_a_backup_without_a_record_gives_the_fresh_hint(tmp_path):
    # A backup from before runs recorded their architecture: keras's own load fails, and its
    # multi-line list becomes one line with the way out.
    out = tmp_path / "run"
    _interrupted_run(out)
    result = kzoo("train", "detr", "--out", out, *TINY, "--d-model", "32", timeout=600)
    assert_cli_error(result, "different architecture", "--fresh")
