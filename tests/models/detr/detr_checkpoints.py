"""Reference DETR checkpoints and outputs for the converter tests, made without kzoo.

transformers runs in a separate process (``python detr_checkpoints.py ROOT SPEC...``): its DETR
imports ``torch._dynamo``, which loads triton's LLVM, and in a process where TensorFlow is
already loaded (keras on the tensorflow backend, or ``keras.utils.set_random_seed``) that aborts
with "LLVM ERROR: inconsistency in registered CommandLine options". The tests read the files the
script writes: checkpoints, inputs and transformers' outputs.

HuggingFace checkpoints come straight from transformers' ``DetrForObjectDetection`` with random
weights. Checkpoints in the original facebookresearch format are made from those by renaming
module paths, following the two repositories' module trees:

- transformers' ResNet (``ResNetEmbeddings.embedder`` = conv + norm, ``ResNetEncoder.stages[s].
  layers[b]`` = ``ResNetBottleNeckLayer`` with ``shortcut`` (conv, norm) and ``layer`` = three
  ``ResNetConvLayer`` 1×1, 3×3, 1×1) is torchvision's ResNet (``conv1``/``bn1``,
  ``layer{s+1}[b]`` = ``Bottleneck`` with ``conv1..3``/``bn1..3`` and ``downsample`` =
  Sequential(conv, bn)); DETR wraps it as ``backbone.0.body``.
- DETR's ``TransformerEncoderLayer`` has ``self_attn`` (``nn.MultiheadAttention``), ``linear1``,
  ``linear2``, ``norm1`` (after attention), ``norm2`` (after the FFN); transformers' has
  ``self_attn`` (q/k/v/o_proj), ``mlp.fc1``/``fc2``, ``self_attn_layer_norm``,
  ``final_layer_norm``. The decoder adds ``multihead_attn``/``norm2`` ↔ ``encoder_attn``/
  ``encoder_attn_layer_norm`` and ``norm3`` ↔ ``final_layer_norm``; DETR's ``decoder.norm`` is
  transformers' ``decoder.layernorm``.
- ``nn.MultiheadAttention`` stores q, k, v stacked in ``in_proj_weight``/``in_proj_bias`` in that
  order (``F.multi_head_attention_forward`` chunks it in three); the "small" spec checks this
  against torch's own module (``mha_max_diff``).
"""

import argparse
import json
import os
import re
import sys

import numpy as np

# ----------------------------------------------------------------------------- test side


# Generated together in one process (importing transformers dominates the cost); "r50" only
# when a slow test asks for it.
DEFAULT_SPECS = ("small", "presets", "coco_tiny", "images")


def _cache_root():
    """A directory shared by test sessions (CI runs one per backend), named by a hash of this
    script and the versions of torch and transformers, so any change regenerates the files."""
    import hashlib
    import importlib.metadata
    import tempfile

    digest = hashlib.sha256(open(__file__, "rb").read())
    for package in ("torch", "transformers"):
        digest.update(importlib.metadata.version(package).encode())
    return os.path.join(tempfile.gettempdir(), f"kzoo-detr-reference-{digest.hexdigest()[:16]}")


def reference(tmp_path_factory, spec):
    """The directory holding ``spec``'s files, generated once and reused by later sessions."""
    from tests.models.detr.reference_cache import generated

    return generated(__file__, _cache_root(), spec, DEFAULT_SPECS, tmp_path_factory, timeout=600)


def load_npz(path):
    with np.load(path) as data:
        return {k: data[k] for k in data.files}


# ----------------------------------------------------------------------------- reference side


def small_config(num_labels=5, num_queries=10):
    """A DETR small enough for CPU tests, with kzoo's "small" backbone shape (width 16)."""
    from transformers import DetrConfig, ResNetConfig

    backbone = ResNetConfig(
        depths=[1, 1, 1, 1],
        hidden_sizes=[64, 128, 256, 512],
        embedding_size=16,
        layer_type="bottleneck",
        out_features=["stage4"],
    )
    return DetrConfig(
        use_timm_backbone=False,
        use_pretrained_backbone=False,
        backbone_config=backbone,
        d_model=64,
        encoder_layers=2,
        decoder_layers=2,
        encoder_attention_heads=8,
        decoder_attention_heads=8,
        encoder_ffn_dim=128,
        decoder_ffn_dim=128,
        num_queries=num_queries,
        num_labels=num_labels,
    )


