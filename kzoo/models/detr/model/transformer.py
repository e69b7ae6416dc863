"""DETR's transformer: post-norm encoder and decoder layers with positions added to q and k.

As in facebookresearch/detr: the spatial position embedding is added to the queries and keys of
the encoder's self-attention and to the keys of the decoder's cross-attention; the object-query
embedding is added to the decoder's self-attention queries and keys and to the cross-attention
queries; values never get positions. The decoder's target starts at zero. There is no final
encoder norm; the decoder's norm is applied to every layer's output (the auxiliary outputs) —
unlike HuggingFace's ``auxiliary_loss=True`` path, that normed copy is not fed to the next layer.

Attention uses separate ``q_proj``/``k_proj``/``v_proj``/``out_proj`` Dense layers, so each of the
original checkpoint's stacked ``in_proj_weight`` thirds maps to one kernel (transposed).
"""

import keras
from keras import ops

from kzoo.layers.dropout import Dropout
from kzoo.layers.layer_normalization import LayerNormalization
from kzoo.models.detr.model.initializers import glorot_uniform
from kzoo.ops.attention import dot_product_attention
from kzoo.ops.dense import dense

LAYER_NORM_EPSILON = 1e-5


class _Dense(keras.layers.Dense):
    """keras's ``Dense`` whose product and bias run as one op where the backend has one
    (``kzoo.ops.dense``: ``torch.addmm``). The same weights, names and numbers up to the
    rounding of where the bias is added."""

    def call(self, inputs, training=None):
        if self.lora_enabled or self.quantization_mode or self.bias is None:
            return super().call(inputs, training=training)
        x = dense(inputs, self.kernel, self.bias)
        return x if self.activation is None else self.activation(x)


def _dense(units, name):
    return _Dense(units, kernel_initializer=glorot_uniform(), name=name)


def _check_positive_int(name, value):
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name} must be a positive int; got {value!r}.")


def _check_dropout(value):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
        raise ValueError(f"dropout must be a float in [0, 1); got {value!r}.")


@keras.saving.register_keras_serializable(package="kzoo")
class DETRAttention(keras.layers.Layer):
    """Multi-head attention with separate q/k/v projections and an optional key padding mask.

    Args:
        d_model: Width of queries, keys, values and output; a multiple of ``num_heads``.
        num_heads: Number of heads.
        dropout: Dropout on the attention weights during training.

    Call arguments:
        query: (B, Tq, d_model), already with any position added.
        key: (B, Tk, d_model), already with any position added.
        value: (B, Tk, d_model).
        key_mask: Optional (B, Tk), True/1 for keys to attend to.
        training: Whether dropout applies.
        attention_mask: Optional (B, Tq, Tk) bool, True where query i may attend to key j
            (combined with ``key_mask``); every query must keep at least one key. Training only
            uses it (DETR's denoising queries and query groups).

    Example:

    ```python
    attn = DETRAttention(32, 4)
    x = np.random.rand(2, 10, 32).astype("float32")
    y = attn(x, x, x)  # (2, 10, 32)
    ```
    """

    def __init__(self, d_model, num_heads, dropout=0.0, **kwargs):
        super().__init__(**kwargs)
        _check_positive_int("d_model", d_model)
        _check_positive_int("num_heads", num_heads)
        _check_dropout(dropout)
        if d_model % num_heads:
            raise ValueError(f"d_model ({d_model}) must be a multiple of num_heads ({num_heads}).")
        self.d_model = d_model
        self.num_heads = num_heads
        self.head_dim = d_model // num_heads
        self.dropout = float(dropout)
        self.q_proj = _dense(d_model, "q_proj")
        self.k_proj = _dense(d_model, "k_proj")
        self.v_proj = _dense(d_model, "v_proj")
        self.out_proj = _dense(d_model, "out_proj")
        self.attention_dropout = Dropout(self.dropout)

    def build(
        self,
        query_shape=None,
        key_shape=None,
        value_shape=None,
        key_mask_shape=None,
        attention_mask_shape=None,
    ):
        for layer in (self.q_proj, self.k_proj, self.v_proj, self.out_proj):
            layer.build((None, self.d_model))
        self.built = True

    def _heads(self, x):
        shape = ops.shape(x)
        return ops.reshape(x, (shape[0], shape[1], self.num_heads, self.head_dim))

    def call(self, query, key, value, key_mask=None, training=None, attention_mask=None):
        q = self._heads(self.q_proj(query))
        k = self._heads(self.k_proj(key))
        v = self._heads(self.v_proj(value))
        keep = None
        if key_mask is not None:
            # expand_dims, not [:, None, None]: TF Lite has no builtin for new-axis slices.
            keep = ops.expand_dims(ops.cast(key_mask, "bool"), (1, 2))
        if attention_mask is not None:
            pairs = ops.expand_dims(ops.cast(attention_mask, "bool"), 1)
            keep = pairs if keep is None else ops.logical_and(keep, pairs)
        if not training or self.dropout == 0:
            # keras's attention (torch's fused scaled_dot_product_attention), or on the CPU of
            # JAX and TensorFlow blocks of queries for DC5's long encoder sequences; it has no
            # dropout on the weights, hence the other path.
            out = dot_product_attention(q, k, v, mask=keep, scale=self.head_dim**-0.5)
        else:
            q = q * ops.cast(self.head_dim**-0.5, q.dtype)
            scores = ops.einsum("bqhd,bkhd->bhqk", q, k)
            if keep is not None:
                # A finite fill: an all-padding row then averages instead of producing NaN.
                fill = ops.cast(-1e9 if scores.dtype == "float32" else -6e4, scores.dtype)
                scores = ops.where(keep, scores, fill)
            weights = ops.softmax(scores, axis=-1)
            weights = self.attention_dropout(weights, training=training)
            out = ops.einsum("bhqk,bkhd->bqhd", weights, v)
        shape = ops.shape(out)
        out = ops.reshape(out, (shape[0], shape[1], self.d_model))
        return self.out_proj(out)

    def compute_output_shape(self, query_shape, *args, **kwargs):
        return (*query_shape[:-1], self.d_model)

    def get_config(self):
        config = super().get_config()
        config.update(
            {"d_model": self.d_model, "num_heads": self.num_heads, "dropout": self.dropout}
        )
        return config


