"""DETR repos on the Hugging Face Hub (``hf://facebook/detr-resnet-50``) as kzoo presets.

``kzoo.presets.hub`` downloads and caches; this module says what a transformers DETR repo is
(:func:`check_config`, run on ``config.json`` before any weights are downloaded) and converts it
(:func:`convert_repo`, through :func:`kzoo.models.detr.convert.convert_detr`).

The layouts read are the ones transformers writes for ``DetrForObjectDetection``:

- transformers 4 (the ``facebook/detr-*`` repos): ``use_timm_backbone: true`` with ``backbone``
  (``"resnet50"``/``"resnet101"``) and ``dilation`` (DC5), or ``use_timm_backbone: false`` with a
  ``backbone_config`` of ``model_type: "resnet"`` (the ``no_timm`` revisions);
- transformers 5: a ``backbone_config`` of ``model_type: "timm_backbone"`` (``backbone``,
  ``output_stride``: 16 for DC5) or ``"resnet"``.

Weights: ``model.safetensors``, else ``pytorch_model.bin`` (read with ``torch.load(weights_only=
True)``; without torch such a repo is refused before its download, naming safetensors).
``use_pretrained_backbone`` does not matter: the repo's state dict holds the backbone's weights.

DC5 follows the config (``dilation: true``, or a timm ``output_stride`` of 16), whichever
backbone it names. transformers itself dilates only a timm backbone: with its own ResNet it
ignores the flag, so for such a repo kzoo's outputs are the dilated model's (what the weights
were trained as), not transformers'.
"""

import importlib.util
import sys

from kzoo.models.detr.convert.reading import config_dilation
from kzoo.models.detr.model.backbone import BASE_WIDTH, EXPANSION, RESNET_BLOCKS

ARCHITECTURE = "DetrForObjectDetection"
TIMM_RESNETS = ("resnet50", "resnet101")
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


def _refuse(handle, field, value, why):
    raise ValueError(f"{handle}: config.json {field} = {value!r}: {why}")


def _timm_name(config):
    """The timm model name of a timm-backbone DETR config, else None (transformers' ResNet)."""
    backbone_config = config.get("backbone_config")
    if isinstance(backbone_config, dict) and backbone_config.get("model_type") == "timm_backbone":
        return str(backbone_config.get("backbone") or "resnet50"), "backbone_config.backbone"
    if isinstance(backbone_config, dict):
        return None, None
    # transformers builds a timm backbone unless told otherwise (DetrConfig's default).
    if config.get("use_timm_backbone", True):
        return str(config.get("backbone") or "resnet50"), "backbone"
    return None, None


def _check_native(handle, backbone):
    """transformers' own ResNet: the options kzoo's ResNetBackbone implements."""
    if backbone.get("model_type", "resnet") != "resnet":
        _refuse(
            handle,
            "backbone_config.model_type",
            backbone.get("model_type"),
            "kzoo's DETR has ResNet backbones only (transformers' 'resnet' or timm's resnet50/101).",
        )
    checks = (
        ("layer_type", "bottleneck", "kzoo's ResNet is built of bottleneck blocks"),
        ("hidden_act", "relu", "kzoo's ResNet uses ReLU"),
        ("num_channels", 3, "kzoo's DETR takes RGB images"),
        (
            "downsample_in_bottleneck",
            False,
            "kzoo's ResNet strides the 3x3 convolution (v1.5, torchvision's), not the first 1x1",
        ),
        ("downsample_in_first_stage", False, "kzoo's first stage does not downsample"),
    )
    for field, expected, why in checks:
        value = backbone.get(field, expected)
        if value != expected:
            _refuse(handle, f"backbone_config.{field}", value, why + ".")
    depths = tuple(backbone.get("depths", (3, 4, 6, 3)))
    width = backbone.get("embedding_size", 64)
    hidden = list(backbone.get("hidden_sizes", (256, 512, 1024, 2048)))
    variants = [
        name
        for name, blocks in RESNET_BLOCKS.items()
        if blocks == depths
        and BASE_WIDTH[name] == width
        and hidden == [BASE_WIDTH[name] * EXPANSION * 2**s for s in range(4)]
    ]
    if not variants:
        _refuse(
            handle,
            "backbone_config (depths, embedding_size, hidden_sizes)",
            (list(depths), width, hidden),
            "kzoo's DETR has ResNet-50 ([3, 4, 6, 3], 64, [256, 512, 1024, 2048]), ResNet-101 "
            "([3, 4, 23, 3], ...) and its small test backbone.",
        )


