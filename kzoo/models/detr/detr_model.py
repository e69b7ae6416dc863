"""``DETR``: the detection transformer (Carion et al., 2020) as one keras model.

Weights layout
--------------

Every variable's ``path`` (after the model's own name; ``DETR.weights_by_path()`` gives them
without it) mirrors the original checkpoint (facebookresearch/detr) with dots
turned into ``_`` inside a layer name and ``/`` between layers. Converting a torch tensor:

- conv weight ``(O, I, kh, kw)`` → keras ``kernel`` ``(kh, kw, I, O)``: ``w.permute(2, 3, 1, 0)``;
- linear weight ``(out, in)`` → Dense ``kernel`` ``(in, out)``: ``w.T``; biases as they are;
- the original's stacked ``in_proj_weight`` ``(3d, d)`` splits into thirds q, k, v (in that
  order), each transposed; ``in_proj_bias`` ``(3d,)`` likewise;
- frozen batch norm ``weight/bias/running_mean/running_var`` →
  ``gamma/beta/moving_mean/moving_variance`` (``num_batches_tracked`` is dropped);
- layer norm ``weight/bias`` → ``gamma/beta``.

=====================================================  ==================================================
original key (``backbone.0.body.`` prefix for CNN)     kzoo variable path
=====================================================  ==================================================
``conv1.weight``                                       ``backbone/conv1/kernel``
``bn1.{weight,bias,running_mean,running_var}``         ``backbone/bn1/{gamma,beta,moving_mean,moving_variance}``
``layer{s}.{b}.conv{k}.weight``                        ``backbone/layer{s}_{b}_conv{k}/kernel``
``layer{s}.{b}.bn{k}.*``                               ``backbone/layer{s}_{b}_bn{k}/*``
``layer{s}.0.downsample.0.weight``                     ``backbone/layer{s}_0_downsample_0/kernel``
``layer{s}.0.downsample.1.*``                          ``backbone/layer{s}_0_downsample_1/*``
``input_proj.{weight,bias}``                           ``input_proj/{kernel,bias}``
``query_embed.weight`` ``(Q, d)``                      ``query_embed/embeddings`` ``(Q, d)`` as is
``transformer.encoder.layers.{i}.self_attn.            ``transformer/encoder_layer_{i}/self_attn/
in_proj_weight/bias`` (q, k, v thirds)                 {q_proj,k_proj,v_proj}/{kernel,bias}``
``...self_attn.out_proj.*``                            ``.../self_attn/out_proj/{kernel,bias}``
``...encoder.layers.{i}.linear{1,2}.*``                ``transformer/encoder_layer_{i}/linear{1,2}/*``
``...encoder.layers.{i}.norm{1,2}.*``                  ``transformer/encoder_layer_{i}/norm{1,2}/*``
``transformer.decoder.layers.{i}.self_attn.*``         ``transformer/decoder_layer_{i}/self_attn/*``
``...decoder.layers.{i}.multihead_attn.*``             ``transformer/decoder_layer_{i}/multihead_attn/*``
``...decoder.layers.{i}.linear{1,2}/norm{1,2,3}.*``    ``transformer/decoder_layer_{i}/...`` same names
``transformer.decoder.norm.*``                         ``transformer/decoder_norm/{gamma,beta}``
``class_embed.*``                                      ``class_embed/{kernel,bias}``
``bbox_embed.layers.{j}.*`` (j = 0, 1, 2)              ``bbox_embed_{j}/{kernel,bias}``
=====================================================  ==================================================

HuggingFace (transformers 5.x) names map to the same variables: ``model.backbone.model.embedder.
embedder.{convolution,normalization}`` is ``conv1``/``bn1``; ``model.backbone.model.encoder.
stages.{s-1}.layers.{b}.layer.{k-1}.{convolution,normalization}`` is ``layer{s}_{b}_conv{k}`` /
``_bn{k}``; ``...layers.0.shortcut.{convolution,normalization}`` is ``downsample_0/1``;
``model.input_projection``, ``model.query_position_embeddings``; attention ``q_proj/k_proj/v_proj/
o_proj`` → ``q_proj/k_proj/v_proj/out_proj``; ``self_attn_layer_norm`` → ``norm1``, decoder
``encoder_attn`` → ``multihead_attn``, ``encoder_attn_layer_norm`` → ``norm2``,
``final_layer_norm`` → ``norm2`` (encoder) / ``norm3`` (decoder), ``mlp.fc{1,2}`` →
``linear{1,2}``; ``model.decoder.layernorm`` → ``decoder_norm``; ``class_labels_classifier`` →
``class_embed``; ``bbox_predictor.layers.{j}`` → ``bbox_embed_{j}``. Read the installed
version's names off its ``state_dict``.

Padding
-------

With ``padding_invariant=True`` (the default) an image's outputs never depend on the padding of
the other images in its batch: the backbone zeroes features outside each image before every
convolution that sees neighbours (see ``backbone.py``), and the feature mask is each image's
unpadded extent ``ceil(size / 32)``. The pixel mask must then be a top-left rectangle per image
(padding at the bottom and right, as DETR and HuggingFace pad). ``padding_invariant=False``
computes exactly what the original DETR and HuggingFace compute for padded batches: the backbone
sees the padding and the feature mask is the pixel mask resized with torch's nearest-neighbour
rule. For an unpadded batch (no ``pixel_mask``, or all ones) both settings give the same numbers.
"""