class _FeedForward:
    """linear1 → ReLU → dropout → linear2, shared by both layer kinds (not a layer itself)."""

    @staticmethod
    def make(layer, d_model, ffn_dim, dropout):
        layer.linear1 = _dense(ffn_dim, "linear1")
        layer.linear2 = _dense(d_model, "linear2")
        layer.ffn_dropout = Dropout(dropout)

    @staticmethod
    def apply(layer, x, training):
        hidden = ops.relu(layer.linear1(x))
        return layer.linear2(layer.ffn_dropout(hidden, training=training))


def _norm(name):
    return LayerNormalization(epsilon=LAYER_NORM_EPSILON, name=name)


@keras.saving.register_keras_serializable(package="kzoo")
class TransformerEncoderLayer(keras.layers.Layer):
    """Post-norm encoder layer: self-attention with positions on q and k, then a ReLU FFN.

    Args:
        d_model: Model width.
        num_heads: Attention heads.
        ffn_dim: Hidden width of the feed-forward network.
        dropout: Dropout on attention weights, after attention and in the FFN.

    Call arguments:
        x: (B, T, d_model) features; pos: (B, T, d_model) position embedding;
        key_mask: optional (B, T), True for valid positions; training.

    Example:

    ```python
    layer = TransformerEncoderLayer(32, 4, 64)
    x = np.random.rand(1, 6, 32).astype("float32")
    y = layer(x, np.zeros_like(x))
    ```
    """

    def __init__(self, d_model, num_heads, ffn_dim, dropout=0.1, **kwargs):
        super().__init__(**kwargs)
        _check_positive_int("ffn_dim", ffn_dim)
        _check_dropout(dropout)
        self.d_model = d_model
        self.num_heads = num_heads
        self.ffn_dim = ffn_dim
        self.dropout = float(dropout)
        self.self_attn = DETRAttention(d_model, num_heads, dropout, name="self_attn")
        _FeedForward.make(self, d_model, ffn_dim, self.dropout)
        self.norm1 = _norm("norm1")
        self.norm2 = _norm("norm2")
        self.dropout1 = Dropout(self.dropout)
        self.dropout2 = Dropout(self.dropout)

    def build(self, x_shape=None, pos_shape=None, key_mask_shape=None):
        self.self_attn.build()
        self.linear1.build((None, self.d_model))
        self.linear2.build((None, self.ffn_dim))
        self.norm1.build((None, None, self.d_model))
        self.norm2.build((None, None, self.d_model))
        self.built = True

    def call(self, x, pos, key_mask=None, training=None):
        qk = x + pos
        attended = self.self_attn(qk, qk, x, key_mask=key_mask, training=training)
        x = self.norm1(x + self.dropout1(attended, training=training))
        ffn = _FeedForward.apply(self, x, training)
        return self.norm2(x + self.dropout2(ffn, training=training))

    def compute_output_shape(self, x_shape, *args, **kwargs):
        return x_shape

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "d_model": self.d_model,
                "num_heads": self.num_heads,
                "ffn_dim": self.ffn_dim,
                "dropout": self.dropout,
            }
        )
        return config


