"""Porting DETR checkpoint tensors into kzoo's variables: the one table of which goes where.

A checkpoint's keys are first renamed into one canonical naming (``to_canonical``): the
original facebookresearch names, with ``nn.MultiheadAttention``'s stacked ``in_proj`` split into
``q_proj``/``k_proj``/``v_proj`` (thirds, in that order) and ``backbone.0.body.`` shortened to
``backbone.``. HuggingFace names are renamed by the rules in ``_HF_RULES`` (``model.backbone.
model.embedder.embedder.{convolution,normalization}`` is ``conv1``/``bn1``, ``...encoder.stages.
{s-1}.layers.{b}.layer.{n-1}`` is ``layer{s}.{b}.conv{n}``/``bn{n}``, ``...shortcut`` is
``downsample.{0,1}``, ``q/k/v/o_proj`` are ``q/k/v/out_proj``, ``encoder_attn`` is
``multihead_attn``, ``self_attn_layer_norm``/``encoder_attn_layer_norm``/``final_layer_norm`` are
``norm1``/``norm2``/``norm2`` (encoder) or ``norm3`` (decoder), ``mlp.fc{1,2}`` is
``linear{1,2}``, ``class_labels_classifier`` is ``class_embed``, ``bbox_predictor`` is
``bbox_embed``).

Then ``WEIGHT_TABLE`` below, the one table, says which canonical tensor fills which variable of
``kzoo.models.DETR`` (keyed as ``DETR.weights_by_path()`` keys them) and how it is laid out;
``assign_weights`` is driven by it. Each row maps a torch module to a kzoo layer (``{s}``,
``{b}``, ``{n}``, ``{i}``, ``{j}`` are indices, ``{proj}`` one of ``q_proj, k_proj, v_proj,
out_proj``, ``{attn}`` ``self_attn`` or ``multihead_attn``; each stands for the same text on
both sides), and its kind says how the module's parameters become the layer's variables
(``PARAMETERS``):

- ``conv``: ``weight`` (O, I, kh, kw) → ``kernel`` (kh, kw, I, O), ``w.permute(2, 3, 1, 0)``;
- ``linear``: ``weight`` (out, in) → Dense ``kernel`` (in, out), ``w.T``; ``bias`` as it is;
- ``frozen_bn``: ``weight/bias/running_mean/running_var`` → ``gamma/beta/moving_mean/
  moving_variance`` (``num_batches_tracked`` is dropped);
- ``layer_norm``: ``weight/bias`` → ``gamma/beta``;
- ``embedding``: ``weight`` (Q, d) → ``embeddings`` (Q, d) as it is.

Every source tensor is accounted for: a key no rule maps, a kzoo variable no tensor fills, or a
shape that does not fit is reported, all of them in one ``ValueError``. Only the frozen batch
norms' ``num_batches_tracked`` counters (meaningless for a frozen norm) are skipped.
"""

import re

import numpy as np

from kzoo.models.detr.convert.reading import detect_format

WEIGHT_TABLE = (
    # (canonical torch module, kzoo layer as DETR.weights_by_path() keys it, kind)
    ("backbone.conv1", "backbone/conv1", "conv"),
    ("backbone.bn1", "backbone/bn1", "frozen_bn"),
    ("backbone.layer{s}.{b}.conv{n}", "backbone/layer{s}_{b}_conv{n}", "conv"),
    ("backbone.layer{s}.{b}.bn{n}", "backbone/layer{s}_{b}_bn{n}", "frozen_bn"),
    ("backbone.layer{s}.{b}.downsample.0", "backbone/layer{s}_{b}_downsample_0", "conv"),
    ("backbone.layer{s}.{b}.downsample.1", "backbone/layer{s}_{b}_downsample_1", "frozen_bn"),
    ("input_proj", "input_proj", "conv"),
    ("query_embed", "query_embed", "embedding"),
    (
        "transformer.encoder.layers.{i}.self_attn.{proj}",
        "transformer/encoder_layer_{i}/self_attn/{proj}",
        "linear",
    ),
    (
        "transformer.encoder.layers.{i}.linear{n}",
        "transformer/encoder_layer_{i}/linear{n}",
        "linear",
    ),
    (
        "transformer.encoder.layers.{i}.norm{n}",
        "transformer/encoder_layer_{i}/norm{n}",
        "layer_norm",
    ),
    (
        "transformer.decoder.layers.{i}.{attn}.{proj}",
        "transformer/decoder_layer_{i}/{attn}/{proj}",
        "linear",
    ),
    (
        "transformer.decoder.layers.{i}.linear{n}",
        "transformer/decoder_layer_{i}/linear{n}",
        "linear",
    ),
    (
        "transformer.decoder.layers.{i}.norm{n}",
        "transformer/decoder_layer_{i}/norm{n}",
        "layer_norm",
    ),
    ("transformer.decoder.norm", "transformer/decoder_norm", "layer_norm"),
    ("class_embed", "class_embed", "linear"),
    ("bbox_embed.layers.{j}", "bbox_embed_{j}", "linear"),
)


