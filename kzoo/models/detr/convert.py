"""Converting DETR checkpoints (facebookresearch and HuggingFace) into kzoo presets.

Two source formats are understood, told apart by their key names:

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

Both are first renamed into one canonical naming (the original's, with in_proj split into
``q_proj``/``k_proj``/``v_proj``), then written into the kzoo model's variables:

===================================================  =========================================
canonical tensor (torch layout)                      kzoo variable (keras layout)
===================================================  =========================================
``backbone.conv1.weight`` (O, I, kh, kw)             ``backbone.conv1.kernel`` (kh, kw, I, O)
``backbone.bn1.{weight,bias,running_mean,var}``      ``backbone.bn1.{gamma,beta,moving_mean,
                                                     moving_variance}``
``backbone.layer{s}.{b}.conv{n}`` / ``bn{n}``        ``backbone.layer{s}_{b}_conv{n}`` / ``_bn{n}``
``backbone.layer{s}.0.downsample.{0,1}``             ``backbone.layer{s}_0_downsample_{0,1}``
``input_proj.weight`` (d, C, 1, 1), ``.bias``        ``input_proj`` kernel (transposed), bias
``query_embed.weight`` (Q, d)                        ``query_embed.embeddings`` (Q, d)
``transformer.encoder.layers.{i}.self_attn.          ``transformer.encoder_layers[i].self_attn.
{q,k,v,out}_proj.weight`` (d, d)                     {q,k,v,out}_proj.kernel`` (d, d), = W.T
``...linear{1,2}``, ``...norm{1,2,3}``               ``linear{1,2}`` (W.T), ``norm{n}.gamma/beta``
``transformer.decoder.layers.{i}.multihead_attn``    ``decoder_layers[i].multihead_attn``
``transformer.decoder.norm``                         ``transformer.decoder_norm``
``class_embed`` (C+1, d)                             ``class_embed`` Dense (W.T)
``bbox_embed.layers.{j}``                            ``bbox_embed_{j}`` Dense (W.T)
===================================================  =========================================

Every source tensor is accounted for: a key no rule maps, a kzoo variable no tensor fills, or a
shape that does not fit is reported, all of them in one ``ValueError``. Only the frozen batch
norms' ``num_batches_tracked`` counters (meaningless for a frozen norm) are skipped.

Checkpoints are read without unpickling arbitrary objects: ``torch.load(weights_only=True)``
(with ``argparse.Namespace`` allowed, which facebookresearch's training script stores as
``args``) or ``safetensors``. Reading ``.pth``/``.bin`` files needs torch, whatever the keras
backend; ``.safetensors`` files do not.
"""

import json
import os
import re

import numpy as np

BN_PARAMS = {
    "weight": "gamma",
    "bias": "beta",
    "running_mean": "moving_mean",
    "running_var": "moving_variance",
}
IGNORED_SUFFIXES = (".num_batches_tracked",)
RESNET_DEPTHS = {(3, 4, 6, 3): "resnet50", (3, 4, 23, 3): "resnet101"}
DEFAULT_NUM_HEADS = 8


# ----------------------------------------------------------------------------- reading


