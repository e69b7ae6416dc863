"""``TrainConfig``: every option of a DETR training run, typed, in one frozen dataclass.

Built once, from ``kzoo train detr``'s flags (``kzoo.cli.detr.train``) or in Python, and read by
:func:`kzoo.models.detr.training.engine.train`, which never changes it: the defaults that depend
on the data (synthetic shapes or COCO-format files, a preset to fine-tune or not) are filled by
:meth:`TrainConfig.resolved`, which returns a new config. Every default comes from
``kzoo.models.detr.recipe``.

Error messages name the options as the command line spells them (``--batch-size``), which is
what ``kzoo train detr`` shows; in Python the field is the flag without dashes, with
underscores (``batch_size``).
"""

import dataclasses
import os
import types

from kzoo.models.detr import recipe

BACKBONES = ("small", "resnet50", "resnet101")
AUGMENTATIONS = ("detr", "flip", "none")
DTYPE_POLICIES = ("float32", "mixed_bfloat16")
# The options that define the architecture of a DETR built without a preset.
ARCHITECTURE_KEYS = (
    "num_classes",
    "num_queries",
    "d_model",
    "num_heads",
    "num_encoder_layers",
    "num_decoder_layers",
    "ffn_dim",
)
_CHOICES = {"backbone": BACKBONES, "augment": AUGMENTATIONS, "dtype_policy": DTYPE_POLICIES}
_SYNTHETIC = recipe.SYNTHETIC


