"""Issue #17, items 1, 3 and 7: saving never deletes a user's files, survives a crash at any
instant, follows the umask, and loading never accepts unverified weights."""

import json
import os
import stat
import subprocess
import sys

import keras
import numpy as np
import pytest

from kzoo import presets
from kzoo.presets import preset_io
from kzoo.utils import files
from kzoo.utils.files import sha256_file
from tests.presets.tiny_model import TinyPresetModel, build
from tests.robustness.support import ROOT, tree

X = np.linspace(-1, 1, 12, dtype="float32").reshape(4, 3)


def _out(model):
    return keras.ops.convert_to_numpy(model(X))


def _user_project(path):
    path.mkdir()
    (path / "README.md").write_text("my notes")
    (path / "src").mkdir()
    (path / "src" / "main.py").write_text("print('hi')")
    return tree(path)


def _dead_pid():
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


# ----------------------------------------------------------------------------- item 1


def test_save_refuses_a_directory_holding_user_files(tmp_path):
    before = _user_project(tmp_path / "project")
    with pytest.raises(ValueError, match=r"not a kzoo preset .*README\.md.*force=True") as info:
        build().save_to_preset(tmp_path / "project")
    assert str(tmp_path / "project") in str(info.value)
    assert tree(tmp_path / "project") == before


def test_save_refuses_user_files_even_beside_a_preset(tmp_path):
    build(seed=1).save_to_preset(tmp_path / "p")
    (tmp_path / "p" / "notes.txt").write_text("mine")
    before = tree(tmp_path / "p")
    with pytest.raises(ValueError, match="notes.txt"):
        build(seed=2).save_to_preset(tmp_path / "p")
    assert tree(tmp_path / "p") == before


def test_force_replaces_the_directory(tmp_path):
    _user_project(tmp_path / "project")
    model = build(seed=3)
    model.save_to_preset(tmp_path / "project", force=True)
    assert sorted(os.listdir(tmp_path / "project")) == sorted(preset_io.PRESET_FILES)
    np.testing.assert_array_equal(
        _out(TinyPresetModel.from_preset(str(tmp_path / "project"))), _out(model)
    )


def test_existing_preset_is_replaced_or_refused_by_overwrite(tmp_path):
    build(seed=1).save_to_preset(tmp_path / "p")
    before = tree(tmp_path / "p")
    with pytest.raises(ValueError, match="already holds a kzoo preset; pass overwrite=True"):
        build(seed=2).save_to_preset(tmp_path / "p", overwrite=False)
    assert tree(tmp_path / "p") == before
    second = build(seed=2)
    second.save_to_preset(tmp_path / "p")  # the default replaces a preset
    np.testing.assert_array_equal(
        _out(TinyPresetModel.from_preset(str(tmp_path / "p"))), _out(second)
    )
    assert os.listdir(tmp_path) == ["p"]


def test_empty_directory_and_new_path_are_written(tmp_path):
    (tmp_path / "empty").mkdir()
    build().save_to_preset(tmp_path / "empty", overwrite=False)
    build().save_to_preset(tmp_path / "a" / "b" / "new", overwrite=False)
    for path in (tmp_path / "empty", tmp_path / "a" / "b" / "new"):
        assert sorted(os.listdir(path)) == sorted(preset_io.PRESET_FILES)


def test_a_file_is_never_replaced_by_a_preset(tmp_path):
    (tmp_path / "p").write_text("a file")
    for force in (False, True):
        with pytest.raises(ValueError, match="is not a directory"):
            build().save_to_preset(tmp_path / "p", force=force)
    assert (tmp_path / "p").read_text() == "a file"


def test_contradictory_and_wrongly_typed_options(tmp_path):
    with pytest.raises(ValueError, match="force=True .* needs overwrite=True"):
        build().save_to_preset(tmp_path / "p", overwrite=False, force=True)
    with pytest.raises(ValueError, match="overwrite must be True or False"):
        build().save_to_preset(tmp_path / "p", overwrite="yes")