def make_hf_model(config, seed=0):
    """A transformers DETR in eval mode with every tensor drawn at random.

    transformers initialises biases to 0, norms to 1/0, batch-norm statistics to 0/1, weights
    with std 0.02 and the object queries near 0; with those values a swapped or dropped tensor,
    or queries put out of order, would hardly change the output. So every weight is drawn with
    std 1/sqrt(fan_in), biases and norm offsets with std 0.1, norm scales around 1, and the
    queries with std 1 (as DETR's nn.Embedding).
    """
    import torch
    from transformers import DetrForObjectDetection

    torch.manual_seed(seed)
    model = DetrForObjectDetection(config)
    with torch.no_grad():
        for name, tensor in list(model.named_parameters()) + list(model.named_buffers()):
            if not tensor.is_floating_point():
                continue
            if name.endswith("running_var"):
                tensor.uniform_(0.5, 1.5)
            elif "query_position_embeddings" in name:
                tensor.normal_(0.0, 1.0)
            elif tensor.ndim >= 2:
                tensor.normal_(0.0, tensor[0].numel() ** -0.5)
            elif name.endswith("weight"):  # norm scales
                tensor.normal_(1.0, 0.1)
            else:  # biases, norm offsets, running means
                tensor.normal_(0.0, 0.1)
    return model.eval()


def _stage(m):
    return f"layer{int(m.group(1)) + 1}.{m.group(2)}"


_SIMPLE = {
    "model.backbone.model.embedder.embedder.convolution.weight": "backbone.0.body.conv1.weight",
    "model.input_projection.weight": "input_proj.weight",
    "model.input_projection.bias": "input_proj.bias",
    "model.query_position_embeddings.weight": "query_embed.weight",
    "model.decoder.layernorm.weight": "transformer.decoder.norm.weight",
    "model.decoder.layernorm.bias": "transformer.decoder.norm.bias",
    "class_labels_classifier.weight": "class_embed.weight",
    "class_labels_classifier.bias": "class_embed.bias",
}


def hf_to_original(state_dict):
    """A transformers DETR state dict renamed into facebookresearch/detr's names."""
    import torch

    out, attn = {}, {}
    for key, value in state_dict.items():
        value = value.detach().clone()
        name = _SIMPLE.get(key)
        m = re.fullmatch(r"model\.backbone\.model\.embedder\.embedder\.normalization\.(.+)", key)
        if m:
            name = f"backbone.0.body.bn1.{m.group(1)}"
        m = re.fullmatch(
            r"model\.backbone\.model\.encoder\.stages\.(\d+)\.layers\.(\d+)\.(.+)", key
        )
        if m:
            rest = m.group(3)
            conv = re.fullmatch(r"layer\.(\d)\.(convolution|normalization)\.(.+)", rest)
            short = re.fullmatch(r"shortcut\.(convolution|normalization)\.(.+)", rest)
            if conv:
                n = int(conv.group(1)) + 1
                kind = "conv" if conv.group(2) == "convolution" else "bn"
                name = f"backbone.0.body.{_stage(m)}.{kind}{n}.{conv.group(3)}"
            elif short:
                idx = 0 if short.group(1) == "convolution" else 1
                name = f"backbone.0.body.{_stage(m)}.downsample.{idx}.{short.group(2)}"
        m = re.fullmatch(r"model\.(encoder|decoder)\.layers\.(\d+)\.(.+)", key)
        if m:
            part, i, rest = m.groups()
            base = f"transformer.{part}.layers.{i}"
            proj = re.fullmatch(r"(self_attn|encoder_attn)\.([qkvo])_proj\.(weight|bias)", rest)
            if proj:
                module = "self_attn" if proj.group(1) == "self_attn" else "multihead_attn"
                if proj.group(2) != "o":
                    attn.setdefault((base, module, proj.group(3)), {})[proj.group(2)] = value
                    continue
                name = f"{base}.{module}.out_proj.{proj.group(3)}"
            else:
                renames = {
                    "self_attn_layer_norm": "norm1",
                    "encoder_attn_layer_norm": "norm2",
                    "final_layer_norm": "norm2" if part == "encoder" else "norm3",
                    "mlp.fc1": "linear1",
                    "mlp.fc2": "linear2",
                }
                module, _, param = rest.rpartition(".")
                name = f"{base}.{renames[module]}.{param}"
        m = re.fullmatch(r"bbox_predictor\.layers\.(\d+)\.(weight|bias)", key)
        if m:
            name = f"bbox_embed.layers.{m.group(1)}.{m.group(2)}"
        if name is None:
            raise KeyError(f"no original name for {key}")
        out[name] = value
    for (base, module, param), parts in attn.items():
        out[f"{base}.{module}.in_proj_{param}"] = torch.cat([parts["q"], parts["k"], parts["v"]])
    return out


def original_checkpoint(hf_model):
    """``{"model": state_dict}`` as facebookresearch/detr saves it, with ``args``/``epoch``."""
    return {
        "model": hf_to_original(hf_model.state_dict()),
        "args": argparse.Namespace(lr=1e-4, backbone="resnet50", num_queries=10),
        "epoch": 499,
    }


