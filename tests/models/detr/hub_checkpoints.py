"""Hub repos of DETR written by transformers, and DETR-DC5 checkpoints, with reference outputs.

Generated in a separate process (``python hub_checkpoints.py ROOT SPEC...``; why: see
``detr_checkpoints.py``) and cached like its files. Specs:

- ``hub_small``: repos of a small DETR (kzoo's "small" backbone shape) as transformers writes
  them, each with the transformers outputs for its weights:

  - ``native_v1``, ``native_v2``: ``DetrForObjectDetection.save_pretrained`` of two random
    models (transformers' own ResNet; ``config.json`` + ``model.safetensors``);
  - ``native_bin``: ``native_v1``'s model saved as ``pytorch_model.bin`` (transformers 4's file);
  - ``timm4``: ``native_v1``'s weights in the layout transformers 4 wrote for a *timm* backbone,
    as the ``facebook/detr-*`` repos hold them (``use_timm_backbone: true``, ``backbone:
    "resnet50"``, ``dilation``; tensors ``model.backbone.conv_encoder.model.<torchvision names>``,
    ``out_proj``, ``fc1``/``fc2``). timm is not installed (it needs torchvision), so this repo is
    made by renaming the native model's tensors (transformers' ResNet stages are torchvision's
    modules: ``detr_checkpoints.hf_to_original``); its outputs are the native model's. Its
    config names ``resnet50`` as the real repos do while the tensors are the small backbone's:
    kzoo reads the architecture off the tensors.

- ``dc5_r50``, ``dc5_r101``: DETR-DC5 with a full ResNet-50/101 backbone and a small
  transformer, built as :mod:`dc5_reference` says (a dilated torchvision-layout ResNet, written
  independently, inside transformers' DETR). Files: ``detr-dc5.pth``, the facebookresearch
  format with ``args.dilation = True`` as its training script stores; ``detr-dc5-noargs.pth``,
  the same weights with no ``args`` and a name that does not say DC5; ``ref.npz``, padded-batch
  outputs. ``dc5_r50`` also has hub repos of the same weights in transformers' timm layouts:
  ``timm5_dc5`` (transformers 5: ``backbone_config`` ``timm_backbone`` with ``output_stride``
  16) and the ``config.json`` of ``timm4_dc5`` (transformers 4: ``dilation: true``). Its ``bench_patch.json`` checks
  ``scripts/bench/detr.py``'s DC5 reference (transformers' own ResNet with the last stage
  switched to DC5 in place) against the independent reference with the same weights.
- ``dc5_r50_full``, ``dc5_r101_full`` (slow tests): the released architecture (6+6 layers, 100
  queries, 91 classes) with the dilated backbone, larger padded images.
"""

import argparse
import hashlib
import json
import os
import re
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
SCRIPTS = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(HERE))), "scripts")
DEFAULT_SPECS = ("hub_small", "dc5_r50", "dc5_r101")
R50, R101 = (3, 4, 6, 3), (3, 4, 23, 3)


def _cache_root():
    import importlib.metadata
    import tempfile

    digest = hashlib.sha256()
    for path in ("hub_checkpoints.py", "dc5_reference.py", "detr_checkpoints.py"):
        with open(os.path.join(HERE, path), "rb") as f:
            digest.update(f.read())
    with open(os.path.join(SCRIPTS, "bench", "detr.py"), "rb") as f:
        digest.update(f.read())
    for package in ("torch", "transformers"):
        digest.update(importlib.metadata.version(package).encode())
    return os.path.join(tempfile.gettempdir(), f"kzoo-detr-hub-{digest.hexdigest()[:16]}")


def reference(tmp_path_factory, spec):
    """The directory holding ``spec``'s files, generated once and reused by later sessions."""
    from tests.models.detr.reference_cache import generated

    return generated(
        __file__,
        _cache_root(),
        spec,
        DEFAULT_SPECS,
        tmp_path_factory,
        timeout=1200,
        pythonpath=HERE,
    )


def repo_files(directory):
    """``{path in repo: local path}`` of a generated repo directory."""
    return {
        name: os.path.join(directory, name)
        for name in sorted(os.listdir(directory))
        if not name.startswith(".")
    }


# ----------------------------------------------------------------------------- reference side


def _tv_backbone_of_native(state):
    """transformers' own ResNet tensors under torchvision's names (no prefix)."""
    from detr_checkpoints import hf_to_original

    prefix = "backbone.0.body."
    native = {k: v for k, v in state.items() if k.startswith("model.backbone.")}
    return {k[len(prefix) :]: v for k, v in hf_to_original(native).items()}


def _head_state(state):
    return {k: v for k, v in state.items() if not k.startswith("model.backbone.")}


def _v4_name(key):
    key = key.replace(".o_proj.", ".out_proj.")
    return re.sub(r"\.mlp\.fc([12])\.", r".fc\1.", key)


