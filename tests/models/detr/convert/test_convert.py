"""Converting DETR checkpoints: parity with transformers' DETR, and every tensor accounted for.

The reference is transformers' ``DetrForObjectDetection`` (torch, fp32) with random weights; the
kzoo model converted from its state dict, or from the same weights renamed into the original
facebookresearch format (``detr_checkpoints.hf_to_original``), must give the same logits and
boxes within 1e-4 on every backend.
"""

import argparse
import json
import os

import keras
import numpy as np
import pytest
import torch

from kzoo.models.detr import DETR
from kzoo.models.detr.convert import convert_detr, read_state_dict, to_canonical
from tests.models.detr.detr_checkpoints import load_npz, reference

TOL = 1e-4


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return reference(tmp_path_factory, "small")


@pytest.fixture(scope="module")
def ref(files):
    return load_npz(files / "ref.npz")


def _run(model, images, mask=None):
    inputs = images if mask is None else {"images": images, "pixel_mask": mask}
    out = model.predict_on_batch(inputs)
    return keras.ops.convert_to_numpy(out["logits"]), keras.ops.convert_to_numpy(out["boxes"])


def _assert_close(kzoo_out, hf_out):
    for ours, theirs in zip(kzoo_out, hf_out):
        assert ours.shape == theirs.shape
        assert np.max(np.abs(ours - theirs)) <= TOL


@pytest.fixture(scope="module")
def hf_preset(files, tmp_path_factory):
    return convert_detr(files / "hf.pth", tmp_path_factory.mktemp("hf_preset") / "preset")


def _weights(model):
    # Paths start with the model's (uniquified) name; the rest identifies the variable.
    return {v.path.split("/", 1)[1]: keras.ops.convert_to_numpy(v) for v in model.weights}


def test_huggingface_checkpoint_parity(hf_preset, ref):
    images, mask = ref["images"], ref["mask"]
    # padding_invariant=False computes what transformers computes for padded batches.
    model = DETR.from_preset(hf_preset, padding_invariant=False)
    config = model.get_config()
    assert (config["num_classes"], config["num_queries"], config["backbone"]) == (5, 10, "small")
    assert (config["d_model"], config["num_encoder_layers"], config["num_decoder_layers"]) == (
        64,
        2,
        2,
    )
    assert config["ffn_dim"] == 128 and config["num_heads"] == 8
    # One image, no mask.
    _assert_close(_run(model, images[:1]), (ref["single_logits"], ref["single_boxes"]))
    # A padded batch of two sizes with its pixel mask.
    _assert_close(_run(model, images, mask), (ref["batch_logits"], ref["batch_boxes"]))


def test_original_checkpoint_parity(hf_preset, files, ref, tmp_path):
    images, mask = ref["images"], ref["mask"]
    preset = convert_detr(files / "detr-original.pth", tmp_path / "preset")
    model = DETR.from_preset(preset)  # the default: outputs independent of the padding
    # The same weights as from transformers' own state dict, bit for bit, so the single-image
    # parity above holds for this checkpoint too...
    ours, theirs = _weights(model), _weights(DETR.from_preset(hf_preset))
    assert ours.keys() == theirs.keys()
    for name, value in ours.items():
        np.testing.assert_array_equal(value, theirs[name], err_msg=name)
    # ...and it runs: the unpadded image of a padded batch matches transformers' batch; the
    # padded one matches what transformers gives for that image alone, unpadded.
    logits, boxes = _run(model, images, mask)
    _assert_close((logits[0], boxes[0]), (ref["batch_logits"][0], ref["batch_boxes"][0]))
    _assert_close((logits[1:], boxes[1:]), (ref["alone_logits"], ref["alone_boxes"]))


def test_safetensors_and_directories_give_the_same_weights(hf_preset, files, tmp_path):
    reference = _weights(DETR.from_preset(hf_preset))
    # A .safetensors file, and a directory holding model.safetensors (a HuggingFace snapshot).
    for src in (files / "model.safetensors", files):
        weights = _weights(DETR.from_preset(convert_detr(src, tmp_path / "p")))
        assert weights.keys() == reference.keys()
        for name, value in weights.items():
            np.testing.assert_array_equal(value, reference[name], err_msg=name)


