"""``DETR.from_preset("hf://...")`` for repos written by transformers, from a local Hub.

The repos (``hub_checkpoints.py``) are transformers' ``save_pretrained`` of random DETRs (its own
ResNet, safetensors; the same model as ``pytorch_model.bin``), one in the layout transformers 4
wrote for a timm backbone (the ``facebook/detr-*`` repos), and DETR-DC5 in transformers 5's timm
layout. The server (``tests/presets/hub_server.py``) is a real HTTP server that huggingface_hub
downloads from; the outputs must equal transformers' for the same weights (1e-4), or for DC5 the
independent dilated reference's (transformers cannot run a timm backbone here: no timm).
"""

import json
import sys

import keras
import numpy as np
import pytest
from hub_checkpoints import reference, repo_files

from kzoo.models.detr import DETR
from kzoo.models.detr.training.finetune import label_metadata
from kzoo.presets import hub, resolve_preset

TOL = 1e-4


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    return reference(tmp_path_factory, "hub_small")


def _check(model, ref):
    out = model.predict_on_batch({"images": ref["images"], "pixel_mask": ref["mask"]})
    for key in ("logits", "boxes"):
        ours = keras.ops.convert_to_numpy(out[key])
        assert ours.shape == ref[f"batch_{key}"].shape
        assert np.max(np.abs(ours - ref[f"batch_{key}"])) <= TOL, key


def _ref(small, version):
    return dict(np.load(small / f"ref_{version}.npz"))


def _weights(preset):
    return DETR.from_preset(preset).get_weights()


def _same_weights(a, b):
    assert len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b))


def test_transformers_repos_give_transformers_outputs(hub_server, small):
    v1 = hub_server.add_commit("facebook/tiny-detr", repo_files(small / "native_v1"), ("v1",))
    hub_server.add_commit("facebook/tiny-detr", repo_files(small / "native_v2"), ("main",))
    hub_server.add_commit("facebook/tiny-detr-bin", repo_files(small / "native_bin"))
    hub_server.add_commit("facebook/tiny-detr-timm", repo_files(small / "timm4"))
    # padding_invariant=False computes what transformers computes for a padded batch.
    _check(DETR.from_preset("hf://facebook/tiny-detr", padding_invariant=False), _ref(small, "v2"))
    model_v1 = DETR.from_preset("hf://facebook/tiny-detr@v1", padding_invariant=False)
    _check(model_v1, _ref(small, "v1"))
    # The same weights in the other layouts convert to the same variables (so, outputs).
    pinned = resolve_preset(f"hf://facebook/tiny-detr@{v1}")
    assert pinned == resolve_preset("hf://facebook/tiny-detr@v1")
    _same_weights(_weights("hf://facebook/tiny-detr-bin"), model_v1.get_weights())
    _same_weights(_weights("hf://facebook/tiny-detr-timm"), model_v1.get_weights())
    preset_dir = resolve_preset("hf://facebook/tiny-detr-timm")
    names, _ = label_metadata(preset_dir, model_v1.num_classes)
    assert names == [f"thing{i}" for i in range(5)]  # the repo's id2label
    meta = json.loads(open(f"{preset_dir}/metadata.json").read())
    assert meta["hub_repo"] == "facebook/tiny-detr-timm" and len(meta["hub_commit"]) == 40
    # Each repo was downloaded and converted once; with the Hub gone they load from the cache.
    assert hub_server.fetched("model.safetensors") == 3
    assert hub_server.fetched("pytorch_model.bin") == 1
    main = resolve_preset("hf://facebook/tiny-detr")
    hub_server.stop()
    assert resolve_preset("hf://facebook/tiny-detr") == main
    assert resolve_preset("hf://facebook/tiny-detr@v1") == pinned
    _same_weights(_weights("hf://facebook/tiny-detr@v1"), model_v1.get_weights())


def test_dc5_repo_in_transformers_timm_layout(hub_server, tmp_path_factory):
    """``facebook/detr-resnet-50-dc5``'s layout (transformers 5's config: a timm backbone with
    output_stride 16) against the independent dilated reference."""
    files = reference(tmp_path_factory, "dc5_r50")
    hub_server.add_commit("facebook/detr-dc5-test", repo_files(files / "timm5_dc5"))
    model = DETR.from_preset("hf://facebook/detr-dc5-test", padding_invariant=False)
    assert model.backbone.dilation is True and model.backbone.variant == "resnet50"
    _check(model, dict(np.load(files / "ref.npz")))


