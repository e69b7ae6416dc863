"""The released COCO DETR checkpoints as kzoo presets.

The files are facebookresearch/detr's own (``{"model": state_dict}``); ``from_preset`` downloads
one through ``keras.utils.get_file`` (progress bar, keras cache), checks its sha256, converts it
with :func:`kzoo.models.detr.convert.convert_detr` once and caches the converted preset under
``$KERAS_HOME/kzoo/presets/<name>-<sha256[:12]>``.

Checksums: the hex in each file name is the first 8 digits of its sha256 (torch.hub's
``check_hash`` convention). The full digests below were published by several independent
projects that downloaded the files; each begins with its file name's hex, and the ResNet-50
file's size (166,618,694 bytes) matches the one recorded by OpenVINO's Open Model Zoo. They
were not recomputed here (no network on the machine that wrote this): a mismatch is refused by
the download, so an error names the file and the expected digest rather than loading anything.

The DC5 checkpoints (``detr-r50-dc5-f0fb7ef5.pth``, ``detr-r101-dc5-a2e86def.pth``: the last
ResNet stage dilated instead of strided) have the plain ones' tensors, so nothing in the file
says DC5: they are converted with :func:`~kzoo.models.detr.convert.convert_detr_dc5`. Their full
digests were found in one published source only: a model port's provenance table (LibreYOLO's
DETR notes, "Official checkpoints", downloaded from dl.fbaipublicfiles.com on 2026-08-02), which
lists all four files with their sizes (166,618,694 and 242,846,568 bytes, the same as the plain
R50/R101 files) and whose R50 and R101 rows agree with the digests above that other projects
published independently; each DC5 digest begins with its file name's hex.
"""

from kzoo.presets import PresetInfo, register_preset
from kzoo.presets.hub import HubConverter, register_hub_converter

CONVERTER = "kzoo.models.detr.convert:convert_detr"
DC5_CONVERTER = "kzoo.models.detr.convert:convert_detr_dc5"
BASE_URL = "https://dl.fbaipublicfiles.com/detr"

PRESETS = [
    PresetInfo(
        name="detr_resnet50_coco",
        model_class="DETR",
        location=f"{BASE_URL}/detr-r50-e632da11.pth",
        sha256="e632da11ec76ae67bac2f8579fbed3724e08dead7d200ca13e019b197784eadc",
        description="DETR ResNet-50, COCO 2017 (42.0 AP, 62.4 AP50 on val2017), 91 classes",
        license="Apache-2.0",
        converter=CONVERTER,
    ),
    PresetInfo(
        name="detr_resnet101_coco",
        model_class="DETR",
        location=f"{BASE_URL}/detr-r101-2c7b67e5.pth",
        sha256="2c7b67e52d2e687cefa3c4a5e701a148664159c96725c62984600d2d9d5c4104",
        description="DETR ResNet-101, COCO 2017 (43.5 AP, 63.8 AP50 on val2017), 91 classes",
        license="Apache-2.0",
        converter=CONVERTER,
    ),
    PresetInfo(
        name="detr_resnet50_dc5_coco",
        model_class="DETR",
        location=f"{BASE_URL}/detr-r50-dc5-f0fb7ef5.pth",
        sha256="f0fb7ef52a6b0bbd87dce4a4b8569b509f03ad082f60f936dc5b7009940295d3",
        description="DETR-DC5 ResNet-50 (dilated last stage), COCO 2017 (43.3 AP), 91 classes",
        license="Apache-2.0",
        converter=DC5_CONVERTER,
    ),
    PresetInfo(
        name="detr_resnet101_dc5_coco",
        model_class="DETR",
        location=f"{BASE_URL}/detr-r101-dc5-a2e86def.pth",
        sha256="a2e86defc9f49cfca7df75523d8745c6aa15482a5184e8dc62a0a19119c0286e",
        description="DETR-DC5 ResNet-101 (dilated last stage), COCO 2017 (44.9 AP), 91 classes",
        license="Apache-2.0",
        converter=DC5_CONVERTER,
    ),
]

for _info in PRESETS:
    register_preset(_info)

# hf://<owner>/<repo> of transformers' DETR layout (facebook/detr-resnet-50, ...-dc5, ...).
register_hub_converter(
    HubConverter(
        model_type="detr",
        check="kzoo.models.detr.convert.hub:check_config",
        convert="kzoo.models.detr.convert.hub:convert_repo",
    )
)