def test_original_attention_layout_is_torch_multihead_attention(files):
    """The reference original checkpoint packs q/k/v the way nn.MultiheadAttention reads them:
    torch's own module fed the packed tensors matches transformers' attention layer."""
    info = json.loads((files / "info.json").read_text())
    assert info["mha_max_diff"] <= 1e-5


# ----------------------------------------------------------------------------- errors


def _save(state, path):
    torch.save(state, path)
    return path


def _hf_state(files):
    return torch.load(files / "hf.pth", map_location="cpu", weights_only=True)


def _original(files):
    with torch.serialization.safe_globals([argparse.Namespace]):
        return torch.load(files / "detr-original.pth", map_location="cpu", weights_only=True)


def test_unmapped_missing_and_mismatched_tensors_are_listed_together(files, tmp_path):
    state = _hf_state(files)
    del state["model.decoder.layers.1.mlp.fc2.bias"]
    state["model.encoder.layers.0.self_attn.q_proj.weight"] = torch.zeros(64, 63)
    state["class_labels_classifier.bias"] = torch.zeros(7)
    with pytest.raises(ValueError) as info:
        convert_detr(_save(state, tmp_path / "bad.pth"), tmp_path / "out")
    message = str(info.value)
    assert "missing tensors (1): transformer.decoder.layers.1.linear2.bias" in message
    assert "shape mismatches (2)" in message
    assert "transformer.encoder.layers.0.self_attn.q_proj.weight" in message
    assert "class_embed.bias" in message
    assert not os.path.exists(tmp_path / "out")

    state = _hf_state(files)
    state["model.encoder.layers.0.extra_gate.weight"] = torch.zeros(3)
    state["model.some_head.bias"] = torch.zeros(3)
    with pytest.raises(ValueError, match="2 tensor.*map to nothing") as info:
        convert_detr(_save(state, tmp_path / "extra.pth"), tmp_path / "out")
    assert "model.encoder.layers.0.extra_gate.weight" in str(info.value)
    assert "model.some_head.bias" in str(info.value)
    assert not os.path.exists(tmp_path / "out")


def test_original_format_errors(files, tmp_path):
    ckpt = _original(files)
    ckpt["model"]["transformer.decoder.layers.0.self_attn.in_proj_bias"] = torch.zeros(100)
    with pytest.raises(ValueError, match="in_proj_bias .*not divisible by 3"):
        convert_detr(_save(ckpt, tmp_path / "a.pth"), tmp_path / "out")
    ckpt = _original(files)
    del ckpt["model"]["transformer.encoder.layers.1.self_attn.in_proj_weight"]
    with pytest.raises(ValueError, match="missing tensors \\(3\\).*self_attn.k_proj.weight"):
        convert_detr(_save(ckpt, tmp_path / "b.pth"), tmp_path / "out")
    # Frozen batch-norm counters are the one thing skipped.
    ckpt = _original(files)
    ckpt["model"]["backbone.0.body.bn1.num_batches_tracked"] = torch.tensor(5)
    state = read_state_dict(_save(ckpt, tmp_path / "c.pth"))
    canonical, fmt = to_canonical(state)
    assert fmt == "original" and "backbone.bn1.running_var" in canonical
    assert not any("num_batches_tracked" in k for k in canonical)


class _Payload:
    def __reduce__(self):
        return (os.getcwd, ())