def _conv_to_keras(w):
    return np.transpose(w, (2, 3, 1, 0))


# kind: {torch parameter: (keras variable, torch -> keras layout, None for as it is)}
PARAMETERS = {
    "conv": {"weight": ("kernel", _conv_to_keras), "bias": ("bias", None)},
    "linear": {"weight": ("kernel", np.transpose), "bias": ("bias", None)},
    "frozen_bn": {
        "weight": ("gamma", None),
        "bias": ("beta", None),
        "running_mean": ("moving_mean", None),
        "running_var": ("moving_variance", None),
    },
    "layer_norm": {"weight": ("gamma", None), "bias": ("beta", None)},
    "embedding": {"weight": ("embeddings", None)},
}
PLACEHOLDERS = {
    "s": r"\d+",
    "b": r"\d+",
    "n": r"\d+",
    "i": r"\d+",
    "j": r"\d+",
    "proj": "q_proj|k_proj|v_proj|out_proj",
    "attn": "self_attn|multihead_attn",
}
IGNORED_SUFFIXES = (".num_batches_tracked",)


def _layer_regex(template):
    """A kzoo layer template as a regular expression with one named group per placeholder."""
    parts = re.split(r"\{(\w+)\}", template)
    out = []
    for k, part in enumerate(parts):
        out.append(f"(?P<{part}>{PLACEHOLDERS[part]})" if k % 2 else re.escape(part))
    return re.compile("".join(out))


_TABLE = [(torch, _layer_regex(kzoo), kind) for torch, kzoo, kind in WEIGHT_TABLE]


def canonical_name(kzoo_key):
    """``(canonical torch name, torch -> keras layout)`` of a ``DETR.weights_by_path()`` key.

    ``None`` when no row of ``WEIGHT_TABLE`` maps the key.
    """
    layer, _, variable = kzoo_key.rpartition("/")
    for torch_template, regex, kind in _TABLE:
        m = regex.fullmatch(layer)
        if m is None:
            continue
        for parameter, (keras_name, layout) in PARAMETERS[kind].items():
            if keras_name == variable:
                return f"{torch_template.format(**m.groupdict())}.{parameter}", layout
    return None


# ----------------------------------------------------------------------------- renaming


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


# ----------------------------------------------------------------------------- assigning


def assign_weights(model, canonical):
    """Write canonical tensors into a built ``kzoo.models.DETR``, as ``WEIGHT_TABLE`` says.

    Raises one ``ValueError`` naming every tensor without a variable, every variable without a
    tensor (or without a row of the table), and every shape mismatch.
    """
    targets, unmappable = {}, []
    for key, variable in model.weights_by_path().items():
        found = canonical_name(key)
        if found is None:
            unmappable.append(key)
        else:
            targets[found[0]] = (variable, found[1])
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
    if unmappable:
        problems.append(
            f"kzoo variables without a row in WEIGHT_TABLE ({len(unmappable)}): "
            f"{', '.join(sorted(unmappable))}"
        )
    if problems:
        raise ValueError("The checkpoint does not fit kzoo's DETR: " + " | ".join(problems))
    for variable, value in values:
        variable.assign(value.astype(variable.dtype))
    return len(values)
