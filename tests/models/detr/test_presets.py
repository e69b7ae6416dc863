"""DETR presets from a checkpoint URL: download through keras, sha256, convert once, cache.

A real HTTP server on 127.0.0.1 (the ``http_server`` fixture) serves a checkpoint in the original
facebookresearch format, generated from a random transformers DETR.
"""

import os
import shutil

import keras
import numpy as np
import pytest
from detr_checkpoints import load_npz, reference

from kzoo import presets
from kzoo.models.detr import DETR
from kzoo.models.detr import convert as convert_module
from kzoo.presets import registry
from kzoo.utils.files import sha256_file

NAME = "detr_test_tiny"


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return reference(tmp_path_factory, "presets")


@pytest.fixture
def served(files, http_server, monkeypatch):
    root, base = http_server
    path = root / "detr-tiny.pth"
    shutil.copyfile(files / "detr-tiny.pth", path)
    sha = sha256_file(path)
    info = presets.PresetInfo(
        NAME,
        "DETR",
        f"{base}/detr-tiny.pth",
        sha256=sha,
        converter="kzoo.models.detr.convert:convert_detr",
    )
    monkeypatch.setitem(registry._PRESETS, NAME, info)
    calls = []
    real = convert_module.convert_detr

    def counting(src, dst):
        calls.append(src)
        return real(src, dst)

    monkeypatch.setattr(convert_module, "convert_detr", counting)
    return path, sha, calls


def _entries(keras_home):
    root = os.path.join(keras_home, "kzoo", "presets")
    return sorted(os.listdir(root)) if os.path.isdir(root) else []


def test_download_verify_convert_once_and_cache(served, files, keras_home, capsys):
    path, sha, calls = served
    model = DETR.from_preset(NAME)
    assert "Downloading data from" in capsys.readouterr().out
    assert len(calls) == 1
    assert f"{NAME}-{sha[:12]}" in _entries(keras_home)
    cached = os.path.join(keras_home, "kzoo", "presets", f"{NAME}-{sha[:12]}")
    assert sorted(os.listdir(cached)) == ["config.json", "metadata.json", "model.weights.h5"]
    ref = load_npz(files / "ref.npz")
    out = model.predict_on_batch(ref["images"])
    ref_logits, ref_boxes = ref["logits"], ref["boxes"]
    assert np.max(np.abs(keras.ops.convert_to_numpy(out["logits"]) - ref_logits)) <= 1e-4
    assert np.max(np.abs(keras.ops.convert_to_numpy(out["boxes"]) - ref_boxes)) <= 1e-4
    # The second time the converted preset is used as it is: no download, no conversion.
    os.remove(path)
    again = DETR.from_preset(NAME)
    assert len(calls) == 1 and "Downloading" not in capsys.readouterr().out
    for a, b in zip(model.weights, again.weights):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(a), keras.ops.convert_to_numpy(b))


def test_tampered_download_is_refused_and_not_cached(served, keras_home):
    path, sha, calls = served
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=f"does not match sha256 {sha}"):
        DETR.from_preset(NAME)
    assert calls == []
    leftovers = [os.path.join(d, f) for d, _, files in os.walk(keras_home) for f in files]
    assert leftovers == [], leftovers
    # Once the server has the right file again, the same call succeeds.
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    DETR.from_preset(NAME)
    assert len(calls) == 1


def test_released_presets_are_registered():
    for name, url_hex in (("detr_resnet50_coco", "e632da11"), ("detr_resnet101_coco", "2c7b67e5")):
        info = presets.get_preset(name)
        assert info.model_class == "DETR" and info.license == "Apache-2.0"
        assert info.location.startswith("https://dl.fbaipublicfiles.com/detr/detr-r")
        assert info.location.endswith(f"-{url_hex}.pth")
        # torch.hub convention: the hex in the file name starts the file's sha256.
        assert len(info.sha256) == 64 and info.sha256.startswith(url_hex)
        int(info.sha256, 16)
        module, _, attr = info.converter.partition(":")
        assert getattr(__import__(module, fromlist=[attr]), attr) is convert_module.convert_detr


def test_dc5_presets_are_registered_with_the_dc5_converter():
    for name, file_hex in (
        ("detr_resnet50_dc5_coco", "r50-dc5-f0fb7ef5"),
        ("detr_resnet101_dc5_coco", "r101-dc5-a2e86def"),
    ):
        info = presets.get_preset(name)
        assert info.model_class == "DETR" and info.license == "Apache-2.0"
        assert info.location == f"https://dl.fbaipublicfiles.com/detr/detr-{file_hex}.pth"
        url_hex = file_hex.rsplit("-", 1)[1]
        assert len(info.sha256) == 64 and info.sha256.startswith(url_hex)
        int(info.sha256, 16)
        module, _, attr = info.converter.partition(":")
        assert getattr(__import__(module, fromlist=[attr]), attr) is convert_module.convert_detr_dc5


def test_a_dc5_preset_is_converted_dilated(files, http_server, keras_home, monkeypatch):
    """The registry's DC5 converter, end to end: the file (named like the plain one, no args
    saying DC5) is downloaded, verified and converted with the dilated backbone."""
    root, base = http_server
    shutil.copyfile(files / "detr-tiny.pth", root / "detr-tiny.pth")
    info = presets.PresetInfo(
        "detr_test_tiny_dc5",
        "DETR",
        f"{base}/detr-tiny.pth",
        sha256=sha256_file(root / "detr-tiny.pth"),
        converter="kzoo.models.detr.convert:convert_detr_dc5",
    )
    monkeypatch.setitem(registry._PRESETS, info.name, info)
    model = DETR.from_preset(info.name)
    assert model.backbone.dilation is True and model.backbone_stride == 16