def test_checkpoints_are_not_unpickled_beyond_tensors(tmp_path):
    torch.save({"model": {"x": torch.zeros(2)}, "payload": _Payload()}, tmp_path / "evil.pth")
    with pytest.raises(ValueError, match="refuses to unpickle"):
        read_state_dict(tmp_path / "evil.pth")
    torch.save({"model": {"x": torch.zeros(2), "y": [1, 2]}}, tmp_path / "list.pth")
    with pytest.raises(ValueError, match="not tensors: y \\(list\\)"):
        read_state_dict(tmp_path / "list.pth")
    torch.save({"foo.weight": torch.zeros(2)}, tmp_path / "other.pth")
    with pytest.raises(ValueError, match="Not a DETR checkpoint"):
        convert_detr(tmp_path / "other.pth", tmp_path / "out")
    (tmp_path / "junk.pth").write_bytes(b"\x00" * 64)
    with pytest.raises(ValueError, match="not a readable PyTorch checkpoint"):
        read_state_dict(tmp_path / "junk.pth")
    (tmp_path / "junk.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        read_state_dict(tmp_path / "junk.safetensors")
    with pytest.raises(FileNotFoundError):
        read_state_dict(tmp_path / "absent.pth")


def test_missing_torch_is_explained(tmp_path, monkeypatch):
    torch.save({"x": torch.zeros(1)}, tmp_path / "a.pth")
    monkeypatch.setitem(__import__("sys").modules, "torch", None)
    with pytest.raises(ValueError, match="needs torch installed, whatever the keras backend"):
        read_state_dict(tmp_path / "a.pth")


@pytest.mark.slow
def test_full_resnet50_parity(tmp_path_factory, tmp_path):
    """The released architecture (ResNet-50, 6+6 layers, 100 queries, 91 classes)."""
    files = reference(tmp_path_factory, "r50")
    ref = load_npz(files / "ref.npz")
    model = DETR.from_preset(
        convert_detr(files / "detr-r50.pth", tmp_path / "preset"), padding_invariant=False
    )
    assert model.get_config()["backbone"] == "resnet50"
    assert model.get_config()["num_classes"] == 91
    _assert_close(
        _run(model, ref["images"], ref["mask"]), (ref["batch_logits"], ref["batch_boxes"])
    )


def _dilation(preset):
    return json.loads((preset / "config.json").read_text())["config"]["backbone_dilation"]


def test_dc5_is_read_from_args_config_or_name_and_heads_from_a_huggingface_config(files, tmp_path):
    """DC5 leaves the tensors as they are: the stored training args, a config.json beside the
    checkpoint or the released file name say it, in that order (an explicit argument first)."""
    import shutil

    ckpt = torch.load(files / "detr-original.pth", weights_only=False)
    named = tmp_path / "detr-r50-dc5-f0fb7ef5.pth"
    torch.save({"model": ckpt["model"]}, named)
    convert_detr(named, tmp_path / "by_name")
    assert _dilation(tmp_path / "by_name") is True
    convert_detr(named, tmp_path / "forced", dilation=False)
    assert _dilation(tmp_path / "forced") is False
    # The training arguments win over the name.
    torch.save({"model": ckpt["model"], "args": argparse.Namespace(dilation=False)}, named)
    convert_detr(named, tmp_path / "by_args")
    assert _dilation(tmp_path / "by_args") is False
    plain = tmp_path / "detr.pth"
    torch.save({"model": ckpt["model"], "args": argparse.Namespace(dilation=True)}, plain)
    convert_detr(plain, tmp_path / "args_dc5")
    assert _dilation(tmp_path / "args_dc5") is True
    with pytest.raises(ValueError, match="dilation must be True, False or None"):
        convert_detr(plain, tmp_path / "bad", dilation="yes")
    snapshot = tmp_path / "snapshot"
    snapshot.mkdir()
    shutil.copyfile(files / "model.safetensors", snapshot / "model.safetensors")
    config = {"model_type": "detr", "encoder_attention_heads": 4, "decoder_attention_heads": 4}
    (snapshot / "config.json").write_text(json.dumps(config))
    preset = convert_detr(snapshot, tmp_path / "p4")
    assert json.loads((tmp_path / "p4" / "config.json").read_text())["config"]["num_heads"] == 4
    assert os.path.isdir(preset) and _dilation(tmp_path / "p4") is False
    (snapshot / "config.json").write_text(json.dumps({**config, "dilation": True}))
    convert_detr(snapshot, tmp_path / "p5")
    assert _dilation(tmp_path / "p5") is True
    timm5 = {**config, "dilation": True, "backbone_config": {"model_type": "timm_backbone"}}
    timm5["backbone_config"]["output_stride"] = 32
    (snapshot / "config.json").write_text(json.dumps(timm5))
    convert_detr(snapshot, tmp_path / "p6")
    assert _dilation(tmp_path / "p6") is False
