import json
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest

from kzoo import presets
from kzoo.presets import preset_io
from tests.presets.tiny_model import TinyPresetModel, build

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
X = np.linspace(-1, 1, 12, dtype="float32").reshape(4, 3)


def test_save_and_load_round_trip(tmp_path):
    model = build(units=5)
    path = model.save_to_preset(tmp_path / "p")
    assert sorted(os.listdir(path)) == ["config.json", "metadata.json", "model.weights.h5"]
    meta = json.loads((tmp_path / "p" / "metadata.json").read_text())
    assert meta["backend"] == keras.backend.backend()
    assert meta["kzoo_version"]
    assert len(meta["weights_sha256"]) == 64
    loaded = TinyPresetModel.from_preset(str(tmp_path / "p"))
    assert loaded.units == 5
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(loaded(X)), keras.ops.convert_to_numpy(model(X))
    )


def test_load_weights_false_gives_fresh_weights(tmp_path):
    model = build()
    model.save_to_preset(tmp_path / "p")
    fresh = TinyPresetModel.from_preset(str(tmp_path / "p"), load_weights=False)
    fresh(X)
    assert not np.allclose(
        keras.ops.convert_to_numpy(fresh(X)), keras.ops.convert_to_numpy(model(X))
    )


def test_save_overwrites_atomically_and_failure_leaves_old_preset(tmp_path, monkeypatch):
    target = tmp_path / "p"
    build(seed=1).save_to_preset(target)
    before = (target / "model.weights.h5").read_bytes()

    def boom(*args, **kwargs):
        raise KeyboardInterrupt

    model = build(seed=2)
    monkeypatch.setattr(model, "save_weights", boom)
    with pytest.raises(KeyboardInterrupt):
        model.save_to_preset(target)
    # The interrupted save left the old preset whole and no temporary directory behind.
    assert (target / "model.weights.h5").read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["p"]


def test_interrupted_first_save_leaves_nothing(tmp_path, monkeypatch):
    model = build()
    monkeypatch.setattr(
        model, "save_weights", lambda *a, **k: (_ for _ in ()).throw(OSError("disk"))
    )
    with pytest.raises(OSError):
        model.save_to_preset(tmp_path / "new")
    assert os.listdir(tmp_path) == []


def test_unknown_preset_name_lists_close_matches(monkeypatch):
    info = presets.PresetInfo(name="tiny_test_preset", model_class="TinyPresetModel", location="x")
    monkeypatch.setitem(presets.registry._PRESETS, info.name, info)
    with pytest.raises(ValueError, match="Did you mean: tiny_test_preset"):
        TinyPresetModel.from_preset("tiny_tset_preset")