def read_state_dict(path):
    """Read a checkpoint file into a flat ``{name: float32 numpy array}``.

    ``.safetensors`` through safetensors; anything else through
    ``torch.load(map_location="cpu", weights_only=True)``. A ``{"model": state_dict}`` or
    ``{"state_dict": ...}`` wrapper is unwrapped, and a ``module.`` prefix (DistributedDataParallel)
    dropped.
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        path = _checkpoint_in_directory(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Checkpoint {path!r} does not exist.")
    if path.endswith(".safetensors"):
        state = _read_safetensors(path)
    else:
        state = _read_torch(path)
    if all(k.startswith("module.") for k in state):
        state = {k[len("module.") :]: v for k, v in state.items()}
    return state


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
    if isinstance(obj, dict):
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
    return state


def _as_float32(name, array):
    array = np.asarray(array)
    if not (np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.integer)):
        raise ValueError(f"Tensor {name!r} has dtype {array.dtype}, not a number type.")
    return np.ascontiguousarray(array, dtype=np.float32)


# ----------------------------------------------------------------------------- renaming


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


_ORIGINAL_RULES = [
    (r"backbone\.0\.body\.(.+)", r"backbone.\1"),
    (r"(input_proj\.(?:weight|bias))", r"\1"),
    (r"(query_embed\.weight)", r"\1"),
    (
        r"(transformer\.(?:encoder|decoder)\.layers\.\d+\.(?:self_attn|multihead_attn))"
        r"\.out_proj\.(weight|bias)",
        r"\1.out_proj.\2",
    ),
    (
        r"(transformer\.(?:encoder|decoder)\.layers\.\d+\.(?:linear[12]|norm[123])\.(?:weight|bias))",
        r"\1",
    ),
    (r"(transformer\.decoder\.norm\.(?:weight|bias))", r"\1"),
    (r"(class_embed\.(?:weight|bias))", r"\1"),
    (r"(bbox_embed\.layers\.\d+\.(?:weight|bias))", r"\1"),
]
_IN_PROJ = re.compile(
    r"(transformer\.(?:encoder|decoder)\.layers\.\d+\.(?:self_attn|multihead_attn))"
    r"\.in_proj_(weight|bias)"
)

# transformers 4.x wrote these names; 5.x renames them on load the same way.
_HF_LEGACY = [
    (r"^model\.backbone\.conv_encoder\.", "model.backbone."),
    (r"\.out_proj\.", ".o_proj."),
    (r"\.layers\.(\d+)\.fc([12])\.", r".layers.\1.mlp.fc\2."),
]
_HF_STAGE = r"model\.backbone\.model\.encoder\.stages\.(\d+)\.layers\.(\d+)"
_HF_ENC = r"model\.encoder\.layers\.(\d+)"
_HF_DEC = r"model\.decoder\.layers\.(\d+)"
_HF_RULES = [
    (r"model\.backbone\.model\.embedder\.embedder\.convolution\.weight", None, "conv1"),
    (r"model\.backbone\.model\.embedder\.embedder\.normalization\.(\w+)", None, "bn1"),
    (_HF_STAGE + r"\.layer\.(\d)\.convolution\.weight", None, "conv"),
    (_HF_STAGE + r"\.layer\.(\d)\.normalization\.(\w+)", None, "bn"),
    (_HF_STAGE + r"\.shortcut\.convolution\.weight", None, "down_conv"),
    (_HF_STAGE + r"\.shortcut\.normalization\.(\w+)", None, "down_bn"),
    # A timm ResNet backbone uses torchvision's names.
    (r"model\.backbone\.model\.((?:conv1|bn1|layer\d)\..+)", r"backbone.\1", None),
    (r"model\.input_projection\.(weight|bias)", r"input_proj.\1", None),
    (r"model\.query_position_embeddings\.weight", r"query_embed.weight", None),
    (
        _HF_ENC + r"\.self_attn\.([qkv])_proj\.(weight|bias)",
        r"transformer.encoder.layers.\1.self_attn.\2_proj.\3",
        None,
    ),
    (
        _HF_ENC + r"\.self_attn\.o_proj\.(weight|bias)",
        r"transformer.encoder.layers.\1.self_attn.out_proj.\2",
        None,
    ),
    (
        _HF_ENC + r"\.self_attn_layer_norm\.(weight|bias)",
        r"transformer.encoder.layers.\1.norm1.\2",
        None,
    ),
    (
        _HF_ENC + r"\.final_layer_norm\.(weight|bias)",
        r"transformer.encoder.layers.\1.norm2.\2",
        None,
    ),
    (
        _HF_ENC + r"\.mlp\.fc([12])\.(weight|bias)",
        r"transformer.encoder.layers.\1.linear\2.\3",
        None,
    ),
    (
        _HF_DEC + r"\.self_attn\.([qkv])_proj\.(weight|bias)",
        r"transformer.decoder.layers.\1.self_attn.\2_proj.\3",
        None,
    ),
    (
        _HF_DEC + r"\.self_attn\.o_proj\.(weight|bias)",
        r"transformer.decoder.layers.\1.self_attn.out_proj.\2",
        None,
    ),
    (
        _HF_DEC + r"\.encoder_attn\.([qkv])_proj\.(weight|bias)",
        r"transformer.decoder.layers.\1.multihead_attn.\2_proj.\3",
        None,
    ),
    (
        _HF_DEC + r"\.encoder_attn\.o_proj\.(weight|bias)",
        r"transformer.decoder.layers.\1.multihead_attn.out_proj.\2",
        None,
    ),
    (
        _HF_DEC + r"\.self_attn_layer_norm\.(weight|bias)",
        r"transformer.decoder.layers.\1.norm1.\2",
        None,
    ),
    (
        _HF_DEC + r"\.encoder_attn_layer_norm\.(weight|bias)",
        r"transformer.decoder.layers.\1.norm2.\2",
        None,
    ),
    (
        _HF_DEC + r"\.final_layer_norm\.(weight|bias)",
        r"transformer.decoder.layers.\1.norm3.\2",
        None,
    ),
    (
        _HF_DEC + r"\.mlp\.fc([12])\.(weight|bias)",
        r"transformer.decoder.layers.\1.linear\2.\3",
        None,
    ),
    (r"model\.decoder\.layernorm\.(weight|bias)", r"transformer.decoder.norm.\1", None),
    (r"class_labels_classifier\.(weight|bias)", r"class_embed.\1", None),
    (r"bbox_predictor\.layers\.(\d+)\.(weight|bias)", r"bbox_embed.layers.\1.\2", None),
]


def _hf_backbone_name(kind, m):
    if kind == "conv1":
        return "backbone.conv1.weight"
    if kind == "bn1":
        return f"backbone.bn1.{m.group(1)}"
    stage, block = int(m.group(1)) + 1, int(m.group(2))
    prefix = f"backbone.layer{stage}.{block}"
    if kind == "conv":
        return f"{prefix}.conv{int(m.group(3)) + 1}.weight"
    if kind == "bn":
        return f"{prefix}.bn{int(m.group(3)) + 1}.{m.group(4)}"
    if kind == "down_conv":
        return f"{prefix}.downsample.0.weight"
    return f"{prefix}.downsample.1.{m.group(3)}"


def to_canonical(state, fmt=None):
    """Rename a state dict into the canonical (original, q/k/v split) naming.

    Returns ``(canonical, fmt)``. Raises one ``ValueError`` listing every key no rule maps.
    """
    fmt = fmt or detect_format(state)
    canonical, unmapped = {}, []

    def put(name, value, source):
        if name in canonical:
            unmapped.append(f"{source} (a second tensor for {name})")
        canonical[name] = value

    for key, value in state.items():
        if key.endswith(IGNORED_SUFFIXES):
            continue
        if fmt == "original":
            m = _IN_PROJ.fullmatch(key)
            if m:
                if value.shape[0] % 3:
                    unmapped.append(f"{key} (first dimension {value.shape[0]} not divisible by 3)")
                    continue
                for part, chunk in zip("qkv", np.split(value, 3, axis=0)):
                    put(f"{m.group(1)}.{part}_proj.{m.group(2)}", chunk, key)
                continue
            for pattern, template in _ORIGINAL_RULES:
                m = re.fullmatch(pattern, key)
                if m:
                    put(m.expand(template), value, key)
                    break
            else:
                unmapped.append(key)
        else:
            name = key
            for pattern, repl in _HF_LEGACY:
                name = re.sub(pattern, repl, name)
            for pattern, template, kind in _HF_RULES:
                m = re.fullmatch(pattern, name)
                if m:
                    new = _hf_backbone_name(kind, m) if kind else m.expand(template)
                    put(new, value, key)
                    break
            else:
                unmapped.append(key)
    if unmapped:
        raise ValueError(
            f"{len(unmapped)} tensor(s) of this {fmt} DETR checkpoint map to nothing in kzoo's "
            f"DETR: {', '.join(sorted(unmapped))}."
        )
    return canonical, fmt


# ----------------------------------------------------------------------------- config


def infer_config(canonical, num_heads=None):
    """The ``kzoo.models.DETR`` arguments the tensors imply.

    Heads cannot be read off the tensors (q/k/v are d×d whatever the split); they default to
    DETR's 8 unless given.
    """

    def need(name):
        if name not in canonical:
            raise ValueError(f"The checkpoint has no {name}; it is not a complete DETR.")
        return canonical[name]

    classes = need("class_embed.weight")
    queries = need("query_embed.weight")
    num_queries, d_model = queries.shape
    encoder = _indices(canonical, r"transformer\.encoder\.layers\.(\d+)\.")
    decoder = _indices(canonical, r"transformer\.decoder\.layers\.(\d+)\.")
    if not decoder:
        raise ValueError("The checkpoint has no decoder layers.")
    ffn = need(f"transformer.decoder.layers.{decoder[-1]}.linear1.weight").shape[0]
    blocks = tuple(len(_indices(canonical, rf"backbone\.layer{s}\.(\d+)\.")) for s in range(1, 5))
    width = need("backbone.conv1.weight").shape[0]
    if width == 64 and blocks in RESNET_DEPTHS:
        backbone = RESNET_DEPTHS[blocks]
    else:
        from kzoo.models.detr import backbone as backbone_lib

        matches = [
            name
            for name, spec in backbone_lib.RESNET_BLOCKS.items()
            if spec == blocks and backbone_lib.BASE_WIDTH[name] == width
        ]
        if not matches:
            raise ValueError(
                f"The checkpoint's backbone has {blocks} bottlenecks per stage and stem width "
                f"{width}; kzoo's DETR supports ResNet-50 (3, 4, 6, 3), ResNet-101 (3, 4, 23, 3) "
                "(width 64) and its small backbone."
            )
        backbone = matches[0]
    heads = DEFAULT_NUM_HEADS if num_heads is None else num_heads
    if d_model % heads:
        raise ValueError(
            f"d_model {d_model} is not divisible by {heads} heads; pass num_heads=... ."
        )
    return {
        "num_classes": int(classes.shape[0]) - 1,
        "num_queries": int(num_queries),
        "backbone": backbone,
        "d_model": int(d_model),
        "num_heads": int(heads),
        "num_encoder_layers": len(encoder),
        "num_decoder_layers": len(decoder),
        "ffn_dim": int(ffn),
    }


def _indices(canonical, pattern):
    found = set()
    for key in canonical:
        m = re.match(pattern, key)
        if m:
            found.add(int(m.group(1)))
    return sorted(found)


def _refuse_dilated(src):
    """DC5 checkpoints dilate the last stage; their tensors look exactly like the plain ones."""
    config = _sidecar_config(src) or {}
    if "-dc5" in os.path.basename(src).lower() or config.get("dilation") is True:
        raise ValueError(
            f"{src} is a DETR-DC5 checkpoint (dilated last ResNet stage), which kzoo's DETR does "
            "not implement; its tensors would load but the outputs would be wrong."
        )


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


def _heads_from_sidecar(src):
    """``encoder_attention_heads`` from a HuggingFace ``config.json`` beside the checkpoint."""
    config = _sidecar_config(src)
    if config is None:
        return None
    heads = {config.get("encoder_attention_heads"), config.get("decoder_attention_heads")}
    heads.discard(None)
    return heads.pop() if len(heads) == 1 else None


# ----------------------------------------------------------------------------- assigning


def _torch_conv_to_keras(w):
    return np.transpose(w, (2, 3, 1, 0))


def _targets(model):
    """``{canonical name: (keras variable, torch→keras transform)}`` for every DETR weight."""
    targets = {}

    def conv(name, layer):
        targets[f"{name}.weight"] = (layer.kernel, _torch_conv_to_keras)
        if getattr(layer, "use_bias", False):
            targets[f"{name}.bias"] = (layer.bias, None)

    def dense(name, layer):
        targets[f"{name}.weight"] = (layer.kernel, np.transpose)
        targets[f"{name}.bias"] = (layer.bias, None)

    def norm(name, layer):
        targets[f"{name}.weight"] = (layer.gamma, None)
        targets[f"{name}.bias"] = (layer.beta, None)

    def frozen_bn(name, layer):
        for torch_name, keras_name in BN_PARAMS.items():
            targets[f"{name}.{torch_name}"] = (getattr(layer, keras_name), None)

    bb = model.backbone
    conv("backbone.conv1", bb.conv1)
    frozen_bn("backbone.bn1", bb.bn1)
    for prefix, _stage, _stride, _planes, _in in bb.block_specs:
        stage, block = prefix[len("layer") :].split("_")
        base = f"backbone.layer{stage}.{block}"
        for n in (1, 2, 3):
            conv(f"{base}.conv{n}", getattr(bb, f"{prefix}_conv{n}"))
            frozen_bn(f"{base}.bn{n}", getattr(bb, f"{prefix}_bn{n}"))
        if getattr(bb, f"{prefix}_downsample_0", None) is not None:
            conv(f"{base}.downsample.0", getattr(bb, f"{prefix}_downsample_0"))
            frozen_bn(f"{base}.downsample.1", getattr(bb, f"{prefix}_downsample_1"))

    proj = model.input_proj
    if len(proj.kernel.shape) == 4:
        conv("input_proj", proj)
    else:
        targets["input_proj.weight"] = (proj.kernel, lambda w: w[:, :, 0, 0].T)
        targets["input_proj.bias"] = (proj.bias, None)
    targets["query_embed.weight"] = (_query_variable(model), None)

    tr = model.transformer
    for i, layer in enumerate(tr.encoder_layers):
        _attention_and_ffn(dense, norm, f"transformer.encoder.layers.{i}", layer, ("self_attn",))
        for n in (1, 2):
            norm(f"transformer.encoder.layers.{i}.norm{n}", getattr(layer, f"norm{n}"))
    for i, layer in enumerate(tr.decoder_layers):
        _attention_and_ffn(
            dense, norm, f"transformer.decoder.layers.{i}", layer, ("self_attn", "multihead_attn")
        )
        for n in (1, 2, 3):
            norm(f"transformer.decoder.layers.{i}.norm{n}", getattr(layer, f"norm{n}"))
    norm("transformer.decoder.norm", tr.decoder_norm)
    dense("class_embed", model.class_embed)
    for j, layer in enumerate(_bbox_layers(model)):
        dense(f"bbox_embed.layers.{j}", layer)
    return targets


def _attention_and_ffn(dense, norm, base, layer, attentions):
    for attn_name in attentions:
        attn = getattr(layer, attn_name)
        for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
            dense(f"{base}.{attn_name}.{proj}", getattr(attn, proj))
    dense(f"{base}.linear1", layer.linear1)
    dense(f"{base}.linear2", layer.linear2)


def _query_variable(model):
    return model.query_embed.embeddings


def _bbox_layers(model):
    layers = []
    while getattr(model, f"bbox_embed_{len(layers)}", None) is not None:
        layers.append(getattr(model, f"bbox_embed_{len(layers)}"))
    return layers


def assign_weights(model, canonical):
    """Write canonical tensors into a built ``kzoo.models.DETR``.

    Raises one ``ValueError`` naming every tensor without a variable, every variable without a
    tensor, and every shape mismatch.
    """
    targets = _targets(model)
    unused = sorted(set(canonical) - set(targets))
    missing = sorted(set(targets) - set(canonical))
    mismatched, values = [], []
    for name in sorted(set(targets) & set(canonical)):
        variable, transform = targets[name]
        value = canonical[name]
        value = transform(value) if transform is not None else value
        if tuple(value.shape) != tuple(variable.shape):
            mismatched.append(
                f"{name}: checkpoint {tuple(canonical[name].shape)} -> {tuple(value.shape)}, "
                f"kzoo variable {variable.path} {tuple(variable.shape)}"
            )
        else:
            values.append((variable, value))
    problems = []
    if unused:
        problems.append(f"unmapped tensors ({len(unused)}): {', '.join(unused)}")
    if missing:
        problems.append(f"missing tensors ({len(missing)}): {', '.join(missing)}")
    if mismatched:
        problems.append(f"shape mismatches ({len(mismatched)}): {'; '.join(mismatched)}")
    if problems:
        raise ValueError("The checkpoint does not fit kzoo's DETR: " + " | ".join(problems))
    for variable, value in values:
        variable.assign(value.astype(variable.dtype))
    return len(values)


# ----------------------------------------------------------------------------- public API


def load_detr_checkpoint(src, num_heads=None, **config_overrides):
    """Build a ``kzoo.models.DETR`` holding the weights of the checkpoint at ``src``.

    Args:
        src: An original (``.pth``) or HuggingFace (``.pth``/``.bin``/``.safetensors``, or a
            directory holding one) DETR checkpoint.
        num_heads: Attention heads; DETR's 8 unless a HuggingFace ``config.json`` beside the
            checkpoint says otherwise.
        **config_overrides: Other ``DETR`` arguments (e.g. ``dropout``).

    Returns ``(model, info)`` where ``info`` holds the source format and the inferred config.
    """
    from kzoo.models.detr.detr_model import DETR

    src = os.fspath(src)
    _refuse_dilated(src)
    state = read_state_dict(src)
    canonical, fmt = to_canonical(state)
    if num_heads is None:
        num_heads = _heads_from_sidecar(src)
    config = infer_config(canonical, num_heads=num_heads)
    config.update(config_overrides)
    model = DETR(**config)
    _build(model)
    count = assign_weights(model, canonical)
    return model, {"format": fmt, "config": config, "tensors": count}


def _build(model):
    """Create the model's variables without drawing random initial values (all overwritten)."""
    from kzoo.presets.preset_io import placeholder_initializers

    with placeholder_initializers(model):
        model.build((None, None, None, 3))


