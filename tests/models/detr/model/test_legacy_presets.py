"""Presets saved by earlier kzoo versions still load, unchanged.

``data/legacy_preset`` was written by kzoo at commit b57f64d, before DETR was split into a
backbone and a DETRHead (``data/make_legacy_preset.py`` says how), with the outputs that code
gave on each backend (``data/legacy_reference.npz``) and a fingerprint of every variable
(``data/legacy_fingerprints.json``). ``data/c561e39_preset`` was written at c561e39, before
DETR's modules moved by role: its config names the modules of that time
(``data/make_c561e39_preset.py``; outputs and fingerprints in ``data/c561e39_reference.npz``).
"""

import json
import os
import shutil

import h5py
import keras
import numpy as np
import pytest

from kzoo.models import DETR
from kzoo.models.detr.model.detr import CONFIG_VERSION
from kzoo.utils.files import sha256_file

DATA = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "data")
PRESET = os.path.join(DATA, "legacy_preset")
KEYS = ("logits", "boxes", "aux_logits", "aux_boxes")


def _inputs():
    # As make_legacy_preset.py makes them.
    rng = np.random.default_rng(7)
    images = rng.normal(size=(2, 64, 96, 3)).astype("float32")
    mask = np.ones((2, 64, 96), "float32")
    mask[1, 40:] = 0
    mask[1, :, 70:] = 0
    return images, mask


@pytest.fixture(scope="module")
def reference():
    ref = dict(np.load(os.path.join(DATA, "legacy_reference.npz")))
    images, mask = _inputs()
    assert float(ref["images_sum"]) == images.sum(dtype="float64")
    assert float(ref["mask_sum"]) == mask.sum()
    return ref


def _outputs(model):
    images, mask = _inputs()
    out = {}
    for suffix, inputs in (("plain", images), ("masked", {"images": images, "pixel_mask": mask})):
        result = model.predict_on_batch(inputs)
        for key in KEYS:
            out[f"{suffix}_{key}"] = np.asarray(keras.ops.convert_to_numpy(result[key]))
    return out


def _assert_same_as_before(model, reference):
    backend = keras.backend.backend()
    for name, value in _outputs(model).items():
        # The same computation as the code that wrote the reference: equal to float32 rounding
        # (TensorFlow's oneDNN may pick another kernel for a new graph).
        np.testing.assert_allclose(
            value, reference[f"{backend}_{name}"], rtol=0, atol=2e-6, err_msg=name
        )


def _fingerprints(model):
    out = {}
    for key, variable in model.weights_by_path().items():
        v = np.asarray(keras.ops.convert_to_numpy(variable), np.float64).ravel()
        out[key] = [float(v.sum()), float((v * np.arange(1, v.size + 1)).sum())]
    return out


def test_the_fixture_is_in_the_old_layout():
    with open(os.path.join(PRESET, "config.json")) as f:
        config = json.load(f)["config"]
    assert "config_version" not in config and config["backbone"] == "small"
    with h5py.File(os.path.join(PRESET, "model.weights.h5"), "r") as f:
        assert "head" not in f
        assert {"input_proj", "class_embed", "bbox_embed_2", "backbone"} <= set(f)
        assert "detr_transformer" in f["layers"]


def test_legacy_preset_loads_with_the_same_weights_and_outputs(reference, tmp_path):
    copy = tmp_path / "legacy"
    shutil.copytree(PRESET, copy)
    before = {p.name: sha256_file(p) for p in copy.iterdir()}
    model = DETR.from_preset(str(copy))
    # Every variable holds what the old code saved, in the same place.
    with open(os.path.join(DATA, "legacy_fingerprints.json")) as f:
        assert _fingerprints(model) == json.load(f)
    _assert_same_as_before(model, reference)
    # Reading the old layout goes through a copy: the preset itself is untouched.
    assert {p.name: sha256_file(p) for p in copy.iterdir()} == before

    # Saved again, it is a version-2 preset with the head's layers under head/.
    model.save_to_preset(tmp_path / "resaved")
    config = json.loads((tmp_path / "resaved" / "config.json").read_text())["config"]
    assert config["config_version"] == CONFIG_VERSION
    with h5py.File(tmp_path / "resaved" / "model.weights.h5", "r") as f:
        assert "input_proj" not in f and "input_proj" in f["head"]
        assert "detr_transformer" not in f.get("layers", {})
    again = DETR.from_preset(str(tmp_path / "resaved"))
    # The same variables hold the same values (so the outputs above carry over).
    assert _fingerprints(again) == _fingerprints(model)


def test_load_weights_reads_an_old_weights_file():
    with open(os.path.join(PRESET, "config.json")) as f:
        config = json.load(f)["config"]
    model = DETR.from_config(config)
    model.build()
    model.load_weights(os.path.join(PRESET, "model.weights.h5"))
    with open(os.path.join(DATA, "legacy_fingerprints.json")) as f:
        assert _fingerprints(model) == json.load(f)


def test_config_from_a_newer_kzoo_is_refused():
    with open(os.path.join(PRESET, "config.json")) as f:
        config = json.load(f)["config"]
    with pytest.raises(
        ValueError, match=f"config_version {CONFIG_VERSION + 1}, written by a newer kzoo"
    ):
        DETR.from_config({**config, "config_version": CONFIG_VERSION + 1})
    with pytest.raises(ValueError, match="config_version must be a positive int"):
        DETR.from_config({**config, "config_version": "2"})


def test_backbone_of_a_legacy_preset():
    from kzoo.models.detr.model.backbone import ResNetBackbone

    backbone = ResNetBackbone.from_preset(PRESET)
    with open(os.path.join(DATA, "legacy_fingerprints.json")) as f:
        expected = {k[len("backbone/") :]: v for k, v in json.load(f).items() if "backbone/" in k}
    prefix = f"{backbone.name}/"
    got = {}
    for variable in backbone.weights:
        v = np.asarray(keras.ops.convert_to_numpy(variable), np.float64).ravel()
        key = variable.path.split(prefix, 1)[1]
        got[key] = [float(v.sum()), float((v * np.arange(1, v.size + 1)).sum())]
    assert got == expected


def test_a_preset_saved_before_the_modules_moved_loads_with_the_same_weights_and_outputs():
    preset = os.path.join(DATA, "c561e39_preset")
    with open(os.path.join(preset, "config.json")) as f:
        saved = json.load(f)
    # Module paths of that time, which are now deprecated shims: the registered names resolve.
    assert saved["module"] == "kzoo.models.detr.detr_model"
    assert saved["config"]["backbone"]["module"] == "kzoo.models.detr.backbone"
    reference = dict(np.load(os.path.join(DATA, "c561e39_reference.npz")))
    model = DETR.from_preset(preset)
    assert type(model.backbone).__module__ == "kzoo.models.detr.model.backbone"
    expected = {
        k[len("fingerprint:") :]: list(v)
        for k, v in reference.items()
        if k.startswith("fingerprint:")
    }
    assert _fingerprints(model) == expected
    _assert_same_as_before(model, reference)
