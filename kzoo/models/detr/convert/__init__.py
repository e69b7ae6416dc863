"""Converting DETR checkpoints (facebookresearch and HuggingFace) into kzoo presets.

Three steps, one module each:

1. reading (``convert_reading``): the checkpoint file into ``{name: float32 array}`` without
   unpickling anything but tensors, and its format (original or HuggingFace) from its keys;
2. weight porting (``convert_weights``): the keys renamed into one canonical naming, then each
   tensor written into its kzoo variable as ``WEIGHT_TABLE`` (the one table of which tensor goes
   where, and how it is transposed) says, every tensor and every variable accounted for;
3. config conversion (``convert_config``): the ``kzoo.models.DETR`` arguments the tensors imply.

``load_detr_checkpoint`` runs them and returns the model; ``convert_detr`` writes it as a preset.
"""

import os

from kzoo.models.detr.convert.config import DEFAULT_NUM_HEADS, RESNET_DEPTHS, infer_config
from kzoo.models.detr.convert.reading import (
    checkpoint_dilation,
    detect_format,
    heads_from_sidecar,
    read_checkpoint,
    read_state_dict,
)
from kzoo.models.detr.convert.weights import (
    IGNORED_SUFFIXES,
    PARAMETERS,
    WEIGHT_TABLE,
    assign_weights,
    canonical_name,
    to_canonical,
)

__all__ = [
    "DEFAULT_NUM_HEADS",
    "IGNORED_SUFFIXES",
    "PARAMETERS",
    "RESNET_DEPTHS",
    "WEIGHT_TABLE",
    "assign_weights",
    "canonical_name",
    "convert_detr",
    "convert_detr_dc5",
    "detect_format",
    "infer_config",
    "load_detr_checkpoint",
    "read_state_dict",
    "to_canonical",
]


# ----------------------------------------------------------------------------- public API


def load_detr_checkpoint(src, num_heads=None, dilation=None, **config_overrides):
    """Build a ``kzoo.models.DETR`` holding the weights of the checkpoint at ``src``.

    Args:
        src: An original (``.pth``) or HuggingFace (``.pth``/``.bin``/``.safetensors``, or a
            directory holding one) DETR checkpoint.
        num_heads: Attention heads; DETR's 8 unless a HuggingFace ``config.json`` beside the
            checkpoint says otherwise.
        dilation: Whether it is DETR-DC5 (dilated last stage). ``None`` reads it from the
            checkpoint (see ``convert_reading.checkpoint_dilation``).
        **config_overrides: Other ``DETR`` arguments (e.g. ``dropout``).

    Returns ``(model, info)`` where ``info`` holds the source format and the inferred config.
    """
    from kzoo.models.detr.model.detr import DETR

    src = os.fspath(src)
    if dilation is not None and not isinstance(dilation, bool):
        raise ValueError(f"dilation must be True, False or None; got {dilation!r}.")
    state, args = read_checkpoint(src)
    if dilation is None:
        dilation = checkpoint_dilation(src, args)
    canonical, fmt = to_canonical(state)
    if num_heads is None:
        num_heads = heads_from_sidecar(src)
    config = infer_config(canonical, num_heads=num_heads, dilation=dilation)
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


def convert_detr(
    src, dst, num_heads=None, overwrite=True, force=False, dilation=None, extra_metadata=None
):
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
        dilation: DETR-DC5 or not; ``None`` reads it from the checkpoint (its stored training
            arguments, a ``config.json`` beside it, or a ``-dc5`` file name).
        extra_metadata: Entries added to the preset's ``metadata.json``.

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
    model, info = load_detr_checkpoint(src, num_heads=num_heads, dilation=dilation)
    extra = {
        "converted_from": os.path.basename(os.fspath(src)),
        "source_format": info["format"],
        "label_space": "coco91" if info["config"]["num_classes"] == 91 else "ids",
        **(extra_metadata or {}),
    }
    return preset_io.save_preset(model, dst, overwrite=overwrite, extra_metadata=extra, force=force)


def convert_detr_dc5(src, dst):
    """:func:`convert_detr` for a checkpoint known to be DETR-DC5 (the registry's DC5 presets,
    whose cached file names need not say so)."""
    return convert_detr(src, dst, dilation=True)