@keras.saving.register_keras_serializable(package="kzoo")
class TransformerDecoderLayer(keras.layers.Layer):
    """Post-norm decoder layer: query self-attention, cross-attention to the memory, ReLU FFN.

    Args: as ``TransformerEncoderLayer``.

    Call arguments:
        tgt: (B, Q, d_model) decoder state; memory: (B, T, d_model) encoder output;
        pos: (B, T, d_model) spatial positions (added to the cross-attention keys);
        query_pos: (B, Q, d_model) object queries (added to self-attention q/k and the
        cross-attention queries); memory_mask: optional (B, T), True for valid positions;
        self_attention_mask: optional (B, Q, Q) bool, True where query i may attend to query j
        (training only: denoising queries and query groups).

    Example:

    ```python
    layer = TransformerDecoderLayer(32, 4, 64)
    memory = np.random.rand(1, 6, 32).astype("float32")
    queries = np.random.rand(1, 5, 32).astype("float32")
    y = layer(np.zeros_like(queries), memory, np.zeros_like(memory), queries)
    ```
    """

    def __init__(self, d_model, num_heads, ffn_dim, dropout=0.1, **kwargs):
        super().__init__(**kwargs)
        _check_positive_int("ffn_dim", ffn_dim)
        _check_dropout(dropout)
        self.d_model = d_model
        self.num_heads = num_heads
        self.ffn_dim = ffn_dim
        self.dropout = float(dropout)
        self.self_attn = DETRAttention(d_model, num_heads, dropout, name="self_attn")
        self.multihead_attn = DETRAttention(d_model, num_heads, dropout, name="multihead_attn")
        _FeedForward.make(self, d_model, ffn_dim, self.dropout)
        self.norm1 = _norm("norm1")
        self.norm2 = _norm("norm2")
        self.norm3 = _norm("norm3")
        self.dropout1 = Dropout(self.dropout)
        self.dropout2 = Dropout(self.dropout)
        self.dropout3 = Dropout(self.dropout)

    def build(
        self,
        tgt_shape=None,
        memory_shape=None,
        pos_shape=None,
        query_pos_shape=None,
        memory_mask_shape=None,
        self_attention_mask_shape=None,
    ):
        self.self_attn.build()
        self.multihead_attn.build()
        self.linear1.build((None, self.d_model))
        self.linear2.build((None, self.ffn_dim))
        for norm in (self.norm1, self.norm2, self.norm3):
            norm.build((None, None, self.d_model))
        self.built = True

    def call(
        self, tgt, memory, pos, query_pos, memory_mask=None, training=None, self_attention_mask=None
    ):
        qk = tgt + query_pos
        if self_attention_mask is None:
            attended = self.self_attn(qk, qk, tgt, training=training)
        else:
            attended = self.self_attn(
                qk, qk, tgt, training=training, attention_mask=self_attention_mask
            )
        tgt = self.norm1(tgt + self.dropout1(attended, training=training))
        attended = self.multihead_attn(
            tgt + query_pos, memory + pos, memory, key_mask=memory_mask, training=training
        )
        tgt = self.norm2(tgt + self.dropout2(attended, training=training))
        ffn = _FeedForward.apply(self, tgt, training)
        return self.norm3(tgt + self.dropout3(ffn, training=training))

    def compute_output_shape(self, tgt_shape, *args, **kwargs):
        return tgt_shape

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "d_model": self.d_model,
                "num_heads": self.num_heads,
                "ffn_dim": self.ffn_dim,
                "dropout": self.dropout,
            }
        )
        return config


