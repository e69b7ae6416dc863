"""Fine-tuning DETR from a preset: a new class head, everything else loaded.

``DETR.from_preset(preset, num_classes=N)`` with N different from the preset's number of classes
builds the preset's architecture with an N-class head, loads every other weight (backbone,
input projection, transformer, object queries, box branch) from the preset and initialises only
``class_embed`` (N + 1 logits) afresh, saying so once through the ``kzoo.detr`` logger. With
the preset's own N (or no ``num_classes``) it is the plain ``from_preset``.

The preset's labels are described in its ``metadata.json``: ``class_names`` (a name per label)
and ``category_ids`` (the dataset's category id per label, as ``kzoo.data.CocoDetection`` maps
them). :func:`label_metadata` reads them, so predictions come out as the dataset's own ids and
names; :func:`preset_image_size` reads the image sizes the preset was trained at.
"""

import logging
import os

logger = logging.getLogger("kzoo.detr")

CLASS_HEAD = "class_embed/"


def _check_num_classes(num_classes):
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be an int >= 1; got {num_classes!r}.")


def from_preset(cls, preset, load_weights=True, sha256=None, num_classes=None, **kwargs):
    """``cls.from_preset`` with a class head re-initialised for ``num_classes`` when it differs.

    See ``DETR.from_preset``.
    """
    from kzoo.presets import preset_io

    if num_classes is None:
        return preset_io.load_preset(
            preset, expected_class=cls, sha256=sha256, load_weights=load_weights, **kwargs
        )
    _check_num_classes(num_classes)
    preset_dir = preset_io.resolve_preset(preset, sha256=sha256)
    saved = preset_io._read_config(preset_dir).get("config", {}).get("num_classes")
    if not load_weights or saved == num_classes:
        return preset_io.load_preset(
            preset_dir,
            expected_class=cls,
            load_weights=load_weights,
            num_classes=num_classes,
            **kwargs,
        )
    source = preset_io.load_preset(preset_dir, expected_class=cls, **kwargs)
    model = with_new_class_head(source, num_classes)
    logger.warning(
        "DETR.from_preset(%r, num_classes=%d): the preset has %d classes, so the class head "
        "(class_embed, %d logits with 'no object') is newly initialised; every other weight "
        "(backbone, transformer, queries, box head) is loaded from the preset.",
        os.fspath(preset),
        num_classes,
        source.num_classes,
        num_classes + 1,
    )
    return model


def with_new_class_head(source, num_classes):
    """A copy of the built DETR ``source`` with a fresh ``num_classes`` class head.

    Every variable but ``class_embed``'s is copied from ``source``; the class head gets its
    layer's initialisers.
    """
    import keras

    from kzoo.presets import preset_io

    _check_num_classes(num_classes)
    config = source.get_config()
    config["num_classes"] = num_classes
    model = type(source).from_config(config)
    # Every weight but the class head's is copied next: skip drawing their random values.
    with preset_io.placeholder_initializers(model):
        model.build((None, None, None, 3))
    head = model.head.class_embed
    for variable, initializer in (
        (head.kernel, head.kernel_initializer),
        (head.bias, head.bias_initializer),
    ):
        variable.assign(initializer(tuple(variable.shape), dtype=variable.dtype))
    target = model.weights_by_path()
    origin = source.weights_by_path()
    if set(target) != set(origin):
        missing = sorted(set(target) ^ set(origin))[:5]
        raise ValueError(
            f"The model with num_classes={num_classes} does not have the variables of the "
            f"preset's model (differing: {', '.join(missing)})."
        )
    for key, variable in target.items():
        if not key.startswith(CLASS_HEAD):
            variable.assign(keras.ops.convert_to_numpy(origin[key]))
    return model


def preset_image_size(preset):
    """The ``image_size`` / ``max_size`` a preset was trained at (its metadata), or Nones."""
    from kzoo.presets import preset_io

    preset_dir = preset_io.resolve_preset(preset)
    meta = {}
    if os.path.isfile(os.path.join(preset_dir, preset_io.METADATA_FILE)):
        meta = preset_io.read_metadata(preset_dir)
    size, max_size = meta.get("image_size"), meta.get("max_size")
    ok = isinstance(size, int) and not isinstance(size, bool) and size > 0
    ok_max = isinstance(max_size, int) and not isinstance(max_size, bool) and max_size >= size
    return (size if ok else None), (max_size if ok and ok_max else None)


def label_metadata(preset_dir, num_classes):
    """``(class_names, category_ids)`` of a preset's labels, from its ``metadata.json``.

    ``class_names`` falls back to COCO's names for a 91-label model (the COCO checkpoints, whose
    labels are COCO category ids), else to ``"class N"``. ``category_ids`` falls back to the
    label itself for a 91-label model, else is ``None`` (unknown: presets saved without it).
    """
    from kzoo.models.detr.model import labels
    from kzoo.presets import preset_io

    meta = {}
    if os.path.isfile(os.path.join(preset_dir, preset_io.METADATA_FILE)):
        meta = preset_io.read_metadata(preset_dir)
    coco91 = num_classes == labels.NUM_CLASSES
    names = meta.get("class_names")
    if not (isinstance(names, list) and len(names) == num_classes):
        names = list(labels.COCO91_NAMES) if coco91 else None
        names = names or [f"class {i}" for i in range(num_classes)]
    ids = meta.get("category_ids")
    valid_ids = (
        isinstance(ids, list)
        and len(ids) == num_classes
        and all(isinstance(i, int) and not isinstance(i, bool) for i in ids)
        and len(set(ids)) == num_classes
    )
    if not valid_ids:
        ids = list(range(num_classes)) if coco91 else None
    return [str(n) for n in names], None if ids is None else [int(i) for i in ids]