def test_a_symlinked_preset_is_replaced_through_the_link(tmp_path):
    build(seed=1).save_to_preset(tmp_path / "real")
    os.symlink(tmp_path / "real", tmp_path / "link")
    second = build(seed=2)
    second.save_to_preset(tmp_path / "link")
    assert os.path.islink(tmp_path / "link")
    np.testing.assert_array_equal(
        _out(TinyPresetModel.from_preset(str(tmp_path / "real"))), _out(second)
    )


# ----------------------------------------------------------------------------- item 3


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_saved_presets_follow_the_umask(tmp_path, umask):
    old = os.umask(umask)
    try:
        build().save_to_preset(tmp_path / "p")
        build().save_to_preset(tmp_path / "p")  # replacing, too
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(tmp_path / "p").st_mode) == 0o777 & ~umask
    for name in preset_io.PRESET_FILES:
        assert stat.S_IMODE(os.stat(tmp_path / "p" / name).st_mode) == 0o666 & ~umask, name


def test_atomic_file_follows_the_umask(tmp_path):
    old = os.umask(0o007)
    try:
        with files.atomic_file(tmp_path / "f.txt", "w") as f:
            f.write("x")
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(tmp_path / "f.txt").st_mode) == 0o660


def test_next_file_write_removes_temporaries_of_killed_writes(tmp_path):
    stale = tmp_path / f".f.txt.{files.TMP_TAG}.{_dead_pid()}.0123abcd"
    stale.write_text("half")
    with files.atomic_file(tmp_path / "f.txt", "w") as f:
        f.write("whole")
    assert os.listdir(tmp_path) == ["f.txt"]


def test_replacing_swaps_in_one_step_when_the_os_can(tmp_path):
    # renameat2(RENAME_EXCHANGE) is what makes the name never empty; make sure it is really used
    # on this machine (Linux) rather than the two-rename fallback.
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x").write_text("a")
    (tmp_path / "b").mkdir()
    if not files._exchange(str(tmp_path / "a"), str(tmp_path / "b")):
        pytest.skip("this OS or filesystem has no atomic directory exchange")
    assert os.listdir(tmp_path / "b") == ["x"] and os.listdir(tmp_path / "a") == []


def test_crash_between_the_fallback_renames_is_recovered_on_load(tmp_path):
    # What a save killed between its two renames leaves (today's kzoo, or the fallback path on
    # a filesystem without an atomic exchange): no preset under the name, the old one aside.
    model = build(seed=4)
    model.save_to_preset(tmp_path / "staging")
    os.rename(tmp_path / "staging", tmp_path / f".p.{files.OLD_TAG}.{_dead_pid()}.0a1b2c3d")
    loaded = TinyPresetModel.from_preset(str(tmp_path / "p"))
    np.testing.assert_array_equal(_out(loaded), _out(model))
    assert os.listdir(tmp_path) == ["p"]


def test_crash_left_by_earlier_kzoo_is_recovered(tmp_path):
    # kzoo before this fix named the set-aside preset with tempfile.mkdtemp: ".p.XXXXXXXX.old".
    model = build(seed=5)
    model.save_to_preset(tmp_path / "staging")
    os.rename(tmp_path / "staging", tmp_path / ".p.k2j4h_9z.old")
    np.testing.assert_array_equal(
        _out(TinyPresetModel.from_preset(str(tmp_path / "p"))), _out(model)
    )