def hf_outputs(model, images, pixel_mask=None):
    """transformers' logits and boxes for NHWC numpy images (and an optional (B, H, W) mask)."""
    import torch

    pixel_values = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))
    kwargs = {}
    if pixel_mask is not None:
        kwargs["pixel_mask"] = torch.from_numpy(pixel_mask).long()
    with torch.no_grad():
        out = model(pixel_values=pixel_values, **kwargs)
    return out.logits.numpy(), out.pred_boxes.numpy()


def padded_pair(rng, big=(64, 96), small=(40, 70)):
    """Two normalised NHWC images of different sizes, zero-padded to ``big``, and their mask."""
    images = np.zeros((2, *big, 3), np.float32)
    mask = np.zeros((2, *big), np.float32)
    images[0] = rng.normal(size=(*big, 3))
    mask[0] = 1
    images[1, : small[0], : small[1]] = rng.normal(size=(*small, 3))
    mask[1, : small[0], : small[1]] = 1
    return images, mask


def _parity_set(model, out, rng, big, small):
    images, mask = padded_pair(rng, big, small)
    single = hf_outputs(model, images[:1])
    batch = hf_outputs(model, images, mask)
    alone = hf_outputs(model, np.ascontiguousarray(images[1:, : small[0], : small[1]]))
    np.savez(
        out / "ref.npz",
        images=images,
        mask=mask,
        single_logits=single[0],
        single_boxes=single[1],
        batch_logits=batch[0],
        batch_boxes=batch[1],
        alone_logits=alone[0],
        alone_boxes=alone[1],
    )


def _mha_max_diff(model, original):
    """Largest difference between torch's MultiheadAttention fed the packed in_proj and
    transformers' attention module, on one encoder layer."""
    import torch

    prefix = "transformer.encoder.layers.1.self_attn."
    d = model.config.d_model
    mha = torch.nn.MultiheadAttention(d, model.config.encoder_attention_heads, batch_first=True)
    mha.load_state_dict({k[len(prefix) :]: v for k, v in original.items() if k.startswith(prefix)})
    x = torch.randn(2, 7, d)
    with torch.no_grad():
        theirs, _ = model.model.encoder.layers[1].self_attn(hidden_states=x, attention_mask=None)
        ours, _ = mha.eval()(x, x, x, need_weights=False)
    return float((ours - theirs).abs().max())


def generate(spec, out):
    from pathlib import Path

    import torch

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    if spec == "small":
        model = make_hf_model(small_config(num_labels=5, num_queries=10), seed=0)
        state = model.state_dict()
        torch.save(state, out / "hf.pth")
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in state.items()}, out / "model.safetensors")
        ckpt = original_checkpoint(model)
        torch.save(ckpt, out / "detr-original.pth")
        _parity_set(model, out, rng, (64, 96), (40, 70))
        info = {"mha_max_diff": _mha_max_diff(model, ckpt["model"])}
        (out / "info.json").write_text(json.dumps(info))
    elif spec == "presets":
        model = make_hf_model(small_config(num_labels=4, num_queries=6), seed=3)
        torch.save(original_checkpoint(model), out / "detr-tiny.pth")
        image = rng.normal(size=(1, 64, 64, 3)).astype(np.float32)
        logits, boxes = hf_outputs(model, image)
        np.savez(out / "ref.npz", images=image, logits=logits, boxes=boxes)
    elif spec == "coco_tiny":
        model = make_hf_model(small_config(num_labels=91, num_queries=6), seed=5)
        torch.save(original_checkpoint(model), out / "detr-tiny.pth")
    elif spec == "r50":
        from transformers import DetrConfig

        config = DetrConfig(use_timm_backbone=False, use_pretrained_backbone=False, num_labels=91)
        model = make_hf_model(config, seed=1)
        torch.save(original_checkpoint(model), out / "detr-r50.pth")
        _parity_set(model, out, rng, (96, 128), (70, 100))
    elif spec == "images":
        from transformers import DetrImageProcessorPil
        from transformers.image_transforms import get_size_with_aspect_ratio

        ims = [
            rng.integers(0, 256, (50, 70, 3), dtype=np.uint8),
            rng.integers(0, 256, (90, 60, 3), dtype=np.uint8),
        ]
        size = {"shortest_edge": 64, "longest_edge": 100}
        ref = DetrImageProcessorPil(size=size)(ims, return_tensors="np")
        sizes = rng.integers(1, 4000, (500, 2))
        hf_sizes = np.array([get_size_with_aspect_ratio(tuple(s), 800, 1333) for s in sizes])
        np.savez(
            out / "ref.npz",
            image0=ims[0],
            image1=ims[1],
            pixel_values=ref["pixel_values"],
            pixel_mask=ref["pixel_mask"],
            sizes=sizes,
            hf_sizes=hf_sizes,
        )
    else:
        raise SystemExit(f"unknown spec {spec!r}")


if __name__ == "__main__":
    for name in sys.argv[2:]:
        generate(name, os.path.join(sys.argv[1], name))