@keras.saving.register_keras_serializable(package="kzoo")
class DETRTransformer(keras.layers.Layer):
    """DETR's encoder–decoder: ``encoder_layer_{i}``, ``decoder_layer_{i}`` and ``decoder_norm``.

    Args:
        d_model: Model width (256).
        num_heads: Attention heads (8).
        num_encoder_layers: Encoder depth (6); 0 passes the features straight to the decoder.
        num_decoder_layers: Decoder depth (6), at least 1.
        ffn_dim: Feed-forward hidden width (2048).
        dropout: Dropout rate (0.1).

    Call arguments:
        features: (B, T, d_model) flattened projected features; pos: (B, T, d_model);
        query_pos: (B, Q, d_model) object queries; valid_mask: optional (B, T), True where
        valid; query_content: optional (B, Q, d_model) start of the decoder's target (default
        zeros, DETR's); query_mask: optional (B, Q, Q) bool self-attention mask of the queries.
        The last two are for training with denoising queries and query groups only.

    Returns (num_decoder_layers, B, Q, d_model): every decoder layer's output after the decoder
    norm (the last one is the final output).

    Example:

    ```python
    transformer = DETRTransformer(32, 4, 1, 2, 64)
    feats = np.random.rand(1, 6, 32).astype("float32")
    hs = transformer(feats, np.zeros_like(feats), np.random.rand(1, 5, 32).astype("float32"))
    ```
    """

    def __init__(
        self,
        d_model=256,
        num_heads=8,
        num_encoder_layers=6,
        num_decoder_layers=6,
        ffn_dim=2048,
        dropout=0.1,
        **kwargs,
    ):
        super().__init__(**kwargs)
        _check_positive_int("d_model", d_model)
        _check_positive_int("num_heads", num_heads)
        _check_positive_int("num_decoder_layers", num_decoder_layers)
        if (
            isinstance(num_encoder_layers, bool)
            or not isinstance(num_encoder_layers, int)
            or (num_encoder_layers < 0)
        ):
            raise ValueError(f"num_encoder_layers must be an int >= 0; got {num_encoder_layers!r}.")
        self.d_model = d_model
        self.num_heads = num_heads
        self.num_encoder_layers = num_encoder_layers
        self.num_decoder_layers = num_decoder_layers
        self.ffn_dim = ffn_dim
        self.dropout = float(dropout)
        self.encoder_layers = [
            TransformerEncoderLayer(d_model, num_heads, ffn_dim, dropout, name=f"encoder_layer_{i}")
            for i in range(num_encoder_layers)
        ]
        self.decoder_layers = [
            TransformerDecoderLayer(d_model, num_heads, ffn_dim, dropout, name=f"decoder_layer_{i}")
            for i in range(num_decoder_layers)
        ]
        self.decoder_norm = _norm("decoder_norm")

    def build(
        self,
        features_shape=None,
        pos_shape=None,
        query_pos_shape=None,
        valid_mask_shape=None,
        query_content_shape=None,
        query_mask_shape=None,
    ):
        for layer in self.encoder_layers + self.decoder_layers:
            layer.build()
        self.decoder_norm.build((None, None, self.d_model))
        self.built = True

    def call(
        self,
        features,
        pos,
        query_pos,
        valid_mask=None,
        training=None,
        query_content=None,
        query_mask=None,
    ):
        memory = features
        for layer in self.encoder_layers:
            memory = layer(memory, pos, key_mask=valid_mask, training=training)
        tgt = ops.zeros_like(query_pos) if query_content is None else query_content
        extra = {} if query_mask is None else {"self_attention_mask": query_mask}
        outputs = []
        for layer in self.decoder_layers:
            tgt = layer(
                tgt, memory, pos, query_pos, memory_mask=valid_mask, training=training, **extra
            )
            outputs.append(self.decoder_norm(tgt))
        return ops.stack(outputs, axis=0)

    def compute_output_shape(self, features_shape, pos_shape, query_pos_shape, *args, **kwargs):
        return (self.num_decoder_layers, *query_pos_shape)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "d_model": self.d_model,
                "num_heads": self.num_heads,
                "num_encoder_layers": self.num_encoder_layers,
                "num_decoder_layers": self.num_decoder_layers,
                "ffn_dim": self.ffn_dim,
                "dropout": self.dropout,
            }
        )
        return config