import keras
from keras import ops

from kzoo.models.detr.backbone import RESNET_BLOCKS, ResNetBackbone
from kzoo.models.detr.initializers import glorot_uniform, standard_normal
from kzoo.models.detr.position_embedding import SinePositionEmbedding
from kzoo.models.detr.transformer import DETRTransformer
from kzoo.ops.shapes import arange, ceil_divide
from kzoo.presets import PresetMixin

DEFAULT_TRAINABLE_STAGES = {"resnet50": 3, "resnet101": 3, "small": 5}


def _positive_int(name, value, minimum=1):
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}; got {value!r}.")


def nearest_indices(in_size, out_size):
    """torch's ``interpolate(mode="nearest")`` source index per output index (float32 math)."""
    scale = ops.cast(in_size, "float32") / ops.cast(out_size, "float32")
    idx = ops.floor(ops.cast(arange(out_size), "float32") * scale)
    return ops.minimum(ops.cast(idx, "int32"), in_size - 1)


@keras.saving.register_keras_serializable(package="kzoo")
class DETR(PresetMixin, keras.Model):
    """DETR: a ResNet backbone, a transformer encoder–decoder and set-prediction heads.

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
        backbone: ``"resnet50"``, ``"resnet101"`` or ``"small"`` (a narrow ResNet for tests and
            CPU training).
        backbone_trainable_stages: How many of the backbone's last stages train (0–5); defaults
            to 3 for ResNet-50/101 (DETR's recipe: layer2–layer4) and 5 (all) for ``"small"``.
        padding_invariant: See "Padding" in the module docstring.

    Call: ``model(images)`` with float (B, H, W, 3) already-normalised images, or
    ``model({"images": images, "pixel_mask": mask})`` with ``mask`` (B, H, W), 1 for real pixels
    and 0 for padding. Returns a dict:

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
        **kwargs,
    ):
        super().__init__(**kwargs)
        _positive_int("num_classes", num_classes)
        _positive_int("num_queries", num_queries)
        _positive_int("d_model", d_model)
        _positive_int("num_heads", num_heads)
        _positive_int("num_encoder_layers", num_encoder_layers, minimum=0)
        _positive_int("num_decoder_layers", num_decoder_layers)
        _positive_int("ffn_dim", ffn_dim)
        if d_model % num_heads:
            raise ValueError(f"d_model ({d_model}) must be a multiple of num_heads ({num_heads}).")
        if d_model % 4:
            raise ValueError(
                f"d_model must be a multiple of 4 (the sine embedding gives d_model/2 features "
                f"per axis, in sin/cos pairs); got {d_model}."
            )
        if (
            isinstance(dropout, bool)
            or not isinstance(dropout, (int, float))
            or not (0 <= dropout < 1)
        ):
            raise ValueError(f"dropout must be a float in [0, 1); got {dropout!r}.")
        if backbone not in RESNET_BLOCKS:
            raise ValueError(
                f"backbone must be one of {', '.join(RESNET_BLOCKS)}; got {backbone!r}."
            )
        if backbone_trainable_stages is None:
            backbone_trainable_stages = DEFAULT_TRAINABLE_STAGES[backbone]
        _positive_int("backbone_trainable_stages", backbone_trainable_stages, minimum=0)
        if backbone_trainable_stages > 5:
            raise ValueError(
                f"backbone_trainable_stages must be in 0..5; got {backbone_trainable_stages}."
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
        self.backbone_name = backbone
        self.backbone_trainable_stages = backbone_trainable_stages
        self.padding_invariant = padding_invariant

        self.backbone = ResNetBackbone(
            backbone,
            trainable_stages=backbone_trainable_stages,
            # From-scratch training of the small backbone needs a learnable per-channel affine.
            trainable_affine=backbone == "small",
            name="backbone",
        )
        self.input_proj = keras.layers.Conv2D(
            d_model, 1, kernel_initializer=glorot_uniform(), name="input_proj"
        )
        self.position_embedding = SinePositionEmbedding(d_model // 2, name="position_embedding")
        self.query_embed = keras.layers.Embedding(
            num_queries,
            d_model,
            embeddings_initializer=standard_normal(),
            name="query_embed",
        )
        self.transformer = DETRTransformer(
            d_model,
            num_heads,
            num_encoder_layers,
            num_decoder_layers,
            ffn_dim,
            dropout,
            name="transformer",
        )

        def dense(units, name, activation=None):
            return keras.layers.Dense(
                units, activation=activation, kernel_initializer=glorot_uniform(), name=name
            )

        self.class_embed = dense(num_classes + 1, "class_embed")
        self.bbox_embed_0 = dense(d_model, "bbox_embed_0", "relu")
        self.bbox_embed_1 = dense(d_model, "bbox_embed_1", "relu")
        self.bbox_embed_2 = dense(4, "bbox_embed_2")
        self._detr_loss = None

    # ---------------------------------------------------------------- building and calling

    def build(self, inputs_shape=None):
        self.backbone.build((None, None, None, 3))
        self.input_proj.build((None, None, None, self.backbone.out_channels))
        self.position_embedding.build((None, None, None))
        self.query_embed.build((None,))
        self.transformer.build()
        self.class_embed.build((None, self.d_model))
        self.bbox_embed_0.build((None, self.d_model))
        self.bbox_embed_1.build((None, self.d_model))
        self.bbox_embed_2.build((None, self.d_model))
        self.built = True

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
        images, pixel_mask = self._split_inputs(inputs)
        images = ops.cast(images, self.compute_dtype)
        valid_sizes = None
        if pixel_mask is not None and self.padding_invariant:
            valid_sizes = self._valid_sizes(pixel_mask)
        features = self.backbone(images, valid_sizes=valid_sizes, training=training)
        features = self.input_proj(features)
        shape = ops.shape(features)
        batch, height, width = shape[0], shape[1], shape[2]
        if pixel_mask is None:
            mask = None
            pos_mask = ops.ones((batch, height, width), dtype=self.compute_dtype)
        else:
            if self.padding_invariant:
                extent = ceil_divide(valid_sizes, 32)
                rows = arange(height)[None, :] < extent[:, 0:1]
                cols = arange(width)[None, :] < extent[:, 1:2]
                # expand_dims, not [:, None]: TF Lite has no builtin for new-axis slices of
                # tensors of unknown size.
                mask = ops.logical_and(ops.expand_dims(rows, 2), ops.expand_dims(cols, 1))
            else:
                mask = self._resized_mask(pixel_mask, height, width)
            pos_mask = mask
        pos = self.position_embedding(pos_mask)
        tokens = height * width
        features = ops.reshape(features, (batch, tokens, self.d_model))
        pos = ops.reshape(ops.cast(pos, features.dtype), (batch, tokens, self.d_model))
        flat_mask = None if mask is None else ops.reshape(mask, (batch, tokens))
        query_pos = ops.broadcast_to(
            ops.cast(self.query_embed.embeddings, features.dtype)[None],
            (batch, self.num_queries, self.d_model),
        )
        hidden = self.transformer(features, pos, query_pos, valid_mask=flat_mask, training=training)
        logits = self.class_embed(hidden)
        boxes = ops.sigmoid(self.bbox_embed_2(self.bbox_embed_1(self.bbox_embed_0(hidden))))
        # (L, B, Q, ...) → batch first, so that predict() can concatenate batches.
        return {
            "logits": logits[-1],
            "boxes": boxes[-1],
            "aux_logits": ops.transpose(logits[:-1], (1, 0, 2, 3)),
            "aux_boxes": ops.transpose(boxes[:-1], (1, 0, 2, 3)),
        }

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

    def compile(self, optimizer=None, loss=None, backbone_learning_rate_scale=0.1, **kwargs):
        """Compile with DETR's recipe unless told otherwise.

        Args:
            optimizer: Defaults to ``ScaledAdamW`` (AdamW, lr 1e-4, weight decay 1e-4, global
                gradient clipping at norm 0.1) with the backbone's learning rate scaled by
                ``backbone_learning_rate_scale`` (1e-5 for the default 0.1). Keras has no
                parameter groups, and scaling the gradients instead would do nothing under Adam,
                so the optimizer scales the learning rate per variable (see
                ``kzoo.models.detr.optimizer``).
            loss: A callable ``loss(y_true, y_pred) -> scalar`` on the whole target and output
                dicts; defaults to ``kzoo.models.detr.detr_loss.DETRLoss()``.
            backbone_learning_rate_scale: Only used when ``optimizer`` is None.
            **kwargs: Passed to ``keras.Model.compile`` (``jit_compile``, ``steps_per_execution``,
                ...). Per-output ``metrics`` are not supported: the loss sees the whole dict.
        """
        if optimizer is None:
            from kzoo.models.detr.optimizer import ScaledAdamW

            optimizer = ScaledAdamW(
                learning_rate=1e-4,
                weight_decay=1e-4,
                global_clipnorm=0.1,
                learning_rate_scales={r"^backbone/": backbone_learning_rate_scale},
            )
        if loss is None:
            # Imported here: the loss module is optional for inference-only use.
            from kzoo.models.detr.detr_loss import DETRLoss

            loss = DETRLoss()
        if not callable(loss):
            raise ValueError(f"loss must be callable as loss(y_true, y_pred); got {loss!r}.")
        # keras' CompileLoss would map one loss per output key; DETR's loss needs the whole dict.
        super().compile(optimizer=optimizer, loss=None, **kwargs)
        self._detr_loss = loss

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

        See ``kzoo.models.detr.postprocess.predict_detections``.
        """
        from kzoo.models.detr.postprocess import predict_detections

        return predict_detections(
            self, images, threshold=threshold, target_sizes=target_sizes, pixel_mask=pixel_mask
        )

    # ---------------------------------------------------------------- config

    def weights_by_path(self):
        """Every variable keyed by its path without the model's own name (``backbone/conv1/...``).

        The keys are the right-hand column of the table in this module's docstring.
        """
        if not self.built:
            raise ValueError("Build the model (call it once, or model.build()) first.")
        prefix = self.name + "/"
        return {
            (v.path[len(prefix) :] if v.path.startswith(prefix) else v.path): v
            for v in self.weights
        }

    def get_config(self):
        config = super().get_config()
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
                "backbone": self.backbone_name,
                "backbone_trainable_stages": self.backbone_trainable_stages,
                "padding_invariant": self.padding_invariant,
            }
        )
        return config
