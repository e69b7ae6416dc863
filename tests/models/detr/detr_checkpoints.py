"""Reference DETR checkpoints for the converter tests, made without kzoo's converter.

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
  order (``F.multi_head_attention_forward`` chunks it in three); ``test_convert`` checks this
  against torch's own module.
"""

import argparse
import re

import numpy as np
import torch
from transformers import DetrConfig, DetrForObjectDetection, ResNetConfig


def small_config(num_labels=5, num_queries=10):
    """A DETR small enough for CPU tests, with kzoo's "small" backbone shape (width 16)."""
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


def make_hf_model(config=None, seed=0):
    """A transformers DETR in eval mode with every tensor randomised.

    transformers initialises biases to 0, norms to 1/0 and batch-norm statistics to 0/1; those
    values would hide a swapped or dropped tensor, so everything gets noise.
    """
    torch.manual_seed(seed)
    model = DetrForObjectDetection(
        config or DetrConfig(use_timm_backbone=False, use_pretrained_backbone=False)
    )
    with torch.no_grad():
        for name, tensor in list(model.named_parameters()) + list(model.named_buffers()):
            if name.endswith("running_var"):
                tensor.uniform_(0.5, 1.5)
            elif name.endswith("running_mean"):
                tensor.normal_(0.0, 0.1)
            elif tensor.is_floating_point():
                tensor.add_(torch.randn_like(tensor) * 0.05)
    return model.eval()


_BACKBONE = [
    (r"model\.backbone\.model\.embedder\.embedder\.convolution\.(.+)", r"conv1.\1"),
    (r"model\.backbone\.model\.embedder\.embedder\.normalization\.(.+)", r"bn1.\1"),
]


def _stage(m):
    return f"layer{int(m.group(1)) + 1}.{m.group(2)}"


def hf_to_original(state_dict):
    """A transformers DETR state dict renamed into facebookresearch/detr's names."""
    out = {}
    attn = {}
    for key, value in state_dict.items():
        value = value.detach().clone()
        name = None
        for pattern, template in _BACKBONE:
            m = re.fullmatch(pattern, key)
            if m:
                name = "backbone.0.body." + m.expand(template)
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
                if proj.group(2) == "o":
                    name = f"{base}.{module}.out_proj.{proj.group(3)}"
                else:
                    attn.setdefault((base, module, proj.group(3)), {})[proj.group(2)] = value
                    continue
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
        simple = {
            "model.input_projection.weight": "input_proj.weight",
            "model.input_projection.bias": "input_proj.bias",
            "model.query_position_embeddings.weight": "query_embed.weight",
            "model.decoder.layernorm.weight": "transformer.decoder.norm.weight",
            "model.decoder.layernorm.bias": "transformer.decoder.norm.bias",
            "class_labels_classifier.weight": "class_embed.weight",
            "class_labels_classifier.bias": "class_embed.bias",
        }
        if key in simple:
            name = simple[key]
        m = re.fullmatch(r"bbox_predictor\.layers\.(\d+)\.(weight|bias)", key)
        if m:
            name = f"bbox_embed.layers.{m.group(1)}.{m.group(2)}"
        if name is None:
            raise KeyError(f"no original name for {key}")
        out[name] = value
    for (base, module, param), parts in attn.items():
        out[f"{base}.{module}.in_proj_{param}"] = torch.cat([parts["q"], parts["k"], parts["v"]])
    return out


def original_checkpoint(hf_model, with_args=True):
    """``{"model": state_dict}`` as facebookresearch/detr saves it (plus ``args``/``epoch``)."""
    ckpt = {"model": hf_to_original(hf_model.state_dict())}
    if with_args:
        ckpt["args"] = argparse.Namespace(lr=1e-4, backbone="resnet50", num_queries=10)
        ckpt["epoch"] = 499
    return ckpt


def hf_outputs(model, images, pixel_mask=None):
    """transformers' logits and boxes for NHWC numpy images (and an optional (B, H, W) mask)."""
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