def timm_state(backbone_tv, head, version):
    """A DETR state dict with a timm backbone, as transformers ``version`` (4 or 5) names it."""
    prefix = "model.backbone.conv_encoder.model." if version == 4 else "model.backbone.model."
    out = {prefix + k: v.contiguous() for k, v in backbone_tv.items()}
    for k, v in head.items():
        out[_v4_name(k) if version == 4 else k] = v.contiguous()
    return out


def timm4_config(model_config, backbone, dilation):
    """``config.json`` as transformers 4 wrote it for ``facebook/detr-resnet-50(-dc5)``."""
    c = model_config
    return {
        "architectures": ["DetrForObjectDetection"],
        "model_type": "detr",
        "activation_dropout": 0.0,
        "activation_function": "relu",
        "attention_dropout": 0.0,
        "auxiliary_loss": False,
        "backbone": backbone,
        "backbone_config": None,
        "d_model": c.d_model,
        "decoder_attention_heads": c.decoder_attention_heads,
        "decoder_ffn_dim": c.decoder_ffn_dim,
        "decoder_layerdrop": 0.0,
        "decoder_layers": c.decoder_layers,
        "dilation": dilation,
        "dropout": 0.1,
        "encoder_attention_heads": c.encoder_attention_heads,
        "encoder_ffn_dim": c.encoder_ffn_dim,
        "encoder_layerdrop": 0.0,
        "encoder_layers": c.encoder_layers,
        "id2label": {str(i): f"thing{i}" for i in range(c.num_labels)},
        "label2id": {f"thing{i}": i for i in range(c.num_labels)},
        "init_std": 0.02,
        "init_xavier_std": 1.0,
        "is_encoder_decoder": True,
        "max_position_embeddings": 1024,
        "num_channels": 3,
        "num_hidden_layers": c.encoder_layers,
        "num_queries": c.num_queries,
        "position_embedding_type": "sine",
        "scale_embedding": False,
        "torch_dtype": "float32",
        "transformers_version": "4.26.0.dev0",
        "use_pretrained_backbone": True,
        "use_timm_backbone": True,
    }


def _save_repo(out, config, state, weights="model.safetensors"):
    import torch
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(config, indent=2))
    if weights.endswith(".safetensors"):
        save_file(state, out / weights, metadata={"format": "pt"})
    else:
        torch.save(state, out / weights)


def _official(model, backbone_tv, path, args):
    import torch
    from detr_checkpoints import hf_to_original

    state = {f"backbone.0.body.{k}": v.clone() for k, v in backbone_tv.items()}
    state.update(hf_to_original(_head_state(model.state_dict())))
    checkpoint = {"model": state, "epoch": 499}
    if args is not None:
        checkpoint["args"] = args
    torch.save(checkpoint, path)


def dc5_head_config(full):
    from transformers import DetrConfig, ResNetConfig

    backbone = ResNetConfig(
        depths=[1, 1, 1, 1],  # replaced by the reference backbone; only its 2048 channels count
        hidden_sizes=[256, 512, 1024, 2048],
        embedding_size=64,
        layer_type="bottleneck",
        out_features=["stage4"],
    )
    if full:
        return DetrConfig(
            use_timm_backbone=False,
            use_pretrained_backbone=False,
            backbone_config=backbone,
            num_labels=91,
        )
    return DetrConfig(
        use_timm_backbone=False,
        use_pretrained_backbone=False,
        backbone_config=backbone,
        d_model=64,
        encoder_layers=1,
        decoder_layers=2,
        encoder_attention_heads=8,
        decoder_attention_heads=8,
        encoder_ffn_dim=128,
        decoder_ffn_dim=128,
        num_queries=10,
        num_labels=5,
    )


def _parity(model, out, rng, big, small, name="ref.npz"):
    from detr_checkpoints import hf_outputs, padded_pair

    images, mask = padded_pair(rng, big, small)
    batch = hf_outputs(model, images, mask)
    alone = hf_outputs(model, np.ascontiguousarray(images[1:, : small[0], : small[1]]))
    np.savez(
        out / name,
        images=images,
        mask=mask,
        batch_logits=batch[0],
        batch_boxes=batch[1],
        alone_logits=alone[0],
        alone_boxes=alone[1],
    )


