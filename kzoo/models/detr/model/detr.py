"""``DETR``: the detection transformer (Carion et al., 2020): a backbone, then a ``DETRHead``.

Structure
---------

``model.backbone`` maps (B, H, W, 3) images to a stride-32, channels-last (B, ceil(H/32),
ceil(W/32), C) feature map (stride 16 for DETR-DC5's dilated backbone, ``backbone_dilation=True``,
or a backbone instance whose ``output_stride`` attribute says 16). It is kzoo's ``ResNetBackbone`` when given by name (``"resnet50"``,
``"resnet101"``, ``"small"``), or any keras layer or model passed as an instance (a
``ResNetBackbone``, ``keras.applications.ResNet50(include_top=False, weights=None)``, a model of
your own); the stride and the layout are checked when the model is built. ``model.head`` is a
``kzoo.models.DETRHead``: input projection, sine position encoding, transformer encoder and
decoder with the object queries, class and box branches.

Weights layout
--------------

Which tensor of an original or HuggingFace checkpoint fills which variable, and how it is
transposed, is ONE table: ``WEIGHT_TABLE`` in ``kzoo.models.detr.convert.weights``. Its kzoo
column is the key of ``DETR.weights_by_path()``: a backbone variable's path inside the
backbone after ``backbone/`` (``backbone/layer2_0_conv1/kernel``), a head variable's path
inside the head (``transformer/decoder_layer_1/norm3/gamma``), whatever the layers' names.

Padding
-------

With ``padding_invariant=True`` (the default) and a backbone that accepts ``valid_sizes``
(kzoo's ``ResNetBackbone``), an image's outputs never depend on the padding of the other
images in its batch: the backbone zeroes features outside each image before every convolution
that sees neighbours (see ``backbone.py``), and the feature mask is each image's unpadded
extent ``ceil(size / stride)``. The pixel mask must then be a top-left rectangle per image (padding
at the bottom and right, as DETR and HuggingFace pad). ``padding_invariant=False`` computes
exactly what the original DETR and HuggingFace compute for padded batches: the backbone sees the
padding and the feature mask is the pixel mask resized with torch's nearest-neighbour rule.
A backbone without a ``valid_sizes`` argument is always run the second way (it cannot be told
where each image ends), so the guarantee does not hold for it. For an unpadded batch (no
``pixel_mask``, or all ones) both settings give the same numbers.

Saved configs and weights
-------------------------

``get_config()`` carries ``"config_version": 2``. Version 1 (no key; kzoo before the head was
split out) has the same arguments, so its configs load as they are. Its weight files
(``model.weights.h5``, keyed by the layer tree) hold the head's layers at the top level
(``input_proj``, ``class_embed``, ``layers/detr_transformer``, ...); ``DETR.load_weights``
recognises that layout and reads it through a copy rearranged under ``head/`` (the file itself
is never changed), so presets saved or converted before the split load with the same outputs.
"""

import inspect
import os
import re
import tempfile

import keras
from keras import ops

from kzoo.export.mixin import ExportMixin
from kzoo.export.signatures import image_signature
from kzoo.models.detr import recipe
from kzoo.models.detr.model.backbone import RESNET_BLOCKS, ResNetBackbone
from kzoo.models.detr.model.head import DETRHead
from kzoo.models.detr.model.legacy_weights import _is_legacy_weights_file, migrate_legacy_weights
from kzoo.models.detr.model.pixel_mask import DETRInputChecks, check_batch, check_pixel_mask
from kzoo.models.detr.model.training_queries_host import TARGETS_KEY, TrainingQueriesHost
from kzoo.ops.shapes import arange, ceil_divide
from kzoo.presets import PresetMixin
from kzoo.training.first_step import OptimizerBuiltBeforeTracing

# Where DETR's train step hands the targets to ``call`` (training-only queries need them).
DEFAULT_TRAINABLE_STAGES = {"resnet50": 3, "resnet101": 3, "small": 5}
CONFIG_VERSION = 2
BACKBONE_STRIDE = 32
# The image the backbone's output is checked on when the model is built (unless the backbone
# has a fixed input size): multiples of the stride, so that backbones rounding up or down agree,
# with height != width, so that swapped axes or a channels-first output show.
PROBE_SIZE = (128, 96)


