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
"""

from kzoo.presets import PresetInfo, register_preset

CONVERTER = "kzoo.models.detr.convert:convert_detr"
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
]

for _info in PRESETS:
    register_preset(_info)