def test_next_save_removes_temporaries_of_dead_saves(tmp_path):
    build(seed=1).save_to_preset(tmp_path / "p")
    dead = _dead_pid()
    leftovers = [
        f".p.{files.TMP_TAG}.{dead}.deadbeef",  # a save killed while writing
        f".p.{files.OLD_TAG}.{dead}.feedf00d",  # killed while deleting the replaced preset
        ".p.ab12cd34.tmp",  # earlier kzoo versions' names
        ".p.ef56gh78.old",
    ]
    for name in leftovers:
        (tmp_path / name).mkdir()
        (tmp_path / name / "model.weights.h5").write_bytes(b"partial")
    alive = tmp_path / f".p.{files.TMP_TAG}.{os.getppid()}.0badcafe"  # a live process's save
    alive.mkdir()
    # A user's own directory that happens to fit the old naming is not kzoo's to delete.
    mine = tmp_path / ".p.mynotes1.tmp"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    build(seed=2).save_to_preset(tmp_path / "p")
    assert sorted(os.listdir(tmp_path)) == sorted(["p", alive.name, mine.name])
    assert (mine / "notes.txt").read_text() == "mine"


SAVE_LOOP = """
import sys
sys.path.insert(0, {root!r})
import numpy as np
from kzoo.utils import files
from tests.presets.tiny_model import build
if sys.argv[2] == "fallback":
    files._exchange = lambda a, b: False  # as on an OS/filesystem without RENAME_EXCHANGE
models = [build(units={units}, seed=1), build(units={units}, seed=2)]
for i, m in enumerate(models):
    np.savez(sys.argv[3] + f"{{i}}.npz", *m.get_weights())
print("ready", flush=True)
i = 0
while True:
    models[i % 2].save_to_preset(sys.argv[1])
    i += 1
    print("saved", i, flush=True)
"""


def _kill_during_saves(tmp_path, mode, kills, rng):
    import signal
    import time

    target = tmp_path / "presets" / "p"
    script = SAVE_LOOP.format(root=ROOT, units=60_000)
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    expected = None
    interrupted = 0
    for _ in range(kills):
        proc = subprocess.Popen(
            [sys.executable, "-c", script, str(target), mode, str(tmp_path / "w")],
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        try:
            assert proc.stdout.readline().startswith("ready")
            if expected is None:
                expected = [list(np.load(tmp_path / f"w{i}.npz").values()) for i in (0, 1)]
            assert proc.stdout.readline().startswith("saved")  # at least one complete save
            time.sleep(rng.uniform(0.0, 0.6))
            proc.send_signal(signal.SIGKILL)
        finally:
            proc.kill()
            proc.wait()
        interrupted += any(name != "p" for name in os.listdir(target.parent))
        # Whatever instant the kill hit, the name holds a whole preset: the old or the new.
        loaded = TinyPresetModel.from_preset(str(target)).get_weights()
        assert any(
            all(np.array_equal(a, b) for a, b in zip(loaded, weights)) for weights in expected
        )
    # The next save leaves nothing but the preset.
    build(units=7).save_to_preset(target)
    assert os.listdir(target.parent) == ["p"]
    assert TinyPresetModel.from_preset(str(target)).units == 7
    return interrupted


@pytest.mark.parametrize("mode", ["exchange", "fallback"])
def test_sigkill_during_a_save_leaves_a_loadable_preset(tmp_path, mode):
    _kill_during_saves(tmp_path, mode, kills=1, rng=np.random.default_rng(0))


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["exchange", "fallback"])
def test_sigkill_at_random_instants_during_saves(tmp_path, mode):
    interrupted = _kill_during_saves(tmp_path, mode, kills=4, rng=np.random.default_rng(17))
    # The process saves without pause, so kills land inside saves (leaving temporaries that
    # the loads above and the final save had to handle), not only between them.
    assert interrupted >= 1


# ----------------------------------------------------------------------------- item 7


def test_flipped_weights_without_metadata_are_refused(tmp_path):
    build().save_to_preset(tmp_path / "p")
    os.remove(tmp_path / "p" / "metadata.json")
    weights = tmp_path / "p" / "model.weights.h5"
    data = bytearray(weights.read_bytes())
    data[-200] ^= 0x01  # deep in the data: h5 still opens and would load a wrong value
    weights.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="no metadata.json.*unverified weights"):
        TinyPresetModel.from_preset(str(tmp_path / "p"))