def check_config(config, handle, files):
    """The weight file to download for a transformers DETR repo; a ``ValueError`` naming the
    repo and the field when the config is not a DETR kzoo can build.

    Args:
        config: The repo's ``config.json``.
        handle: ``hf://owner/repo[@revision]``, for messages.
        files: Every file name in the repo at that commit.
    """
    if config.get("model_type") != "detr":
        _refuse(handle, "model_type", config.get("model_type"), "not a DETR.")
    architectures = config.get("architectures")
    if architectures and ARCHITECTURE not in architectures:
        _refuse(
            handle,
            "architectures",
            architectures,
            f"kzoo's DETR is the object detector ({ARCHITECTURE}); DetrModel has no detection "
            "heads and DetrForSegmentation is the panoptic model.",
        )
    for field, expected, why in (
        ("position_embedding_type", "sine", "kzoo's DETR has the sine position encoding"),
        ("activation_function", "relu", "kzoo's DETR transformer uses ReLU"),
        ("num_channels", 3, "kzoo's DETR takes RGB images"),
    ):
        value = config.get(field, expected)
        if value != expected:
            _refuse(handle, field, value, why + ".")
    for first, second in (
        ("encoder_attention_heads", "decoder_attention_heads"),
        ("encoder_ffn_dim", "decoder_ffn_dim"),
    ):
        if config.get(first) != config.get(second):
            _refuse(
                handle,
                f"{first}/{second}",
                (config.get(first), config.get(second)),
                "kzoo's DETR has one value for the encoder and the decoder.",
            )
    name, field = _timm_name(config)
    if name is not None:
        base = name.split("/")[-1].split(".")[0]
        if base not in TIMM_RESNETS:
            _refuse(
                handle,
                field,
                name,
                f"kzoo's DETR has the timm ResNets {', '.join(TIMM_RESNETS)} (torchvision's "
                "layout) and transformers' own ResNet.",
            )
        stride = _output_stride(config)
        if stride not in (16, 32):
            _refuse(handle, "output_stride", stride, "kzoo's DETR runs at stride 32, or 16 (DC5).")
    else:
        _check_native(handle, config.get("backbone_config") or {})
    for weights in WEIGHT_FILES:
        if weights in files:
            break
    else:
        shown = ", ".join(files[:10]) or "no files"
        raise ValueError(
            f"{handle} holds no {' or '.join(WEIGHT_FILES)} (it holds {shown}); kzoo reads a "
            "DETR's weights from one of them."
        )
    if weights.endswith(".bin") and not _torch_available():
        raise ValueError(
            f"{handle} has its weights only as pytorch_model.bin, which needs torch to read "
            "(torch.load with weights_only=True; nothing else is unpickled): pip install "
            "torch==2.13.0, or load a revision of the repo that has model.safetensors."
        )
    return [weights]


def _torch_available():
    if "torch" in sys.modules:
        return sys.modules["torch"] is not None
    return importlib.util.find_spec("torch") is not None


def _output_stride(config):
    for holder in (config.get("backbone_config"), config.get("backbone_kwargs")):
        if isinstance(holder, dict) and holder.get("output_stride") is not None:
            return holder["output_stride"]
    return 16 if config.get("dilation") is True else 32


def _class_names(config):
    """``id2label`` as a list (labels 0..N-1), unless it is transformers' placeholder
    (``LABEL_i``). ``label_metadata`` ignores it if N is not the model's number of classes."""
    labels = config.get("id2label")
    if not isinstance(labels, dict) or not labels:
        return None
    try:
        names = {int(k): str(v) for k, v in labels.items()}
    except (TypeError, ValueError):
        return None
    if set(names) != set(range(len(names))):
        return None
    if all(names[i] == f"LABEL_{i}" for i in names):
        return None
    return [names[i] for i in range(len(names))]


def convert_repo(files, config, target, metadata):
    """Write the preset directory ``target`` from a checked repo's downloaded ``files``."""
    from kzoo.models.detr.convert import convert_detr

    (weights,) = [files[name] for name in WEIGHT_FILES if name in files]
    heads = config.get("encoder_attention_heads")
    extra = dict(metadata)
    extra["converted_from"] = f"hf://{metadata['hub_repo']}@{metadata['hub_commit']}"
    names = _class_names(config)
    if names is not None:
        extra["class_names"] = names
    convert_detr(
        weights,
        target,
        num_heads=heads if isinstance(heads, int) else None,
        dilation=config_dilation(config),
        extra_metadata=extra,
    )
