"""``DETRHead``: DETR's detection head on any backbone's feature map (MMDetection's ``DETRHead``).

Everything of DETR after the backbone: a 1x1 input projection to ``d_model``, the sine position
embedding of the feature mask, the transformer encoder and decoder with learned object queries,
and the class and box branches. ``kzoo.models.DETR`` is a backbone followed by this layer; it can
also be used on its own, on features of any (B, h, w, C) feature map.

The layer builds on DETR's pieces beside it (transformer, position embedding, initializers), so
it lives with DETR and is public as ``kzoo.models.DETRHead`` (its old name
``kzoo.layers.DETRHead`` is a deprecated alias: ``kzoo.layers`` sits below ``kzoo.models``).
"""

import keras
from keras import ops

from kzoo.models.detr.model.initializers import glorot_uniform, standard_normal
from kzoo.models.detr.model.position_embedding import SinePositionEmbedding
from kzoo.models.detr.model.transformer import DETRTransformer
from kzoo.ops.pointwise import pointwise_conv


def _int_at_least(name, value, minimum=1):
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}; got {value!r}.")


@keras.saving.register_keras_serializable(package="kzoo")
class DETRHead(keras.layers.Layer):
    """DETR's head: input projection, position encoding, transformer, class and box branches.

    Sub-layers (named as in the original checkpoints): ``input_proj`` (1x1 convolution from the
    backbone's channels to ``d_model``), ``position_embedding`` (``SinePositionEmbedding``),
    ``query_embed`` (the object queries), ``transformer`` (``DETRTransformer``), ``class_embed``
    and ``bbox_embed_0..2`` (the box MLP). The table of which checkpoint tensor fills which
    variable is ``WEIGHT_TABLE`` in ``kzoo.models.detr.convert.weights``.

    Args:
        num_classes: Number of object classes; the class branch gives ``num_classes + 1``
            logits, the last meaning "no object" (COCO checkpoints: 91).
        num_queries: Object queries, the most objects one image can yield (100).
        d_model: Transformer width (256); a multiple of ``num_heads`` and of 4.
        num_heads: Attention heads (8).
        num_encoder_layers: Encoder depth (6); 0 feeds the projected features to the decoder.
        num_decoder_layers: Decoder depth (6); the first ``num_decoder_layers - 1`` give the
            auxiliary outputs.
        ffn_dim: Feed-forward hidden width (2048).
        dropout: Dropout in the transformer, in [0, 1) (0.1).

    Call arguments:
        features: (B, h, w, C) feature map, channels last (any C; ``input_proj`` is built for
            it on first use).
        feature_mask: Optional (B, h, w), True (or 1) where the feature map covers the image and
            False (0) on padding; padded positions are never attended to, and the position
            embedding is normalised by each image's unpadded extent. ``None``: all valid.
        training: Whether dropout applies.
        queries: Training only (DETR's denoising queries and query groups, see
            ``kzoo.models.detr.training.denoising``): ``{"content": (B, N, d_model),
            "position": (B, N, d_model), "attention_mask": (B, N, N) bool}`` replacing the
            object queries: the decoder's starting target, the query position embedding and the
            queries' self-attention mask. The outputs then have N queries. ``None`` (always at
            inference): the ``num_queries`` learned object queries.

    Returns a dict:

    - ``"logits"``: (B, num_queries, num_classes + 1);
    - ``"boxes"``: (B, num_queries, 4), normalised (cx, cy, w, h) in [0, 1];
    - ``"aux_logits"``, ``"aux_boxes"``: (B, num_decoder_layers - 1, num_queries, ...) from
      the earlier decoder layers.

    ``compute_loss(targets, outputs)`` gives DETR's set loss (``DETRLoss``) of these outputs and
    ``detections(outputs, target_sizes)`` DETR's post-processing.

    Example:

    ```python
    head = kzoo.models.DETRHead(num_classes=3, num_queries=10, d_model=32, num_heads=4,
                                num_encoder_layers=1, num_decoder_layers=2, ffn_dim=64)
    features = np.random.rand(2, 4, 6, 256).astype("float32")  # a stride-32 feature map
    mask = np.ones((2, 4, 6), bool)
    mask[1, :, 4:] = False  # the second image is narrower
    out = head(features, mask)
    out["logits"].shape  # (2, 10, 4)
    targets = {"boxes": np.full((2, 1, 4), 0.5, "float32"), "labels": np.zeros((2, 1), "int32")}
    loss = head.compute_loss(targets, out)
    found = head.detections(out, target_sizes=[[128, 192], [128, 128]], threshold=0.5)
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
        **kwargs,
    ):
        super().__init__(**kwargs)
        _int_at_least("num_classes", num_classes)
        _int_at_least("num_queries", num_queries)
        _int_at_least("d_model", d_model)
        _int_at_least("num_heads", num_heads)
        _int_at_least("num_encoder_layers", num_encoder_layers, minimum=0)
        _int_at_least("num_decoder_layers", num_decoder_layers)
        _int_at_least("ffn_dim", ffn_dim)
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
        self.num_classes = num_classes
        self.num_queries = num_queries
        self.d_model = d_model
        self.num_heads = num_heads
        self.num_encoder_layers = num_encoder_layers
        self.num_decoder_layers = num_decoder_layers
        self.ffn_dim = ffn_dim
        self.dropout = float(dropout)

        # Created in this order so that the variables (and get_weights()) keep the order they
        # had when these layers belonged to DETR itself.
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

    def _check_features(self, shape):
        shape = tuple(shape)
        if len(shape) != 4 or shape[-1] is None:
            raise ValueError(
                "DETRHead expects a channels-last feature map (batch, height, width, channels) "
                f"with known channels; got shape {shape}."
            )
        return shape

    def build(self, features_shape, feature_mask_shape=None, queries_shape=None):
        channels = self._check_features(features_shape)[-1]
        self.input_proj.build((None, None, None, channels))
        self.position_embedding.build((None, None, None))
        self.query_embed.build((None,))
        self.transformer.build()
        for layer in (self.class_embed, self.bbox_embed_0, self.bbox_embed_1, self.bbox_embed_2):
            layer.build((None, self.d_model))
        self.built = True

    def call(self, features, feature_mask=None, training=None, queries=None):
        shape = self._check_features(features.shape)
        if feature_mask is not None:
            mask_shape = tuple(feature_mask.shape)
            if len(mask_shape) != 3 or any(
                a is not None and b is not None and a != b for a, b in zip(mask_shape, shape[:3])
            ):
                raise ValueError(
                    f"feature_mask must be shaped (batch, height, width) like the features "
                    f"{shape[:3]}; got {mask_shape}."
                )
        # input_proj's own call would run a 1x1 convolution; the flattened product is the same
        # map with a cheaper gradient (kzoo.ops.pointwise).
        kernel = ops.cast(self.input_proj.kernel, features.dtype)[0, 0]
        bias = ops.cast(self.input_proj.bias, features.dtype)
        features = pointwise_conv(features, kernel) + bias
        shape = ops.shape(features)
        batch, height, width = shape[0], shape[1], shape[2]
        if feature_mask is None:
            mask = None
            pos_mask = ops.ones((batch, height, width), dtype=self.compute_dtype)
        else:
            is_bool = keras.backend.standardize_dtype(feature_mask.dtype) == "bool"
            mask = feature_mask if is_bool else feature_mask > 0
            pos_mask = mask
        pos = self.position_embedding(pos_mask)
        tokens = height * width
        features = ops.reshape(features, (batch, tokens, self.d_model))
        pos = ops.reshape(ops.cast(pos, features.dtype), (batch, tokens, self.d_model))
        flat_mask = None if mask is None else ops.reshape(mask, (batch, tokens))
        if queries is None:
            query_pos = ops.broadcast_to(
                ops.cast(self.query_embed.embeddings, features.dtype)[None],
                (batch, self.num_queries, self.d_model),
            )
            hidden = self.transformer(
                features, pos, query_pos, valid_mask=flat_mask, training=training
            )
        else:
            hidden = self.transformer(
                features,
                pos,
                ops.cast(queries["position"], features.dtype),
                valid_mask=flat_mask,
                training=training,
                query_content=ops.cast(queries["content"], features.dtype),
                query_mask=queries["attention_mask"],
            )
        logits = self.class_embed(hidden)
        boxes = ops.sigmoid(self.bbox_embed_2(self.bbox_embed_1(self.bbox_embed_0(hidden))))
        # (L, B, Q, ...) → batch first, so that predict() can concatenate batches.
        return {
            "logits": logits[-1],
            "boxes": boxes[-1],
            "aux_logits": ops.transpose(logits[:-1], (1, 0, 2, 3)),
            "aux_boxes": ops.transpose(boxes[:-1], (1, 0, 2, 3)),
        }

    def compute_output_spec(self, features, feature_mask=None, training=None, queries=None):
        batch = features.shape[0]
        aux = self.num_decoder_layers - 1
        classes = self.num_classes + 1
        n = self.num_queries if queries is None else queries["position"].shape[1]
        spec = keras.KerasTensor
        return {
            "logits": spec((batch, n, classes), dtype=self.compute_dtype),
            "boxes": spec((batch, n, 4), dtype=self.compute_dtype),
            "aux_logits": spec((batch, aux, n, classes), dtype=self.compute_dtype),
            "aux_boxes": spec((batch, aux, n, 4), dtype=self.compute_dtype),
        }

    # ---------------------------------------------------------------- loss and post-processing

    def compute_loss(self, y_true, y_pred):
        """DETR's set loss (``kzoo.models.detr.DETRLoss`` with its defaults) of this head's outputs.

        Args:
            y_true: ``{"boxes": (B, T, 4) normalised (cx, cy, w, h) padded with 0, "labels":
                (B, T) padded with -1}``.
            y_pred: The dict this layer returned.

        For other loss weights, call a ``DETRLoss(...)`` of your own on the same arguments.
        """
        from kzoo.models.detr.training.loss import DETRLoss

        return DETRLoss(num_classes=self.num_classes)(y_true, y_pred)

    def detections(self, outputs, target_sizes, threshold=0.5):
        """Per image a dict of pixel ``boxes`` (xyxy), ``scores`` and ``labels`` (no NMS).

        See ``kzoo.models.detr.model.postprocess.outputs_to_detections``; ``target_sizes`` is the
        (B, 2) (height, width) in pixels that the normalised boxes are scaled to.
        """
        from kzoo.models.detr.model.postprocess import outputs_to_detections

        return outputs_to_detections(
            ops.convert_to_numpy(outputs["logits"]),
            ops.convert_to_numpy(outputs["boxes"]),
            target_sizes,
            threshold,
        )

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
            }
        )
        return config