@pytest.mark.parametrize("content", ["{not json", "[1, 2]", '{"weights_sha256": "abc"}'])
def test_invalid_metadata_is_a_clear_error(tmp_path, content):
    build().save_to_preset(tmp_path / "p")
    (tmp_path / "p" / "metadata.json").write_text(content)
    with pytest.raises(ValueError, match="metadata.json"):
        TinyPresetModel.from_preset(str(tmp_path / "p"))


@pytest.fixture
def archive(tmp_path, http_server):
    root, base = http_server
    model = build(units=3, seed=3)
    model.save_to_preset(tmp_path / "tiny")
    sha = presets.make_archive(tmp_path / "tiny", root / "tiny.tar.gz")
    return f"{base}/tiny.tar.gz", sha, _out(model)


def test_cached_extraction_is_checked_again_on_every_load(archive, keras_home):
    url, sha, expected = archive
    TinyPresetModel.from_preset(url, sha256=sha)
    (cached,) = (
        os.path.join(d, "model.weights.h5")
        for d, _, names in os.walk(keras_home)
        if "model.weights.h5" in names
    )
    # Alter the cached weights and their recorded sha256 together: the per-load weights check
    # alone cannot see this, the archive's manifest can.
    other = build(units=3, seed=99)
    other.save_weights(cached)
    folder = os.path.dirname(cached)
    meta = preset_io.read_metadata(folder)
    meta["weights_sha256"] = sha256_file(cached)
    with open(os.path.join(folder, "metadata.json"), "w") as f:
        json.dump(meta, f)
    again = TinyPresetModel.from_preset(url, sha256=sha)  # downloaded again
    np.testing.assert_array_equal(_out(again), expected)


def test_upper_case_sha256_is_accepted(archive, keras_home):
    url, sha, expected = archive
    model = TinyPresetModel.from_preset(url, sha256=sha.upper())
    np.testing.assert_array_equal(_out(model), expected)
    model = TinyPresetModel.from_preset(f"{url}#sha256={sha.upper()}")
    np.testing.assert_array_equal(_out(model), expected)


def test_malformed_sha256_is_refused_before_downloading(archive, keras_home):
    url, sha, _ = archive
    with pytest.raises(ValueError, match="sha256 must be 64 hexadecimal digits"):
        TinyPresetModel.from_preset(url, sha256=sha[:-1] + "g")
    assert not any(files for _, _, files in os.walk(keras_home))


@pytest.mark.parametrize("suffix", ["tmp", "old"])
def test_a_user_folder_named_like_a_legacy_temporary_is_kept_even_with_preset_files(
    tmp_path, suffix
):
    """Issue #24 item 15: a folder that fits earlier kzoo versions' temporary names
    (``.<name>.XXXXXXXX.tmp`` / ``.old``) and holds a ``config.json`` beside the user's own
    files is the user's: neither deleted by the cleanup of dead saves, nor renamed onto a
    missing preset. Only a folder holding nothing but preset files is treated as kzoo's."""
    mine = tmp_path / f".p.mywork01.{suffix}"
    mine.mkdir()
    (mine / "config.json").write_text('{"lr": 0.1}')
    (mine / "model.weights.h5").write_bytes(b"my weights")
    (mine / "notes.txt").write_text("mine")
    before = tree(mine)
    # The target missing (a crash between the fallback renames would leave that), then a
    # save and a load of it.
    assert files.recover_directory(tmp_path / "p") == []
    assert not (tmp_path / "p").exists()
    build(seed=3).save_to_preset(tmp_path / "p")
    TinyPresetModel.from_preset(str(tmp_path / "p"))
    assert tree(mine) == before
    assert sorted(os.listdir(tmp_path)) == sorted(["p", mine.name])
