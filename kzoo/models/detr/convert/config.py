"""The ``kzoo.models.DETR`` configuration a checkpoint's tensors imply."""

import re

RESNET_DEPTHS = {(3, 4, 6, 3): "resnet50", (3, 4, 23, 3): "resnet101"}
DEFAULT_NUM_HEADS = 8


def infer_config(canonical, num_heads=None, dilation=False):
    """The ``kzoo.models.DETR`` arguments the tensors imply.

    Heads cannot be read off the tensors (q/k/v are d×d whatever the split); they default to
    DETR's 8 unless given. Nor can DC5 (``dilation``): the dilated backbone has the same tensors.
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
        from kzoo.models.detr.model import backbone as backbone_lib

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
        "backbone_dilation": bool(dilation),
    }


def _indices(canonical, pattern):
    found = set()
    for key in canonical:
        m = re.match(pattern, key)
        if m:
            found.add(int(m.group(1)))
    return sorted(found)