def nearest_indices(in_size, out_size):
    """torch's ``interpolate(mode="nearest")`` source index per output index (float32 math)."""
    scale = ops.cast(in_size, "float32") / ops.cast(out_size, "float32")
    idx = ops.floor(ops.cast(arange(out_size), "float32") * scale)
    return ops.minimum(ops.cast(idx, "int32"), in_size - 1)


def _common_directory(paths):
    """The longest ``a/b/`` prefix shared by all ``paths`` ('' when none)."""
    prefix = os.path.commonprefix(list(paths)) if paths else ""
    return prefix[: prefix.rfind("/") + 1]


@keras.saving.register_keras_serializable(package="kzoo")
class DETR(
    OptimizerBuiltBeforeTracing,
    DETRInputChecks,
    TrainingQueriesHost,
    PresetMixin,
    ExportMixin,
    keras.Model,
):
    """DETR: a backbone, then a ``DETRHead`` (transformer encoder–decoder and set prediction).

    Args:
        num_classes: Number of object classes; the class head has ``num_classes + 1`` logits,
            the last meaning "no object" (COCO checkpoints: 91).
        num_queries: Object queries, the most objects one image can yield (100).
        d_model: Transformer width (256).
        num_heads: Attention heads (8).
        num_encoder_layers: Encoder depth (6).
        num_decoder_layers: Decoder depth (6); the first ``num_decoder_layers - 1`` give the
            auxiliary outputs.
        ffn_dim: Feed-forward hidden width (2048).
        dropout: Dropout in the transformer (0.1).
        backbone: A name, ``"resnet50"``, ``"resnet101"`` or ``"small"`` (a narrow ResNet for
            tests and CPU training), for kzoo's ``ResNetBackbone``; or a backbone instance: any
            keras layer or model mapping (B, H, W, 3) images to a channels-last (NHWC)
            stride-32 feature map (B, ceil(H/32), ceil(W/32), C), checked when the model is
            built. An instance is saved inside the model's config
            (``keras.saving.serialize_keras_object``), so a class of your own must be registered
            with ``keras.saving.register_keras_serializable``.
        backbone_trainable_stages: For a named backbone: how many of its last stages train
            (0–5); defaults to 3 for ResNet-50/101 (DETR's recipe: layer2–layer4) and 5 (all)
            for ``"small"``. Leave it None with a backbone instance, whose own ``trainable``
            settings apply.
        padding_invariant: See "Padding" in the module docstring (the guarantee needs a
            backbone that accepts ``valid_sizes``, as kzoo's ``ResNetBackbone`` does).
        backbone_dilation: For a named ResNet backbone: DETR-DC5 (the last stage dilated
            instead of strided, output stride 16; ``ResNetBackbone(dilation=True)``). The
            weights are the plain model's tensors; the DC5 checkpoints need it.

    Call: ``model(images)`` with float (B, H, W, 3) images, normalised as the backbone expects,
    or ``model({"images": images, "pixel_mask": mask})`` with ``mask`` (B, H, W), 1 for real
    pixels and 0 for padding. Returns the head's dict:

    - ``"logits"``: (B, num_queries, num_classes + 1);
    - ``"boxes"``: (B, num_queries, 4), normalised (cx, cy, w, h) in [0, 1];
    - ``"aux_logits"``, ``"aux_boxes"``: (B, num_decoder_layers - 1, num_queries, ...) from the
      earlier decoder layers.

    Example:

    ```python
    model = kzoo.models.DETR(num_classes=3, num_queries=10, d_model=32, num_heads=4,
                             num_encoder_layers=1, num_decoder_layers=2, ffn_dim=64,
                             backbone="small")
    out = model(np.zeros((2, 64, 64, 3), "float32"))
    out["logits"].shape  # (2, 10, 4)
    detections = model.predict_detections(np.zeros((1, 64, 64, 3), "float32"), threshold=0.5)

    # A DETR head on keras's ResNet-50 (which expects keras.applications' preprocessing).
    resnet = keras.applications.ResNet50(include_top=False, weights=None)
    model = kzoo.models.DETR(num_classes=3, backbone=resnet)
    ```
    """

    def __init__(
        self,
        num_classes=91,
        num_queries=100,
        d_model=256,
        num_heads=8,
        num_encoder_layers=6,
        num_decoder_layers=6,
        ffn_dim=2048,
        dropout=0.1,
        backbone="resnet50",
        backbone_trainable_stages=None,
        padding_invariant=True,
        backbone_dilation=False,
        **kwargs,
    ):
        super().__init__(**kwargs)
        # The head validates its own arguments; it is assigned after the backbone so that the
        # variables keep their order (backbone first) in weights and get_weights().
        head = DETRHead(
            num_classes,
            num_queries,
            d_model,
            num_heads,
            num_encoder_layers,
            num_decoder_layers,
            ffn_dim,
            dropout,
            name="head",
        )
        if not isinstance(backbone_dilation, bool):
            raise ValueError(f"backbone_dilation must be True or False; got {backbone_dilation!r}.")
        if isinstance(backbone, str) and backbone in RESNET_BLOCKS:
            if backbone_trainable_stages is None:
                backbone_trainable_stages = DEFAULT_TRAINABLE_STAGES[backbone]
            if (
                isinstance(backbone_trainable_stages, bool)
                or not isinstance(backbone_trainable_stages, int)
                or not 0 <= backbone_trainable_stages <= 5
            ):
                raise ValueError(
                    "backbone_trainable_stages must be an int in 0..5; got "
                    f"{backbone_trainable_stages!r}."
                )
            backbone_layer = ResNetBackbone(
                backbone,
                trainable_stages=backbone_trainable_stages,
                # From-scratch training of the small backbone needs a learnable affine.
                trainable_affine=backbone == "small",
                dilation=backbone_dilation,
                name="backbone",
            )
            backbone_name = backbone
        elif isinstance(backbone, keras.layers.Layer):
            if backbone_trainable_stages is not None:
                raise ValueError(
                    "backbone_trainable_stages only applies to a backbone given by name; set "
                    "the instance's own trainability instead (e.g. ResNetBackbone("
                    f"trainable_stages=...), or layer.trainable = False); got "
                    f"{backbone_trainable_stages!r}."
                )
            if backbone_dilation:
                raise ValueError(
                    "backbone_dilation only applies to a backbone given by name; pass "
                    "ResNetBackbone(..., dilation=True) as the backbone instead."
                )
            backbone_layer = backbone
            backbone_name = None
        else:
            raise ValueError(
                f"backbone must be one of {', '.join(RESNET_BLOCKS)}, or a keras layer or model "
                "mapping (B, H, W, 3) images to a channels-last stride-32 feature map; got "
                f"{backbone!r}."
            )
        if not isinstance(padding_invariant, bool):
            raise ValueError(f"padding_invariant must be True or False; got {padding_invariant!r}.")
        self.num_classes = num_classes
        self.num_queries = num_queries
        self.d_model = d_model
        self.num_heads = num_heads
        self.num_encoder_layers = num_encoder_layers
        self.num_decoder_layers = num_decoder_layers
        self.ffn_dim = ffn_dim
        self.dropout = float(dropout)
        self.backbone_name = backbone_name
        self.backbone_trainable_stages = backbone_trainable_stages
        self.padding_invariant = padding_invariant
        self.backbone_dilation = backbone_dilation
        # kzoo's ResNetBackbone says 16 when dilated; other backbones are stride 32 unless they
        # declare otherwise.
        stride = getattr(backbone_layer, "output_stride", BACKBONE_STRIDE)
        if stride not in (16, 32):
            raise ValueError(
                f"The backbone's output_stride must be 16 or 32; {type(backbone_layer).__name__} "
                f"says {stride!r}."
            )
        self.backbone_stride = stride
        self.backbone_takes_valid_sizes = (
            "valid_sizes" in inspect.signature(backbone_layer.call).parameters
        )
        self.backbone = backbone_layer
        self.head = head
        self._detr_loss = None
        # Training-only queries (compile(denoising=..., query_groups=...)); the layer, when
        # there is one, is ``self.training_queries``, attached by compile.
        self._training_queries_active = False

    # ---------------------------------------------------------------- building and calling

    def build(self, inputs_shape=None):
        if self.backbone_name is not None and not self.backbone.built:
            self.backbone.build((None, None, None, 3))
        channels = self._backbone_channels()
        if not self.head.built:
            self.head.build((None, None, None, channels))
        self.built = True

    def _backbone_channels(self):
        """Run the backbone on a symbolic probe image; its channels, once the stride is right."""
        height, width = PROBE_SIZE
        inputs = getattr(self.backbone, "inputs", None)
        if inputs and len(inputs) == 1 and len(inputs[0].shape) == 4:
            fixed = tuple(inputs[0].shape[1:3])
            if None not in fixed:
                height, width = fixed  # a functional backbone built for one image size
        probe = keras.KerasTensor((1, height, width, 3), dtype=self.compute_dtype)
        name = f"{type(self.backbone).__name__} {self.backbone.name!r}"
        try:
            if self.backbone.built:
                out = self.backbone.compute_output_spec(probe)
            else:
                # A symbolic call builds an unbuilt backbone the way keras builds any layer on
                # first use (sub-layers included), without computing anything.
                out = self.backbone(probe)
        except Exception as e:
            raise ValueError(
                f"The backbone ({name}) could not be run on a (1, {height}, {width}, 3) image: "
                f"{type(e).__name__}: {e}"
            ) from e
        shape = tuple(out.shape) if isinstance(out, keras.KerasTensor) else None
        stride = self.backbone_stride
        expected = (-(-height // stride), -(-width // stride))
        # Rounding down is fine too (a "valid"-padded backbone on a size not a multiple of 32).
        allowed = [{-(-n // stride), n // stride} - {0} for n in (height, width)]
        fits = shape is not None and len(shape) == 4 and shape[-1] is not None
        if not (fits and shape[1] in allowed[0] and shape[2] in allowed[1]):
            found = "" if shape is None else f" {shape}"
            if shape is None:
                found = f" a {type(out).__name__}, not one tensor"
            elif len(shape) == 4 and shape[2:] == expected:
                found += " (channels first: DETR needs channels-last NHWC features)"
            elif len(shape) == 4 and shape[1] and shape[2] and height % shape[1] == 0:
                if height // shape[1] == width // shape[2]:
                    found += f" (output stride {height // shape[1]})"
            raise ValueError(
                f"DETR needs a backbone with output stride {stride} and channels-last "
                f"(NHWC) features: on a (1, {height}, {width}, 3) image it must return (1, "
                f"{expected[0]}, {expected[1]}, channels) with known channels. The backbone "
                f"({name}) returned{found}."
            )
        return shape[-1]

    def _split_inputs(self, inputs):
        if isinstance(inputs, dict):
            unknown = set(inputs) - {"images", "pixel_mask"}
            if "images" not in inputs or unknown:
                raise ValueError(
                    "DETR takes images, or a dict with keys 'images' and optionally "
                    f"'pixel_mask'; got keys {sorted(inputs)}."
                )
            images, pixel_mask = inputs["images"], inputs.get("pixel_mask")
        else:
            images, pixel_mask = inputs, None
        shape = tuple(images.shape)
        if len(shape) != 4 or shape[-1] != 3:
            raise ValueError(
                f"DETR expects images shaped (batch, height, width, 3); got shape {shape}."
            )
        if pixel_mask is not None:
            mask_shape = tuple(pixel_mask.shape)
            if len(mask_shape) != 3 or any(
                a is not None and b is not None and a != b for a, b in zip(mask_shape, shape[:3])
            ):
                raise ValueError(
                    f"pixel_mask must be shaped (batch, height, width) like the images "
                    f"{shape[:3]}; got {mask_shape}."
                )
        check_batch(images)
        if pixel_mask is not None:
            pixel_mask = check_pixel_mask(pixel_mask)
        return images, pixel_mask

    @staticmethod
    def _valid_sizes(pixel_mask):
        """(B, 2) int32 unpadded (height, width): rows and columns holding any real pixel."""
        valid = ops.cast(pixel_mask > 0, "int32")
        rows = ops.sum(ops.max(valid, axis=2), axis=1)
        cols = ops.sum(ops.max(valid, axis=1), axis=1)
        return ops.stack([rows, cols], axis=1)

    @staticmethod
    def _resized_mask(pixel_mask, height, width):
        """The pixel mask resized to (height, width) by torch's nearest rule, as bool."""
        in_shape = ops.shape(pixel_mask)
        mask = ops.take(pixel_mask, nearest_indices(in_shape[1], height), axis=1)
        mask = ops.take(mask, nearest_indices(in_shape[2], width), axis=2)
        return mask > 0

    def call(self, inputs, training=None):
        targets = None
        if isinstance(inputs, dict) and TARGETS_KEY in inputs:
            # Only DETR's own train step puts the targets here (training with denoising
            # queries or query groups); anywhere else they are not an input.
            inputs = dict(inputs)
            targets = inputs.pop(TARGETS_KEY)
        images, pixel_mask = self._split_inputs(inputs)
        images = ops.cast(images, self.compute_dtype)
        masks_backbone = self.padding_invariant and self.backbone_takes_valid_sizes
        valid_sizes = None
        if pixel_mask is not None and masks_backbone:
            valid_sizes = self._valid_sizes(pixel_mask)
        if self.backbone_takes_valid_sizes:
            features = self.backbone(images, valid_sizes=valid_sizes, training=training)
        else:
            features = self.backbone(images, training=training)
        mask = None
        if pixel_mask is not None:
            shape = ops.shape(features)
            height, width = shape[1], shape[2]
            if masks_backbone:
                extent = ceil_divide(valid_sizes, self.backbone_stride)
                rows = ops.expand_dims(arange(height), 0) < extent[:, 0:1]
                cols = ops.expand_dims(arange(width), 0) < extent[:, 1:2]
                # expand_dims, not [:, None]: TF Lite has no builtin for new-axis slices of
                # tensors of unknown size.
                mask = ops.logical_and(ops.expand_dims(rows, 2), ops.expand_dims(cols, 1))
            else:
                mask = self._resized_mask(pixel_mask, height, width)
        if targets is not None and training and self._training_queries_active:
            queries = self.training_queries(
                self.head.query_embed.embeddings, targets["boxes"], targets["labels"]
            )
            outputs = self.head(features, mask, training=training, queries=queries)
            return self.training_queries.split_outputs(outputs)
        return self.head(features, mask, training=training)

    def export_signature(self):
        """``images`` (batch, height, width, 3) and ``pixel_mask`` (batch, height, width): one
        height and width for both (``model.export`` and ``kzoo.export`` use it)."""
        return image_signature()

    def compute_output_spec(self, inputs, training=None):
        images = inputs["images"] if isinstance(inputs, dict) else inputs
        batch = images.shape[0]
        aux = self.num_decoder_layers - 1
        classes = self.num_classes + 1
        spec = keras.KerasTensor
        return {
            "logits": spec((batch, self.num_queries, classes), dtype=self.compute_dtype),
            "boxes": spec((batch, self.num_queries, 4), dtype=self.compute_dtype),
            "aux_logits": spec((batch, aux, self.num_queries, classes), dtype=self.compute_dtype),
            "aux_boxes": spec((batch, aux, self.num_queries, 4), dtype=self.compute_dtype),
        }

    # ---------------------------------------------------------------- training

    def compile(
        self,
        optimizer=None,
        loss=None,
        backbone_learning_rate_scale=recipe.BACKBONE_LR_SCALE,
        denoising=None,
        query_groups=1,
        **kwargs,
    ):
        """Compile with DETR's recipe unless told otherwise.

        Args:
            optimizer: Defaults to ``ScaledAdamW`` (AdamW, lr 1e-4, weight decay 1e-4, global
                gradient clipping at norm 0.1) with the backbone's learning rate scaled by
                ``backbone_learning_rate_scale`` (1e-5 for the default 0.1). Keras has no
                parameter groups, and scaling the gradients instead would do nothing under Adam,
                so the optimizer scales the learning rate per variable (see
                ``kzoo.models.detr.training.optimizer``), here of exactly the backbone's variables
                (``backbone_path_pattern()``; builds the model if it is not built yet).
            loss: A callable ``loss(y_true, y_pred) -> scalar`` on the whole target and output
                dicts; defaults to ``kzoo.models.detr.training.loss.DETRLoss()``.
            backbone_learning_rate_scale: Only used when ``optimizer`` is None.
            denoising: DN-DETR's denoising queries during training: a
                ``kzoo.models.detr.DenoisingConfig`` (or its config dict), or None (off).
            query_groups: Group DETR's groups of object queries during training (1: off).
                Both options are training-only (see
                ``kzoo.models.detr.training.training_queries``): they attach
                ``self.training_queries`` with their weights, used by ``fit``'s steps only;
                inference, ``get_config`` and presets saved with ``save_to_preset`` are those of
                the plain model.
            **kwargs: Passed to ``keras.Model.compile`` (``jit_compile``, ``steps_per_execution``,
                ...). Per-output ``metrics`` are not supported: the loss sees the whole dict.
        """
        self._set_training_queries(denoising, query_groups)
        if optimizer is None:
            from kzoo.models.detr.training.optimizer import ScaledAdamW

            optimizer = ScaledAdamW(
                learning_rate=recipe.LEARNING_RATE,
                weight_decay=recipe.WEIGHT_DECAY,
                global_clipnorm=recipe.CLIP_NORM,
                learning_rate_scales={self.backbone_path_pattern(): backbone_learning_rate_scale},
            )
        if loss is None:
            # Imported here: the loss module is optional for inference-only use.
            from kzoo.models.detr.training.loss import DETRLoss

            loss = DETRLoss()
        if not callable(loss):
            raise ValueError(f"loss must be callable as loss(y_true, y_pred); got {loss!r}.")
        # keras' CompileLoss would map one loss per output key; DETR's loss needs the whole dict.
        super().compile(optimizer=optimizer, loss=None, **kwargs)
        self._detr_loss = loss

    def save_to_preset(self, preset_dir, overwrite=True, force=False):
        """``PresetMixin.save_to_preset`` without training-only weights (a plain DETR loads it)."""
        with self.without_training_queries():
            return super().save_to_preset(preset_dir, overwrite=overwrite, force=force)

    def get_compile_config(self):
        # compile() is DETR's own (a loss on the whole output dict), which keras cannot restore
        # from a config: saved presets leave it out (keras would warn on every load), and
        # training again starts with compile().
        return None

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        """DETR's set loss on the whole output dict, plus any regularisation losses."""
        del x, sample_weight, training
        losses = []
        if self._detr_loss is not None and y is not None:
            losses.append(self._detr_loss(y, y_pred))
        for loss in self.losses:
            losses.append(self._aggregate_additional_loss(loss))
        if not losses:
            return ops.zeros(())
        return losses[0] if len(losses) == 1 else ops.sum(ops.stack(losses))

    # ---------------------------------------------------------------- inference

    def predict_detections(self, images, threshold=0.5, target_sizes=None, pixel_mask=None):
        """Detect objects: per image a dict of pixel ``boxes`` (xyxy), ``scores`` and ``labels``.

        See ``kzoo.models.detr.model.postprocess.predict_detections``.
        """
        from kzoo.models.detr.model.postprocess import predict_detections

        return predict_detections(
            self, images, threshold=threshold, target_sizes=target_sizes, pixel_mask=pixel_mask
        )

    # ---------------------------------------------------------------- presets

    @classmethod
    def from_preset(cls, preset, load_weights=True, sha256=None, num_classes=None, **kwargs):
        """Build a DETR from a preset; with a new ``num_classes``, ready to fine-tune.

        Args:
            preset: A registered name (``kzoo list``), a preset directory, or an archive URL.
            load_weights: ``False`` builds the architecture with fresh weights.
            sha256: Expected sha256 of a URL's archive.
            num_classes: When it differs from the preset's, every weight is loaded except the
                class head (``class_embed``), which is initialised afresh for ``num_classes
                + 1`` logits; the ``kzoo.detr`` logger says so once. See
                ``kzoo.models.detr.training.finetune``.
            **kwargs: Other config entries to override (``dropout``, ...).

        Example:

        ```python
        model = kzoo.models.DETR.from_preset("detr_resnet50_coco", num_classes=3)
        ```
        """
        from kzoo.models.detr.training.finetune import from_preset

        return from_preset(
            cls, preset, load_weights=load_weights, sha256=sha256, num_classes=num_classes, **kwargs
        )

    # ---------------------------------------------------------------- variables and config

    def _relative_weights(self, layer):
        """``{path inside layer: variable}``: paths without the scopes above the layer."""
        paths = [v.path for v in layer.weights]
        scopes = _common_directory(paths).split("/")[:-1]
        prefix = ""
        if layer.name in scopes:
            # Up to the layer's own scope (its last occurrence: names may repeat above it).
            prefix = "/".join(scopes[: len(scopes) - scopes[::-1].index(layer.name)]) + "/"
        # Else a backbone built on its own before (a functional model): its paths are its own.
        return {path[len(prefix) :]: v for path, v in zip(paths, layer.weights)}

    def weights_by_path(self):
        """Every variable keyed by its place in the model, whatever the layers are named.

        Backbone variables are ``backbone/<path inside the backbone>`` (``backbone/conv1/
        kernel``), the head's are their path inside the head (``input_proj/kernel``,
        ``transformer/encoder_layer_0/self_attn/q_proj/kernel``): the kzoo column of
        ``WEIGHT_TABLE`` in ``kzoo.models.detr.convert.weights``.
        """
        if not self.built:
            raise ValueError("Build the model (call it once, or model.build()) first.")
        keyed = {f"backbone/{k}": v for k, v in self._relative_weights(self.backbone).items()}
        keyed.update(self._relative_weights(self.head))
        return keyed

    def backbone_path_pattern(self):
        """A regular expression matching the backbone's variable paths and no other variable's.

        For ``ScaledAdamW(learning_rate_scales={pattern: scale})``, whose patterns are matched
        against ``variable.path``. It matches the paths with or without the model's own name in
        front (``detr/backbone/conv1/kernel`` and ``backbone/conv1/kernel``). Builds the model
        if it is not built yet (the paths exist from then on).
        """
        if not self.built:
            self.build()
        paths = sorted({v.path for v in self.backbone.weights})
        if not paths:
            return "(?!)"
        others = [v.path for v in self.head.weights]
        prefix = _common_directory(paths)
        if prefix and not any(p.startswith(prefix) for p in others):
            model = f"{self.name}/"
            if prefix.startswith(model):
                return f"^(?:{re.escape(model)})?{re.escape(prefix[len(model) :])}"
            return f"^{re.escape(prefix)}"
        # A backbone built on its own before: its variables share no scope, so list them.
        return "^(?:" + "|".join(re.escape(p) for p in paths) + ")$"

    def load_weights(self, filepath, skip_mismatch=False, **kwargs):
        """``keras.Model.load_weights``, also reading weight files saved before the head split.

        A ``.weights.h5`` file in the version-1 layout (see "Saved configs and weights" in the
        module docstring) is read through a rearranged temporary copy; the file is not changed.
        """
        path = os.fspath(filepath)
        if isinstance(path, str) and path.endswith(".weights.h5") and os.path.isfile(path):
            if _is_legacy_weights_file(path):
                with tempfile.TemporaryDirectory(prefix="kzoo-detr-") as tmp:
                    migrated = os.path.join(tmp, "model.weights.h5")
                    migrate_legacy_weights(path, migrated)
                    return super().load_weights(migrated, skip_mismatch=skip_mismatch, **kwargs)
        return super().load_weights(filepath, skip_mismatch=skip_mismatch, **kwargs)

    def get_config(self):
        config = super().get_config()
        if self.backbone_name is not None:
            backbone = self.backbone_name
        else:
            backbone = keras.saving.serialize_keras_object(self.backbone)
            # DETR.build builds the backbone (under the preset loader's placeholder
            # initializers); a nested build would draw random weights only to overwrite them.
            backbone.pop("build_config", None)
            backbone.pop("compile_config", None)
        config.update(
            {
                "num_classes": self.num_classes,
                "num_queries": self.num_queries,
                "d_model": self.d_model,
                "num_heads": self.num_heads,
                "num_encoder_layers": self.num_encoder_layers,
                "num_decoder_layers": self.num_decoder_layers,
                "ffn_dim": self.ffn_dim,
                "dropout": self.dropout,
                "backbone": backbone,
                "backbone_trainable_stages": self.backbone_trainable_stages,
                "padding_invariant": self.padding_invariant,
                "backbone_dilation": self.backbone_dilation,
                "config_version": CONFIG_VERSION,
            }
        )
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        version = config.pop("config_version", 1)
        if isinstance(version, bool) or not isinstance(version, int) or version < 1:
            raise ValueError(f"config_version must be a positive int; got {version!r}.")
        if version > CONFIG_VERSION:
            raise ValueError(
                f"This DETR config has config_version {version}, written by a newer kzoo; this "
                f"one reads versions 1 to {CONFIG_VERSION}. Upgrade kzoo to load it."
            )
        # Version 1 configs have the same arguments; only their weight files differ.
        if isinstance(config.get("backbone"), dict):
            config["backbone"] = keras.saving.deserialize_keras_object(config["backbone"])
        return super().from_config(config)
