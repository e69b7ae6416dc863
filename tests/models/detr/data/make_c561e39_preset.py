"""How ``c561e39_preset/`` and ``c561e39_reference.npz`` were made (kept for provenance).

They were written by kzoo at commit c561e39, the last commit before DETR's modules moved into
``model/``, ``training/`` and ``convert/`` and ``DETRHead`` left ``kzoo.layers``. The model has
a ``ResNetBackbone`` instance as its backbone, so its ``config.json`` names the modules of that
time (``kzoo.models.detr.detr_model``, ``kzoo.models.detr.backbone``);
``tests/models/detr/model/test_legacy_presets.py`` checks that it still loads, with the same
weights and outputs. Weights are low-entropy and compressed as in ``make_legacy_preset.py``.

    git worktree add /tmp/old c561e39
    # once: the preset (weights are backend-independent)
    cd tests/models/detr/data
    PYTHONPATH=/tmp/old KERAS_BACKEND=torch python make_c561e39_preset.py preset
    # then once per backend: that backend's reference outputs
    for b in jax tensorflow torch; do
        PYTHONPATH=/tmp/old KERAS_BACKEND=$b python make_c561e39_preset.py outputs
    done
"""

import json
import os
import sys

import keras
import numpy as np
from make_legacy_preset import _compress, _fingerprints, _inputs, _value

HERE = os.path.dirname(os.path.abspath(__file__))
PRESET = os.path.join(HERE, "c561e39_preset")
REFERENCE = os.path.join(HERE, "c561e39_reference.npz")
CONFIG = dict(
    num_classes=2,
    num_queries=4,
    d_model=16,
    num_heads=2,
    num_encoder_layers=1,
    num_decoder_layers=2,
    ffn_dim=24,
    dropout=0.0,
)


def make_preset():
    from kzoo.models.detr.backbone import ResNetBackbone

    from kzoo.models import DETR
    from kzoo.utils.files import sha256_file

    backbone = ResNetBackbone("small", trainable_stages=5, trainable_affine=True, name="backbone")
    model = DETR(**CONFIG, backbone=backbone)
    model.build()
    rng = np.random.default_rng(1)
    for variable in model.weights:
        variable.assign(_value(rng, variable.path, tuple(variable.shape)).astype("float32"))
    model.save_to_preset(PRESET)
    weights = os.path.join(PRESET, "model.weights.h5")
    _compress(weights)
    meta_path = os.path.join(PRESET, "metadata.json")
    with open(meta_path) as f:
        meta = json.load(f)
    meta["weights_sha256"] = sha256_file(weights)
    with open(meta_path, "w") as f:
        json.dump(meta, f, indent=2)


def record_outputs():
    from kzoo.models import DETR

    backend = keras.backend.backend()
    model = DETR.from_preset(PRESET)
    images, mask = _inputs()
    arrays = dict(np.load(REFERENCE)) if os.path.exists(REFERENCE) else {}
    for suffix, inputs in (("plain", images), ("masked", {"images": images, "pixel_mask": mask})):
        out = model.predict_on_batch(inputs)
        for key in ("logits", "boxes", "aux_logits", "aux_boxes"):
            arrays[f"{backend}_{suffix}_{key}"] = np.asarray(keras.ops.convert_to_numpy(out[key]))
    # Per variable, its sum and index-weighted sum (a swap or a permutation changes it).
    for key, value in _fingerprints(model).items():
        arrays[f"fingerprint:{key}"] = np.asarray(value)
    np.savez_compressed(REFERENCE, **arrays)


if __name__ == "__main__":
    {"preset": make_preset, "outputs": record_outputs}[sys.argv[1]]()
