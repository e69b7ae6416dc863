"""DETR-DC5: the dilated last ResNet stage, exact against an independent reference.

The reference (``dc5_reference.py``) is torchvision's ResNet with ``replace_stride_with_dilation
=[False, False, True]``, written from its definitions (torchvision is not installed), inside
transformers' DETR: transformers itself dilates only a timm backbone, so its native-ResNet DETR
is no reference for DC5. Checkpoints are in the facebookresearch format with random weights.
"""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
from hub_checkpoints import reference

from kzoo.models.detr import DETR, ResNetBackbone
from kzoo.models.detr.convert import convert_detr

TOL = 1e-4


def _run(model, images, mask=None):
    inputs = images if mask is None else {"images": images, "pixel_mask": mask}
    out = model.predict_on_batch(inputs)
    return keras.ops.convert_to_numpy(out["logits"]), keras.ops.convert_to_numpy(out["boxes"])


def _assert_close(ours, theirs):
    for a, b in zip(ours, theirs):
        assert a.shape == b.shape
        assert np.max(np.abs(a - b)) <= TOL


def test_dilated_backbone_layout_and_config():
    backbone = ResNetBackbone("resnet50", dilation=True)
    # torchvision: the dilated stage's first block keeps dilation 1 and takes stride 1, as does
    # its projection shortcut; the other blocks' 3x3 convolutions are dilated by 2.
    assert backbone.layer4_0_conv2.strides == (1, 1)
    assert backbone.layer4_0_conv2.dilation_rate == (1, 1)
    assert backbone.layer4_0_downsample_0.strides == (1, 1)
    for b in (1, 2):
        conv = getattr(backbone, f"layer4_{b}_conv2")
        assert conv.strides == (1, 1) and conv.dilation_rate == (2, 2)
    assert backbone.layer3_0_conv2.strides == (2, 2)
    assert backbone.layer3_1_conv2.dilation_rate == (1, 1)
    assert backbone.output_stride == 16
    assert backbone.compute_output_shape((1, 70, 100, 3)) == (1, 5, 7, 2048)
    again = ResNetBackbone.from_config(backbone.get_config())
    assert again.dilation is True and again.layer4_1_conv2.dilation_rate == (2, 2)
    with pytest.raises(ValueError, match="dilation must be True or False"):
        ResNetBackbone("small", dilation="yes")
    model = DETR(
        num_classes=3,
        num_queries=4,
        d_model=16,
        num_heads=2,
        num_encoder_layers=1,
        num_decoder_layers=1,
        ffn_dim=16,
        backbone="small",
        backbone_dilation=True,
    )
    assert model.backbone.output_stride == 16 and model.backbone_stride == 16
    assert DETR.from_config(model.get_config()).backbone.dilation is True
    with pytest.raises(ValueError, match="backbone_dilation only applies to a backbone given"):
        DETR(num_classes=3, backbone=ResNetBackbone("small"), backbone_dilation=True)


@pytest.mark.parametrize("spec", ["dc5_r50", "dc5_r101"])
def test_dc5_checkpoint_parity(spec, tmp_path_factory, tmp_path):
    """The converted checkpoint (DC5 read from its stored args) against the reference on a
    padded batch, computed as DETR computes it (``padding_invariant=False``)."""
    files = reference(tmp_path_factory, spec)
    ref = dict(np.load(files / "ref.npz"))
    preset = convert_detr(files / "detr-dc5.pth", tmp_path / "preset")
    config = json.loads((tmp_path / "preset" / "config.json").read_text())["config"]
    assert config["backbone_dilation"] is True
    assert config["backbone"] == ("resnet101" if "r101" in spec else "resnet50")
    model = DETR.from_preset(preset, padding_invariant=False)
    _assert_close(
        _run(model, ref["images"], ref["mask"]), (ref["batch_logits"], ref["batch_boxes"])
    )
    if spec == "dc5_r50":
        # Padding-invariant (the default): the padded image gets its outputs alone.
        model = DETR.from_preset(preset)
        logits, boxes = _run(model, ref["images"], ref["mask"])
        _assert_close((logits[1:], boxes[1:]), (ref["alone_logits"], ref["alone_boxes"]))