def _bench_patch_check(head_config, out):
    """The benchmark's in-place DC5 transformers model against :mod:`dc5_reference`."""
    import copy
    import importlib.util

    import torch
    from dc5_reference import DilatedResNet
    from detr_checkpoints import hf_outputs, make_hf_model, padded_pair
    from transformers import DetrConfig

    # scripts/ is a folder of scripts, not a package: load the benchmark by its path.
    path = os.path.join(SCRIPTS, "bench", "detr.py")
    spec = importlib.util.spec_from_file_location("bench_detr", path)
    bench_detr = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench_detr)
    dilate_hf_last_stage = bench_detr.dilate_hf_last_stage

    config = DetrConfig(
        use_timm_backbone=False,
        use_pretrained_backbone=False,
        d_model=head_config.d_model,
        encoder_layers=1,
        decoder_layers=1,
        encoder_ffn_dim=128,
        decoder_ffn_dim=128,
        num_queries=10,
        num_labels=5,
    )
    patched = make_hf_model(config, seed=21)
    reference_model = copy.deepcopy(patched)
    stride = dilate_hf_last_stage(patched)
    backbone = DilatedResNet(R50, dilation=True)
    tv = _tv_backbone_of_native(patched.state_dict())
    backbone.load_state_dict({k: torch.as_tensor(v) for k, v in tv.items()})
    reference_model.model.backbone.model = backbone.eval()
    images, mask = padded_pair(np.random.default_rng(3), (64, 96), (40, 70))
    ours = hf_outputs(patched, images, mask)
    theirs = hf_outputs(reference_model, images, mask)
    diff = max(float(np.abs(a - b).max()) for a, b in zip(ours, theirs))
    (out / "bench_patch.json").write_text(json.dumps({"stride": stride, "max_diff": diff}))


def generate(spec, out):
    from pathlib import Path

    from detr_checkpoints import make_hf_model, small_config

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    if spec == "hub_small":
        config = small_config(num_labels=5, num_queries=10)
        v1 = make_hf_model(config, seed=0)
        v1.save_pretrained(out / "native_v1")
        _parity(v1, out, rng, (64, 96), (40, 70), "ref_v1.npz")
        v2 = make_hf_model(config, seed=7)
        v2.save_pretrained(out / "native_v2")
        _parity(v2, out, np.random.default_rng(0), (64, 96), (40, 70), "ref_v2.npz")
        state = {k: v.contiguous() for k, v in v1.state_dict().items()}
        native_config = json.loads((out / "native_v1" / "config.json").read_text())
        _save_repo(out / "native_bin", native_config, state, "pytorch_model.bin")
        tv = _tv_backbone_of_native(state)
        _save_repo(
            out / "timm4",
            timm4_config(config, "resnet50", False),
            timm_state(tv, _head_state(state), 4),
        )
    elif spec in ("dc5_r50", "dc5_r101", "dc5_r50_full", "dc5_r101_full"):
        from dc5_reference import make_dc5_detr

        full = spec.endswith("_full")
        blocks = R101 if "r101" in spec else R50
        head_config = dc5_head_config(full)
        model = make_dc5_detr(blocks, head_config, seed=11 if full else 5)
        tv = {k: v.detach().clone() for k, v in model.model.backbone.model.state_dict().items()}
        args = argparse.Namespace(
            dilation=True, backbone="resnet101" if blocks == R101 else "resnet50"
        )
        _official(model, tv, out / "detr-dc5.pth", args)
        big, small = ((96, 128), (70, 100)) if full else ((64, 96), (40, 70))
        _parity(model, out, rng, big, small)
        if spec == "dc5_r50":
            _bench_patch_check(head_config, out)
            _official(model, tv, out / "detr-plain-name.pth", None)
            head = _head_state(model.state_dict())
            head = {k: v.detach().clone() for k, v in head.items()}
            import transformers

            cfg5 = transformers.DetrConfig(
                use_timm_backbone=True,
                backbone="resnet50",
                dilation=True,
                use_pretrained_backbone=False,
                d_model=head_config.d_model,
                encoder_layers=head_config.encoder_layers,
                decoder_layers=head_config.decoder_layers,
                encoder_attention_heads=8,
                decoder_attention_heads=8,
                encoder_ffn_dim=head_config.encoder_ffn_dim,
                decoder_ffn_dim=head_config.decoder_ffn_dim,
                num_queries=head_config.num_queries,
                num_labels=head_config.num_labels,
                architectures=["DetrForObjectDetection"],
            )
            cfg5.save_pretrained(out / "timm5_dc5")
            _save_repo(
                out / "timm5_dc5",
                json.loads((out / "timm5_dc5" / "config.json").read_text()),
                timm_state(tv, head, 5),
            )
            # Only its config is read (the tensors would be timm5_dc5's under 4.x names).
            (out / "timm4_dc5").mkdir()
            config4 = timm4_config(head_config, "resnet50", True)
            (out / "timm4_dc5" / "config.json").write_text(json.dumps(config4, indent=2))
    else:
        raise SystemExit(f"unknown spec {spec!r}")


if __name__ == "__main__":
    sys.path.insert(0, HERE)
    for name in sys.argv[2:]:
        generate(name, os.path.join(sys.argv[1], name))
