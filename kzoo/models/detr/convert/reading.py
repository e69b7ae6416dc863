"""Reading DETR checkpoints: files into ``{name: float32 array}``, and what format they are in.

Two source formats are understood, told apart by their key names (``detect_format``):

- **original** (facebookresearch/detr, the released ``detr-r50-*.pth``/``detr-r101-*.pth``): a
  file holding ``{"model": state_dict}`` (other entries such as ``args``, ``optimizer`` or
  ``epoch`` are ignored). Keys: ``backbone.0.body.{conv1,bn1,layer1..4}.*`` (torchvision ResNet,
  frozen batch norm buffers ``weight/bias/running_mean/running_var``), ``input_proj.*``,
  ``query_embed.weight``, ``transformer.{encoder,decoder}.layers.{i}.*`` where attention
  projections are ``torch.nn.MultiheadAttention``'s stacked ``in_proj_weight`` (3·d, d) and
  ``in_proj_bias`` (3·d,) — q, k, v in that order, the split ``F.multi_head_attention_forward``
  does — plus ``out_proj.*``; ``transformer.decoder.norm.*``, ``class_embed.*``,
  ``bbox_embed.layers.{0,1,2}.*``.
- **huggingface** (``DetrForObjectDetection.state_dict()`` of the installed transformers 5.x
  with its own ResNet backbone, ``use_timm_backbone=False``): ``model.backbone.model.embedder``/
  ``encoder.stages.{s}.layers.{b}.{layer.{n},shortcut}.{convolution,normalization}``,
  ``model.input_projection``, ``model.query_position_embeddings``,
  ``model.{encoder,decoder}.layers.{i}.{self_attn,encoder_attn}.{q,k,v,o}_proj``,
  ``*_layer_norm``, ``mlp.fc{1,2}``, ``model.decoder.layernorm``, ``class_labels_classifier``,
  ``bbox_predictor.layers.{j}``. The older transformers 4.x names (``backbone.conv_encoder``,
  ``out_proj``, ``fc1``/``fc2`` without ``mlp``) and a timm backbone (torchvision names under
  ``model.backbone.model.``) are accepted too.

How the names of both map onto kzoo's variables is ``kzoo.models.detr.convert.weights``.

Checkpoints are read without unpickling arbitrary objects: ``torch.load(weights_only=True)``
(with ``argparse.Namespace`` allowed, which facebookresearch's training script stores as
``args``) or ``safetensors``. Reading ``.pth``/``.bin`` files needs torch, whatever the keras
backend; ``.safetensors`` files do not. A HuggingFace ``config.json`` beside the checkpoint is
read for what the tensors do not say (attention heads, a dilated DC5 backbone).

DC5 (a dilated last ResNet stage) leaves no trace in the tensors: ``checkpoint_dilation`` reads
it from the training arguments a facebookresearch checkpoint stores (``args.dilation``), a
HuggingFace ``config.json`` beside the checkpoint (``dilation``, or a timm backbone's
``output_stride`` 16), or the released files' names (``detr-r50-dc5-*.pth``), in that order.
"""

import json
import os

import numpy as np


def read_state_dict(path):
    """Read a checkpoint file into a flat ``{name: float32 numpy array}``.

    ``.safetensors`` through safetensors; anything else through
    ``torch.load(map_location="cpu", weights_only=True)``. A ``{"model": state_dict}`` or
    ``{"state_dict": ...}`` wrapper is unwrapped, and a ``module.`` prefix (DistributedDataParallel)
    dropped.
    """
    return read_checkpoint(path)[0]