def test_the_benchmarks_dc5_reference_is_dc5(tmp_path_factory):
    """``scripts/bench/detr.py --dc5`` times transformers' DETR with its ResNet's last stage
    switched to DC5 in place; with the same weights it equals the independent reference."""
    files = reference(tmp_path_factory, "dc5_r50")
    check = json.loads((files / "bench_patch.json").read_text())
    assert check["stride"] == 16
    assert check["max_diff"] <= TOL


def _h5_arrays(preset):
    import h5py

    arrays = {}
    with h5py.File(os.path.join(preset, "model.weights.h5"), "r") as f:
        f.visititems(
            lambda name, obj: (
                arrays.__setitem__(name, obj[()]) if isinstance(obj, h5py.Dataset) else None
            )
        )
    return arrays


def test_dc5_file_without_args_needs_dilation(tmp_path_factory, tmp_path):
    """A DC5 file that does not say so converts as a plain DETR unless told; the registry's DC5
    presets are converted with ``convert_detr_dc5``. Same tensors, only the flag differs."""
    from kzoo.models.detr.convert import convert_detr_dc5

    files = reference(tmp_path_factory, "dc5_r50")
    plain = convert_detr(files / "detr-plain-name.pth", tmp_path / "plain")
    dc5 = convert_detr_dc5(files / "detr-plain-name.pth", tmp_path / "dc5")
    args = convert_detr(files / "detr-dc5.pth", tmp_path / "args")

    def config(path):
        found = json.loads(open(os.path.join(path, "config.json")).read())["config"]
        found.pop("name")
        return found

    assert config(plain)["backbone_dilation"] is False
    assert config(dc5) == config(args) and config(dc5)["backbone_dilation"] is True
    theirs, ours = _h5_arrays(args), _h5_arrays(dc5)
    assert sorted(theirs) == sorted(ours)
    assert all(np.array_equal(theirs[k], ours[k]) for k in theirs)


FULL_SIZE = """
import json, sys, numpy as np, keras
sys.path.insert(0, {here!r})
from kzoo.models.detr import DETR
from kzoo.models.detr.convert import convert_detr
diffs = {{}}
for spec, files in {files!r}.items():
    ref = dict(np.load(files + "/ref.npz"))
    preset = convert_detr(files + "/detr-dc5.pth", {out!r} + "/" + spec)
    model = DETR.from_preset(preset, padding_invariant=False)
    out = model.predict_on_batch({{"images": ref["images"], "pixel_mask": ref["mask"]}})
    diffs[spec] = {{
        key: float(np.abs(keras.ops.convert_to_numpy(out[key]) - ref["batch_" + key]).max())
        for key in ("logits", "boxes")
    }}
print("DIFFS", json.dumps(diffs))
"""
FULL_SPECS = ("dc5_r50_full", "dc5_r101_full")


@pytest.fixture(scope="module")
def full_size_differences(tmp_path_factory):
    """``{backend: {spec: {output: max |ours - reference|}}}``, computed on first use.

    One process per backend converts and runs both released sizes: a process's start (the
    framework's import) costs as much as converting and running one model.
    """
    found = {}

    def differences(backend):
        if backend not in found:
            files = {spec: str(reference(tmp_path_factory, spec)) for spec in FULL_SPECS}
            out = tmp_path_factory.mktemp(f"dc5_full_{backend}")
            code = FULL_SIZE.format(here=os.path.dirname(__file__), files=files, out=str(out))
            env = dict(os.environ, KERAS_BACKEND=backend)
            result = subprocess.run(
                [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=1200
            )
            assert result.returncode == 0, result.stderr[-3000:]
            line = next(x for x in result.stdout.splitlines() if x.startswith("DIFFS "))
            found[backend] = json.loads(line.split(" ", 1)[1])
        return found[backend]

    return differences


@pytest.mark.slow
@pytest.mark.parametrize("spec", FULL_SPECS)
@pytest.mark.parametrize("backend", ["jax", "tensorflow", "torch"])
def test_full_size_dc5_parity(spec, backend, full_size_differences):
    """The released architecture (6+6 layers, 100 queries, 91 classes), on every backend."""
    diffs = full_size_differences(backend)[spec]
    assert sorted(diffs) == ["boxes", "logits"]
    for key, diff in diffs.items():
        assert diff <= 1e-4, (spec, backend, key, diff)