def test_missing_directory(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        TinyPresetModel.from_preset(str(tmp_path / "nope"))


def test_directory_without_config(tmp_path):
    with pytest.raises(ValueError, match="no config.json"):
        TinyPresetModel.from_preset(str(tmp_path))


def test_config_naming_unregistered_class(tmp_path):
    build().save_to_preset(tmp_path / "p")
    config = json.loads((tmp_path / "p" / "config.json").read_text())
    config["registered_name"] = "evil>Payload"
    config["class_name"] = "Payload"
    (tmp_path / "p" / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="did not register"):
        TinyPresetModel.from_preset(str(tmp_path / "p"))


@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_corrupt_weights_are_refused(tmp_path, damage):
    build().save_to_preset(tmp_path / "p")
    weights = tmp_path / "p" / "model.weights.h5"
    data = bytearray(weights.read_bytes())
    if damage == "truncate":
        data = data[: len(data) // 2]
    else:
        data[len(data) // 2] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="corrupt or truncated"):
        TinyPresetModel.from_preset(str(tmp_path / "p"))


def test_preset_without_metadata_is_refused(tmp_path):
    # Without metadata.json there is no sha256 to verify the weights against.
    build().save_to_preset(tmp_path / "p")
    os.remove(tmp_path / "p" / "metadata.json")
    with pytest.raises(ValueError, match="no metadata.json"):
        TinyPresetModel.from_preset(str(tmp_path / "p"))


def test_unreadable_weights_matching_their_sha256_are_clear(tmp_path):
    build().save_to_preset(tmp_path / "p")
    weights = tmp_path / "p" / "model.weights.h5"
    weights.write_bytes(weights.read_bytes()[:200])
    meta = json.loads((tmp_path / "p" / "metadata.json").read_text())
    meta["weights_sha256"] = preset_io.sha256_file(weights)
    (tmp_path / "p" / "metadata.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="Could not read weights"):
        TinyPresetModel.from_preset(str(tmp_path / "p"))


def test_save_to_preset_needs_built_model(tmp_path):
    with pytest.raises(ValueError, match="must be built"):
        TinyPresetModel().save_to_preset(tmp_path / "p")


def test_wrong_class_is_refused(tmp_path):
    build().save_to_preset(tmp_path / "p")

    class Other(presets.PresetMixin, keras.Model):
        pass

    with pytest.raises(ValueError, match="holds a TinyPresetModel"):
        Other.from_preset(str(tmp_path / "p"))


SAVE = """
import sys, numpy as np, keras
sys.path.insert(0, {root!r})
from tests.presets.tiny_model import build
m = build(units=6, seed=7)
m.save_to_preset(sys.argv[1])
np.save(sys.argv[1] + ".npy", keras.ops.convert_to_numpy(m(np.asarray({x!r}, "float32"))))
np.savez(sys.argv[1] + ".weights.npz", *m.get_weights())
"""
# Loads each (preset, output) pair of its arguments in turn.
LOAD = """
import sys, numpy as np, keras
sys.path.insert(0, {root!r})
from tests.presets.tiny_model import TinyPresetModel
for preset, out in zip(sys.argv[1::2], sys.argv[2::2]):
    m = TinyPresetModel.from_preset(preset)
    np.save(out, keras.ops.convert_to_numpy(m(np.asarray({x!r}, "float32"))))
    np.savez(out + ".weights.npz", *m.get_weights())
"""
BACKENDS = ("jax", "tensorflow", "torch")


def _run(code, backend, *args):
    env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="3")
    subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), *args], check=True, env=env, cwd=ROOT
    )


@pytest.fixture(scope="module")
def cross_backend(tmp_path_factory):
    """A preset saved on each backend, then loaded on each other one: one process a backend
    for the saves and one for the loads (a process's start costs more than its work).

    Returns the directory: ``saved_<backend>`` presets and ``<saved_on>_on_<backend>.npy``.
    """
    root = tmp_path_factory.mktemp("cross_backend")
    fmt = {"root": ROOT, "x": X.tolist()}
    for backend in BACKENDS:
        _run(SAVE.format(**fmt), backend, str(root / f"saved_{backend}"))
    for backend in BACKENDS:
        pairs = []
        for saved_on in BACKENDS:
            if saved_on != backend:
                pairs += [
                    str(root / f"saved_{saved_on}"),
                    str(root / f"{saved_on}_on_{backend}.npy"),
                ]
        _run(LOAD.format(**fmt), backend, *pairs)
    return root


@pytest.mark.slow
@pytest.mark.parametrize("saved_on", BACKENDS)
def test_preset_loads_identically_on_every_backend(cross_backend, saved_on):
    preset = str(cross_backend / f"saved_{saved_on}")
    expected = np.load(preset + ".npy")
    saved = np.load(preset + ".weights.npz")
    for backend in BACKENDS:
        if backend == saved_on:
            continue
        out = str(cross_backend / f"{saved_on}_on_{backend}.npy")
        loaded = np.load(out + ".weights.npz")
        assert len(saved.files) == len(loaded.files) == 4
        for key in saved.files:  # the weights arrive bit for bit
            np.testing.assert_array_equal(loaded[key], saved[key])
        # Outputs agree to float32 rounding: backends order their float operations differently.
        np.testing.assert_allclose(np.load(out), expected, rtol=1e-6, atol=1e-6)
    assert preset_io.read_metadata(preset)["backend"] == saved_on


def test_presets_import_no_model_and_list_every_builtin():
    import pathlib

    root = pathlib.Path(presets.__file__).parent
    for path in root.glob("*.py"):
        code = [line for line in path.read_text().splitlines() if "import" in line]
        assert not any("kzoo.models" in line for line in code), path
    code = "import kzoo.presets as p; print(sorted(x.name for x in p.list_presets()))"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True
    ).stdout
    for name in ("convlstm_color_shapes", "detr_resnet50_coco", "detr_resnet101_coco"):
        assert name in out