def flag(name):
    """The command-line option of the field ``name`` (``batch_size`` -> ``--batch-size``)."""
    return f"--{name.replace('_', '-')}"


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """The options of a DETR training run (``kzoo train detr``; see ``docs/detr.md``).

    Without ``train_annotations`` the run trains a small DETR on the built-in synthetic shapes
    (``train_images`` is then their number); with ``train_annotations`` and ``train_images`` (a
    folder) it trains on COCO-format data, fine-tuning ``preset`` or building a DETR from the
    architecture options. ``None`` means "the default for this data": see :meth:`resolved`.

    Example:

    ```python
    from kzoo.models.detr import TrainConfig, train

    result = train(TrainConfig(out="runs/shapes", epochs=2, train_images=64, eval_images=16))
    result = train(TrainConfig(out="runs/mine", train_annotations="train.json",
                               train_images="train_images", preset="detr_resnet50_coco"))
    print(result["AP"])
    ```
    """

    out: str = os.path.join("runs", "detr")
    train_annotations: str | None = None
    train_images: int | str | None = None
    val_annotations: str | None = None
    val_images: str | None = None
    preset: str | None = None
    backbone: str = "small"
    freeze_backbone: bool = False
    eval_every: int = 1
    augment: str = "detr"
    max_size: int | None = None
    pad_multiple: int = 32
    workers: int = 2
    force: bool = False
    epochs: int = 16
    batch_size: int = 8
    time_limit: float | None = None
    cpu_time_limit: float | None = None
    lr: float | None = None
    backbone_lr_scale: float | None = None
    weight_decay: float = recipe.WEIGHT_DECAY
    clipnorm: float = recipe.CLIP_NORM
    lr_drop: float = recipe.LR_DROP
    image_size: int | None = None
    num_classes: int | None = None
    max_objects: int | None = None
    eval_images: int = recipe.SYNTHETIC_EVAL_IMAGES
    num_queries: int = _SYNTHETIC["num_queries"]
    d_model: int = _SYNTHETIC["d_model"]
    num_heads: int = _SYNTHETIC["num_heads"]
    num_encoder_layers: int = _SYNTHETIC["num_encoder_layers"]
    num_decoder_layers: int = _SYNTHETIC["num_decoder_layers"]
    ffn_dim: int = _SYNTHETIC["ffn_dim"]
    dropout: float | None = None
    dtype_policy: str = "float32"
    denoising_groups: int = 0
    box_noise_scale: float = recipe.DN_BOX_NOISE_SCALE
    label_noise_ratio: float = recipe.DN_LABEL_NOISE_RATIO
    query_groups: int = 1
    data_parallel: bool = False
    seed: int = 0
    fresh: bool = False
    verbose: int = 1

    @classmethod
    def from_flags(cls, flags):
        """A config from a plain ``{field: value}`` dict (parsed flags); unknown keys refused."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(flags) - names)
        if unknown:
            raise ValueError(f"Unknown TrainConfig options: {', '.join(unknown)}.")
        return cls(**flags)

    @property
    def coco(self):
        """Whether the run trains on COCO-format data (else on the synthetic shapes)."""
        return self.train_annotations is not None

    def to_dict(self):
        """The options as JSON-ready values, with ``coco``."""
        return {**dataclasses.asdict(self), "coco": self.coco}

    def resolved(self):
        """A copy with the defaults that depend on the data source filled (idempotent).

        Synthetic shapes: ``train_images`` 4096 (a number), ``image_size``, ``num_classes`` and
        ``max_objects`` those of ``recipe.SYNTHETIC``. Without a preset: ``dropout`` 0,
        ``lr`` 5e-4 and ``backbone_lr_scale`` 0.5 (training from scratch); fine-tuning a
        preset: DETR's ``lr`` 1e-4 and ``backbone_lr_scale`` 0.1, the preset's dropout. COCO
        data's ``image_size`` and ``max_size`` come from the preset's metadata or the recipe,
        which the engine reads when it opens the preset.
        """
        changes = {}
        preset = self.preset is not None
        if not self.coco:
            images = self.train_images
            if images is None:
                images = recipe.SYNTHETIC_TRAIN_IMAGES
            elif isinstance(images, str):
                try:
                    images = int(images)
                except ValueError:
                    raise ValueError(
                        f"--train-images {images!r}: without --train-annotations it is the "
                        "number of synthetic training images (an integer); a folder of images "
                        "needs --train-annotations FILE too."
                    ) from None
            changes["train_images"] = images
            for name in ("image_size", "num_classes", "max_objects"):
                if getattr(self, name) is None:
                    changes[name] = _SYNTHETIC[name]
        if self.dropout is None and not preset:
            changes["dropout"] = recipe.SCRATCH_DROPOUT
        if self.lr is None:
            changes["lr"] = recipe.LEARNING_RATE if preset else recipe.SCRATCH_LEARNING_RATE
        if self.backbone_lr_scale is None:
            changes["backbone_lr_scale"] = (
                recipe.BACKBONE_LR_SCALE if preset else recipe.SCRATCH_BACKBONE_LR_SCALE
            )
        return dataclasses.replace(self, **changes)

    def validate(self):
        """Raise a ``ValueError`` naming the first option that is wrong (of the resolved config).

        What needs files (the data, the preset, the output directories) is checked when the
        engine opens them, still before anything is written.
        """
        self._check_types()
        config = self.resolved()
        if not config.coco:
            for option in ("val_annotations", "val_images", "preset"):
                if getattr(config, option) is not None:
                    raise ValueError(
                        f"{flag(option)} needs --train-annotations and --train-images "
                        "(training on COCO-format data)."
                    )
            if config.freeze_backbone:
                raise ValueError(
                    "--freeze-backbone needs --train-annotations (and usually --preset)."
                )
        positive = [
            "epochs",
            "batch_size",
            "eval_images",
            "num_queries",
            "d_model",
            "num_heads",
            "num_decoder_layers",
            "ffn_dim",
            "eval_every",
            "workers",
            "image_size",
            "num_classes",
            "max_objects",
            "max_size",
        ]
        if not config.coco:
            positive.append("train_images")
        for name in positive:
            value = getattr(config, name)
            if value is not None and value < 1:
                raise ValueError(f"{flag(name)} must be >= 1; got {value}.")
        if config.num_encoder_layers < 0:
            raise ValueError(f"--num-encoder-layers must be >= 0; got {config.num_encoder_layers}.")
        if config.pad_multiple < 0:
            raise ValueError(f"--pad-multiple must be >= 0; got {config.pad_multiple}.")
        if (
            config.max_objects is not None
            and config.max_objects > config.num_queries
            and not config.preset
        ):
            raise ValueError(
                f"--max-objects ({config.max_objects}) must not exceed --num-queries "
                f"({config.num_queries}): each object needs its own query."
            )
        if config.lr <= 0 or config.clipnorm <= 0 or config.weight_decay < 0:
            raise ValueError("--lr and --clipnorm must be > 0 and --weight-decay >= 0.")
        if not 0 <= config.backbone_lr_scale <= 1:
            raise ValueError(
                f"--backbone-lr-scale must be in [0, 1]; got {config.backbone_lr_scale}."
            )
        if config.dropout is not None and not 0 <= config.dropout < 1:
            raise ValueError(f"--dropout must be in [0, 1); got {config.dropout}.")
        if not 0 < config.lr_drop <= 1:
            raise ValueError(f"--lr-drop must be in (0, 1]; got {config.lr_drop}.")
        for option in ("time_limit", "cpu_time_limit"):
            value = getattr(config, option)
            if value is not None and value <= 0:
                raise ValueError(f"{flag(option)} must be > 0 minutes; got {value}.")
        if config.denoising_groups < 0:
            raise ValueError(
                f"--denoising-groups must be >= 0 (0: no denoising queries); got "
                f"{config.denoising_groups}."
            )
        if config.query_groups < 1:
            raise ValueError(
                f"--query-groups must be >= 1 (1: DETR's own queries only); got "
                f"{config.query_groups}."
            )
        for option in ("box_noise_scale", "label_noise_ratio"):
            value = getattr(config, option)
            if not 0 <= value <= 1:
                raise ValueError(f"{flag(option)} must be in [0, 1]; got {value}.")
        if config.verbose not in (0, 1, 2):
            raise ValueError(f"--verbose must be 0, 1 or 2; got {config.verbose}.")

    def _check_types(self):
        # What argparse guarantees on the command line, checked for configs built in Python.
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            allowed = _types(field.type)
            # A float field takes ints too; a bool is no int here.
            accepted = (*allowed, int) if float in allowed else allowed
            if isinstance(value, bool) and bool not in allowed or not isinstance(value, accepted):
                names = " or ".join(_TYPE_NAMES[t] for t in allowed)
                raise ValueError(f"{flag(field.name)} must be {names}; got {value!r}.")
            choices = _CHOICES.get(field.name)
            if choices is not None and value not in choices:
                raise ValueError(
                    f"{flag(field.name)} must be one of {', '.join(choices)}; got {value!r}."
                )


_TYPE_NAMES = {int: "an int", float: "a number", str: "a str", bool: "True or False"}
_TYPE_NAMES[type(None)] = "None"


def _types(annotation):
    """The classes a field's annotation names (``int | None`` -> ``(int, NoneType)``)."""
    return annotation.__args__ if isinstance(annotation, types.UnionType) else (annotation,)