def test_dc5_and_labels_from_transformers_4_configs(tmp_path_factory):
    from kzoo.models.detr.convert.hub import _class_names, check_config
    from kzoo.models.detr.convert.reading import config_dilation

    files = reference(tmp_path_factory, "dc5_r50")
    config4 = json.loads((files / "timm4_dc5" / "config.json").read_text())
    config5 = json.loads((files / "timm5_dc5" / "config.json").read_text())
    assert config_dilation(config4) is True and config_dilation(config5) is True
    assert config_dilation({**config4, "dilation": False}) is False
    for config in (config4, config5):
        assert check_config(config, "hf://a/b", ["config.json", "model.safetensors"]) == [
            "model.safetensors"
        ]
    assert _class_names(config4) == [f"thing{i}" for i in range(5)]
    assert _class_names({"id2label": {"0": "LABEL_0", "1": "LABEL_1"}}) is None


def _native_config(small):
    return json.loads((small / "native_v1" / "config.json").read_text())


REFUSED = [
    ("position_embedding_type", {"position_embedding_type": "learned"}),
    ("activation_function", {"activation_function": "gelu"}),
    ("architectures", {"architectures": ["DetrForSegmentation"]}),
    ("encoder_attention_heads/decoder_attention_heads", {"decoder_attention_heads": 4}),
    ("encoder_ffn_dim/decoder_ffn_dim", {"decoder_ffn_dim": 64}),
    ("backbone_config.layer_type", {"backbone_config": {"layer_type": "basic"}}),
    (
        "backbone_config.downsample_in_bottleneck",
        {"backbone_config": {"downsample_in_bottleneck": True}},
    ),
    ("backbone_config (depths", {"backbone_config": {"depths": [2, 2, 2, 2]}}),
    ("backbone_config.model_type", {"backbone_config": {"model_type": "swin"}}),
    (
        "backbone = 'resnet18'",
        {"backbone_config": None, "use_timm_backbone": True, "backbone": "resnet18"},
    ),
    ("output_stride = 8", {"backbone_config": {"model_type": "timm_backbone", "output_stride": 8}}),
]


@pytest.mark.parametrize("field,change", REFUSED, ids=[r[0].split()[0] for r in REFUSED])
def test_options_kzoo_lacks_fail_before_any_weights(hub_server, small, field, change):
    config = _native_config(small)
    for key, value in change.items():
        if isinstance(value, dict) and isinstance(config.get(key), dict):
            config[key] = {**config[key], **value}
        else:
            config[key] = value
    files = repo_files(small / "native_v1")
    hub_server.add_commit("someone/odd-detr", {**files, "config.json": json.dumps(config).encode()})
    with pytest.raises(ValueError, match=r"^hf://someone/odd-detr: config.json ") as info:
        DETR.from_preset("hf://someone/odd-detr")
    assert field in str(info.value)
    assert hub_server.fetched("model.safetensors") == 0
    assert not any(e != hub.REFS_DIR for e in _listdir(hub.repo_cache("someone/odd-detr")))


def _listdir(path):
    import os

    return os.listdir(path) if os.path.isdir(path) else []


def test_bin_only_repo_without_torch_names_safetensors(hub_server, small, monkeypatch):
    hub_server.add_commit("facebook/tiny-detr-bin", repo_files(small / "native_bin"))
    monkeypatch.setitem(sys.modules, "torch", None)
    with pytest.raises(ValueError, match=r"pytorch_model.bin, which needs torch.*safetensors"):
        resolve_preset("hf://facebook/tiny-detr-bin")
    assert hub_server.fetched("pytorch_model.bin") == 0


def test_the_command_line_takes_hub_handles(hub_server, small, tmp_path, capsys):
    from PIL import Image

    from kzoo.cli.main import main

    hub_server.add_commit("facebook/tiny-detr-timm", repo_files(small / "timm4"))
    picture = tmp_path / "street.jpg"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (48, 80, 3), dtype=np.uint8)).save(picture)
    args = ["predict", "detr", "--preset", "hf://facebook/tiny-detr-timm", "--image"]
    args += [str(picture), "--out", str(tmp_path / "boxes.png"), "--threshold", "0"]
    assert main([*args, "--shortest-edge", "64"]) == 0
    out = capsys.readouterr().out
    assert "10 detections scoring above 0" in out
    assert "thing" in out  # the labels are named by the repo's id2label
    assert (
        main(["predict", "detr", "--preset", "hf://nobody/nothing", "--image", str(picture)]) == 2
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "hf://nobody/nothing: no such repository" in err[0]
