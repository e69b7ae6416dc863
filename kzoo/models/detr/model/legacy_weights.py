"""DETR weights files of config version 1 (before the head moved under ``head/``), read as today's.

``DETR.load_weights`` recognises such a file and loads a migrated copy; presets saved by kzoo
before 2026-11 keep loading with the same weights and outputs.
"""

# Version-1 weight files: where each group of the head's layers sits now. Other groups
# (``backbone``, the model's own ``vars``, an ``optimizer`` in training backups) stay put.
LEGACY_WEIGHT_GROUPS = {
    "input_proj": "head/input_proj",
    "class_embed": "head/class_embed",
    "bbox_embed_0": "head/bbox_embed_0",
    "bbox_embed_1": "head/bbox_embed_1",
    "bbox_embed_2": "head/bbox_embed_2",
    "layers/detr_transformer": "head/transformer",
    "layers/embedding": "head/query_embed",
    "layers/sine_position_embedding": "head/position_embedding",
}


def _is_legacy_weights_file(path):
    import h5py

    with h5py.File(path, "r") as f:
        return "head" not in f and "input_proj" in f


def migrate_legacy_weights(src, dst):
    """Copy a version-1 DETR weights file to ``dst`` with the head's groups under ``head/``."""
    import h5py

    with h5py.File(src, "r") as old, h5py.File(dst, "w") as new:
        new.attrs.update(old.attrs)
        names = []
        for name, obj in old.items():
            if name == "layers" and isinstance(obj, h5py.Group):
                names += [f"layers/{child}" for child in obj]
            else:
                names.append(name)
        for name in names:
            target = LEGACY_WEIGHT_GROUPS.get(name, name)
            parent, _, leaf = target.rpartition("/")
            old.copy(old[name], new.require_group(parent) if parent else new, name=leaf)
