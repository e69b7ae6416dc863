"""How ``legacy_preset/`` and ``legacy_reference.npz`` were made (kept for provenance).

They were written by kzoo at commit b57f64d, the last commit before DETR was split into a
backbone and a ``DETRHead``: that code saved the head's layers at the top of
``model.weights.h5`` (``input_proj``, ``class_embed``, ``layers/detr_transformer``, ...).
``tests/models/detr/test_legacy_presets.py`` checks that such presets still load, with the same
outputs. Running this script with later kzoo writes the new layout, which is not the point:
it is the record of how the files were produced, not something to rerun.

    # once, any backend: the preset (weights are backend-independent)
    KERAS_BACKEND=jax python tests/models/detr/data/make_legacy_preset.py preset
    # then once per backend: that backend's reference outputs
    for b in jax tensorflow torch; do
        KERAS_BACKEND=$b python tests/models/detr/data/make_legacy_preset.py outputs
    done

The weights are random but low-entropy (most entries 0, the rest +-scale with power-of-two
scales), so that the gzip-compressed weights file stays small (the small ResNet alone has
511k parameters); the outputs still depend on every variable.
"""

import json
import os
import sys

import h5py
import keras
import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
PRESET = os.path.join(HERE, "legacy_preset")
REFERENCE = os.path.join(HERE, "legacy_reference.npz")
CONFIG = dict(
    num_classes=3,
    num_queries=5,
    d_model=32,
    num_heads=4,
    num_encoder_layers=1,
    num_decoder_layers=2,
    ffn_dim=48,
    dropout=0.0,
    backbone="small",
)


def _value(rng, path, shape):
    name = path.rsplit("/", 1)[-1]
    n = int(np.prod(shape))
    if name in ("gamma", "moving_variance"):
        return rng.choice([0.5, 1.0, 1.5], size=shape)
    if name in ("beta", "moving_mean", "bias"):
        return rng.choice([-0.125, 0.0, 0.125], size=shape)
    fan_in = n // shape[-1]
    # About glorot's variance with 90% zeros: +-s with probability 0.05 each.
    scale = 2.0 ** np.round(np.log2(np.sqrt(10.0 / fan_in)))
    return rng.choice([-scale, 0.0, scale], p=[0.05, 0.9, 0.05], size=shape)


def _inputs():
    rng = np.random.default_rng(7)
    images = rng.normal(size=(2, 64, 96, 3)).astype("float32")
    mask = np.ones((2, 64, 96), "float32")
    mask[1, 40:] = 0
    mask[1, :, 70:] = 0
    return images, mask


def _fingerprints(model):
    """Per variable: its sum and its index-weighted sum (a swap or a permutation changes it)."""
    out = {}
    for key, variable in model.weights_by_path().items():
        v = np.asarray(keras.ops.convert_to_numpy(variable), np.float64).ravel()
        out[key] = [float(v.sum()), float((v * np.arange(1, v.size + 1)).sum())]
    return out


def _compress(path):
    """Rewrite an h5 file with every dataset gzip-compressed (same groups, names and attrs)."""
    tmp = path + ".tmp"
    with h5py.File(path, "r") as src, h5py.File(tmp, "w", libver="latest") as dst:
        dst.attrs.update(src.attrs)

        def copy(name, obj):
            if isinstance(obj, h5py.Group):
                dst.require_group(name).attrs.update(obj.attrs)
            else:
                data = obj[()]
                options = {}
                if data.size:
                    # One chunk per dataset: many small chunks cost more index than data.
                    options = dict(
                        chunks=data.shape, compression="gzip", compression_opts=9, shuffle=True
                    )
                ds = dst.create_dataset(name, data=data, **options)
                ds.attrs.update(obj.attrs)

        src.visititems(copy)
    os.replace(tmp, path)


def make_preset():
    from kzoo.models import DETR
    from kzoo.utils.files import sha256_file

    model = DETR(**CONFIG)
    model.build()
    rng = np.random.default_rng(0)
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
    with open(os.path.join(HERE, "legacy_fingerprints.json"), "w") as f:
        json.dump(_fingerprints(model), f, indent=1, sort_keys=True)


def record_outputs():
    from kzoo.models import DETR

    backend = keras.backend.backend()
    model = DETR.from_preset(PRESET)
    images, mask = _inputs()
    arrays = dict(np.load(REFERENCE)) if os.path.exists(REFERENCE) else {}
    # The inputs are regenerated from their seed by the test; their sums guard against drift.
    arrays["images_sum"], arrays["mask_sum"] = images.sum(dtype="float64"), mask.sum()
    for suffix, inputs in (("plain", images), ("masked", {"images": images, "pixel_mask": mask})):
        out = model.predict_on_batch(inputs)
        for key in ("logits", "boxes", "aux_logits", "aux_boxes"):
            arrays[f"{backend}_{suffix}_{key}"] = np.asarray(keras.ops.convert_to_numpy(out[key]))
    np.savez_compressed(REFERENCE, **arrays)


if __name__ == "__main__":
    {"preset": make_preset, "outputs": record_outputs}[sys.argv[1]]()