def convert_detr(src, dst, num_heads=None, overwrite=True, force=False):
    """Convert a DETR checkpoint into a kzoo preset directory (written atomically).

    Args:
        src: Path of the checkpoint: the facebookresearch ``{"model": state_dict}`` file
            (``detr-r50-e632da11.pth``) or a HuggingFace ``DetrForObjectDetection`` state dict
            (``.pth``/``.bin``/``.safetensors``, or a directory with ``model.safetensors``).
        dst: The preset directory to write (``config.json``, ``model.weights.h5``,
            ``metadata.json``).
        num_heads: Attention heads (not recorded in the tensors); DETR's 8 by default.
        overwrite: Whether an existing kzoo preset at ``dst`` may be replaced.
        force: Whether a ``dst`` holding files that are not a kzoo preset may be replaced (they
            are deleted); see ``kzoo.presets.preset_io.check_destination``.

    Returns the absolute path of ``dst``.

    Example:

    ```python
    from kzoo.models.detr.convert import convert_detr
    convert_detr("detr-r50-e632da11.pth", "presets/detr_resnet50_coco")
    model = kzoo.models.DETR.from_preset("presets/detr_resnet50_coco")
    ```
    """
    from kzoo.presets import preset_io

    if num_heads is not None and (
        isinstance(num_heads, bool) or not isinstance(num_heads, int) or num_heads < 1
    ):
        raise ValueError(f"num_heads must be a positive integer or None; got {num_heads!r}.")
    # Refuse a destination before the (slow) conversion, not after it.
    preset_io.check_destination(dst, overwrite=overwrite, force=force)
    model, info = load_detr_checkpoint(src, num_heads=num_heads)
    extra = {
        "converted_from": os.path.basename(os.fspath(src)),
        "source_format": info["format"],
        "label_space": "coco91" if info["config"]["num_classes"] == 91 else "ids",
    }
    return preset_io.save_preset(model, dst, overwrite=overwrite, extra_metadata=extra, force=force)