def read_checkpoint(path):
    """``(state_dict, training_args)``: :func:`read_state_dict`'s tensors, and the ``args``
    (an ``argparse.Namespace``, as a dict) a facebookresearch checkpoint stores beside its
    ``"model"``, else ``{}``."""
    path = os.fspath(path)
    if os.path.isdir(path):
        path = _checkpoint_in_directory(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Checkpoint {path!r} does not exist.")
    args = {}
    if path.endswith(".safetensors"):
        state = _read_safetensors(path)
    else:
        state, args = _read_torch(path)
    if all(k.startswith("module.") for k in state):
        state = {k[len("module.") :]: v for k, v in state.items()}
    return state, args


def _checkpoint_in_directory(path):
    for name in ("model.safetensors", "pytorch_model.bin", "checkpoint.pth"):
        if os.path.isfile(os.path.join(path, name)):
            return os.path.join(path, name)
    raise ValueError(
        f"{path} is a directory without model.safetensors, pytorch_model.bin or checkpoint.pth; "
        "pass the checkpoint file itself."
    )


def _read_safetensors(path):
    try:
        from safetensors import SafetensorError
        from safetensors.numpy import load_file
    except ImportError:
        raise ValueError(
            "Reading .safetensors checkpoints needs the safetensors package: "
            "pip install safetensors (or kzoo[detr])."
        ) from None
    try:
        state = load_file(path)
    except (SafetensorError, OSError, ValueError, TypeError) as e:
        raise ValueError(f"{path} is not a readable safetensors file: {e}") from None
    return {k: _as_float32(k, v) for k, v in state.items()}


def _read_torch(path):
    try:
        import torch
    except ImportError:
        raise ValueError(
            f"Reading {os.path.basename(path)} (a PyTorch checkpoint) needs torch installed, "
            "whatever the keras backend: pip install torch==2.13.0. Checkpoints saved as "
            ".safetensors convert without it."
        ) from None
    import argparse
    import pickle
    import zipfile

    try:
        # facebookresearch/detr's training script stores its argparse arguments next to the
        # weights; a Namespace only holds plain values, so it is safe to allow.
        with torch.serialization.safe_globals([argparse.Namespace]):
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        lines = [line.strip() for line in str(e).splitlines() if line.strip()]
        refused = [line for line in lines if "GLOBAL" in line]
        if refused:
            raise ValueError(
                f"{path} holds objects other than tensors and plain containers, which kzoo "
                f"refuses to unpickle (torch.load(weights_only=True)): {refused[0]}"
            ) from None
        detail = lines[-2] if len(lines) > 1 else str(e)
        raise ValueError(f"{path} is not a readable PyTorch checkpoint: {detail}") from None
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile) as e:
        raise ValueError(f"{path} is not a readable PyTorch checkpoint: {e}") from None
    except (KeyError, ValueError, IndexError, TypeError):
        # A file that is not a checkpoint at all (an image) falls through to torch's legacy
        # pickle reader, which fails with whatever its first bytes decode to (KeyError: 101).
        raise ValueError(
            f"{path} is not a PyTorch checkpoint (torch.load cannot parse it); expected a .pth "
            "or .bin state dict, or a .safetensors file."
        ) from None
    args = {}
    if isinstance(obj, dict):
        if isinstance(obj.get("args"), argparse.Namespace):
            args = vars(obj["args"])
        for wrapper in ("model", "state_dict"):
            if isinstance(obj.get(wrapper), dict):
                obj = obj[wrapper]
                break
    if not isinstance(obj, dict) or not obj:
        raise ValueError(
            f"{path} does not hold a state dict (a non-empty mapping of names to tensors, or "
            f'{{"model": state_dict}}); found {type(obj).__name__}.'
        )
    state = {}
    not_tensors = []
    for name, value in obj.items():
        if isinstance(value, torch.Tensor):
            state[str(name)] = _as_float32(name, value.detach().to(torch.float32).numpy())
        else:
            not_tensors.append(f"{name} ({type(value).__name__})")
    if not_tensors:
        raise ValueError(
            f"{path}: these state-dict entries are not tensors: {', '.join(not_tensors)}."
        )
    return state, args


def _as_float32(name, array):
    array = np.asarray(array)
    if not (np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.integer)):
        raise ValueError(f"Tensor {name!r} has dtype {array.dtype}, not a number type.")
    return np.ascontiguousarray(array, dtype=np.float32)


def detect_format(state):
    """``"original"`` or ``"huggingface"``, from the key names."""
    keys = list(state)
    if any(k.startswith(("transformer.", "backbone.0.body.")) for k in keys):
        return "original"
    if any(k.startswith(("model.", "class_labels_classifier.", "bbox_predictor.")) for k in keys):
        return "huggingface"
    sample = ", ".join(sorted(keys)[:5])
    raise ValueError(
        "Not a DETR checkpoint: expected facebookresearch keys (backbone.0.body.*, "
        f"transformer.*) or HuggingFace keys (model.*, class_labels_classifier.*); found {sample}..."
    )


def checkpoint_dilation(src, args=None):
    """Whether the checkpoint at ``src`` is DETR-DC5: see the module docstring for the sources.

    Args:
        src: The checkpoint file or directory.
        args: The training arguments stored in the checkpoint (:func:`read_checkpoint`).
    """
    if args and isinstance(args.get("dilation"), bool):
        return args["dilation"]
    config = _sidecar_config(src)
    if config is not None:
        return config_dilation(config)
    return "-dc5" in os.path.basename(os.path.normpath(src)).lower()


def config_dilation(config):
    """DC5 from a HuggingFace ``DetrConfig`` dict: a timm backbone's ``output_stride`` (16) where
    transformers 5 wrote one, else the ``dilation`` flag (transformers 4's configs)."""
    backbone = config.get("backbone_config")
    if isinstance(backbone, dict) and backbone.get("output_stride") is not None:
        return backbone["output_stride"] == 16
    kwargs = config.get("backbone_kwargs")
    if isinstance(kwargs, dict) and kwargs.get("output_stride") is not None:
        return kwargs["output_stride"] == 16
    return config.get("dilation") is True


def _sidecar_config(src):
    folder = src if os.path.isdir(src) else os.path.dirname(os.path.abspath(src))
    path = os.path.join(folder, "config.json")
    if not os.path.isfile(path):
        return None
    try:
        with open(path) as f:
            config = json.load(f)
    except (OSError, json.JSONDecodeError):
        return None
    return config if isinstance(config, dict) and config.get("model_type") == "detr" else None


def heads_from_sidecar(src):
    """``encoder_attention_heads`` from a HuggingFace ``config.json`` beside the checkpoint."""
    config = _sidecar_config(src)
    if config is None:
        return None
    heads = {config.get("encoder_attention_heads"), config.get("decoder_attention_heads")}
    heads.discard(None)
    return heads.pop() if len(heads) == 1 else None
