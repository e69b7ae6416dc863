"""``CausalLM``: a small decoder-only transformer language model built for context parallelism."""

import keras
import numpy as np
from keras import layers, ops

from kzoo.distribution.training import DistributedTrainer
from kzoo.export.mixin import ExportMixin
from kzoo.export.signatures import InputSpec, Signature
from kzoo.layers.context_parallel_attention import ContextParallelAttention
from kzoo.layers.layer_normalization import LayerNormalization
from kzoo.ops.ring_attention import active_context_parallel, validate_segment_ids
from kzoo.ops.shapes import positions_along
from kzoo.presets import PresetMixin
from kzoo.training.first_step import OptimizerBuiltBeforeTracing


@keras.saving.register_keras_serializable(package="kzoo")
class CausalLMBlock(layers.Layer):
    """Pre-norm transformer block: ``x + attention(norm(x))``, then ``x + mlp(norm(x))``.

    The first residual add and the MLP's norm run as one fused op
    (``kzoo.ops.add_layer_norm``, through ``LayerNormalization(...)(h, residual=x)``).

    Args:
        hidden_dim: Width of the residual stream.
        num_heads: Query heads.
        num_key_value_heads: Key/value heads (grouped-query attention); ``num_heads`` default.
        intermediate_dim: Width of the MLP; ``4 * hidden_dim`` by default.
        layer_norm_epsilon: Epsilon of both normalisations.

    Example:

    ```python
    block = kzoo.models.CausalLMBlock(hidden_dim=32, num_heads=4)
    y = block(np.zeros((2, 16, 32), "float32"))
    ```
    """

    def __init__(
        self,
        hidden_dim,
        num_heads,
        num_key_value_heads=None,
        intermediate_dim=None,
        layer_norm_epsilon=1e-5,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if not isinstance(hidden_dim, int) or hidden_dim < 1:
            raise ValueError(f"hidden_dim must be a positive integer; got {hidden_dim!r}.")
        if not isinstance(num_heads, int) or num_heads < 1 or hidden_dim % num_heads:
            raise ValueError(
                f"num_heads must be a positive divisor of hidden_dim={hidden_dim}; "
                f"got {num_heads!r}."
            )
        self.hidden_dim = hidden_dim
        self.num_heads = num_heads
        self.num_key_value_heads = num_key_value_heads or num_heads
        self.intermediate_dim = intermediate_dim or 4 * hidden_dim
        self.layer_norm_epsilon = float(layer_norm_epsilon)
        self.attention_norm = LayerNormalization(
            epsilon=layer_norm_epsilon, dtype=self.dtype_policy, name="attention_norm"
        )
        self.attention = ContextParallelAttention(
            num_heads=num_heads,
            key_dim=hidden_dim // num_heads,
            num_key_value_heads=self.num_key_value_heads,
            causal=True,
            dtype=self.dtype_policy,
            name="attention",
        )
        self.mlp_norm = LayerNormalization(
            epsilon=layer_norm_epsilon, dtype=self.dtype_policy, name="mlp_norm"
        )
        self.mlp_in = layers.Dense(
            self.intermediate_dim, activation="gelu", dtype=self.dtype_policy, name="mlp_in"
        )
        self.mlp_out = layers.Dense(hidden_dim, dtype=self.dtype_policy, name="mlp_out")

    def build(self, input_shape):
        self.attention_norm.build(input_shape)
        self.attention.build(input_shape, input_shape)
        self.mlp_norm.build(input_shape)
        self.mlp_in.build(input_shape)
        self.mlp_out.build(tuple(input_shape[:-1]) + (self.intermediate_dim,))
        self.built = True

    def call(self, x, segment_ids=None):
        h = self.attention_norm(x)
        # The residual add and the MLP's norm in one pass: (norm(x + attn), x + attn).
        h, x = self.mlp_norm(self.attention(h, h, segment_ids=segment_ids), residual=x)
        return x + self.mlp_out(self.mlp_in(h))

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "hidden_dim": self.hidden_dim,
                "num_heads": self.num_heads,
                "num_key_value_heads": self.num_key_value_heads,
                "intermediate_dim": self.intermediate_dim,
                "layer_norm_epsilon": self.layer_norm_epsilon,
            }
        )
        return config


@keras.saving.register_keras_serializable(package="kzoo")
class CausalLM(
    OptimizerBuiltBeforeTracing, PresetMixin, ExportMixin, DistributedTrainer, keras.Model
):
    """A decoder-only transformer language model whose attention can be context parallel.

    Token and learned position embeddings, ``num_layers`` pre-norm blocks of
    ``kzoo.layers.LayerNormalization`` + :class:`kzoo.layers.ContextParallelAttention` (causal)
    + a GELU MLP, a final normalisation and a dense layer to the vocabulary logits.

    Under a :class:`kzoo.distribution.ContextParallel` distribution the token sequence is in
    the distribution's layout order (``cp.to_layout_order(tokens)``, and the same for the
    targets); the model embeds each slot's *global* position (``cp.layout_positions``), so it
    computes exactly what it computes on one device, only permuted. On torch, where each
    device is a process of ``torch.distributed`` (``torchrun``), ``fit``/``evaluate``/
    ``predict`` take the same global arrays on every process and train across the processes
    (:class:`kzoo.distribution.DistributedTrainer`).

    Packed documents: call the model on a dict ``{"token_ids", "segment_ids", "positions"}``
    (all ``(batch, seq_len)`` integers, in layout order under context parallelism), as built by
    :func:`kzoo.distribution.pack_documents`. Attention then stays inside each document and
    positions restart at each, so every document gets the logits it would get alone. ``fit``,
    ``evaluate`` and ``predict`` check numpy packed inputs before anything runs
    (:func:`kzoo.distribution.check_packed_layout`); weight the loss with
    ``segment_ids > 0`` to ignore padding.

    Args:
        vocabulary_size: Number of tokens.
        num_layers: Number of transformer blocks.
        hidden_dim: Width of the residual stream.
        num_heads: Query heads per attention layer.
        num_key_value_heads: Key/value heads (grouped-query attention).
        intermediate_dim: MLP width; ``4 * hidden_dim`` by default.
        max_sequence_length: Size of the position embedding table.
        layer_norm_epsilon: Epsilon of the normalisations.

    Example:

    ```python
    model = kzoo.models.CausalLM(vocabulary_size=64, num_layers=2, hidden_dim=32, num_heads=4)
    logits = model(np.zeros((2, 16), "int32"))  # (2, 16, 64)
    segment_ids, positions = kzoo.distribution.pack_documents([[5, 11], [16]], 16)
    logits = model({"token_ids": np.zeros((2, 16), "int32"), "segment_ids": segment_ids,
                    "positions": positions})
    ```
    """

    def __init__(
        self,
        vocabulary_size,
        num_layers,
        hidden_dim,
        num_heads,
        num_key_value_heads=None,
        intermediate_dim=None,
        max_sequence_length=2048,
        layer_norm_epsilon=1e-5,
        **kwargs,
    ):
        super().__init__(**kwargs)
        for name, val in (
            ("vocabulary_size", vocabulary_size),
            ("num_layers", num_layers),
            ("max_sequence_length", max_sequence_length),
        ):
            if not isinstance(val, int) or isinstance(val, bool) or val < 1:
                raise ValueError(f"{name} must be a positive integer; got {val!r}.")
        self.vocabulary_size = vocabulary_size
        self.num_layers = num_layers
        self.hidden_dim = hidden_dim
        self.num_heads = num_heads
        self.num_key_value_heads = num_key_value_heads or num_heads
        self.intermediate_dim = intermediate_dim or 4 * hidden_dim
        self.max_sequence_length = max_sequence_length
        self.layer_norm_epsilon = float(layer_norm_epsilon)
        self.token_embedding = layers.Embedding(
            vocabulary_size, hidden_dim, dtype=self.dtype_policy, name="token_embedding"
        )
        self.position_embedding = layers.Embedding(
            max_sequence_length, hidden_dim, dtype=self.dtype_policy, name="position_embedding"
        )
        self.blocks = [
            CausalLMBlock(
                hidden_dim,
                num_heads,
                num_key_value_heads=self.num_key_value_heads,
                intermediate_dim=self.intermediate_dim,
                layer_norm_epsilon=layer_norm_epsilon,
                dtype=self.dtype_policy,
                name=f"block_{i}",
            )
            for i in range(num_layers)
        ]
        self.final_norm = LayerNormalization(
            epsilon=layer_norm_epsilon, dtype=self.dtype_policy, name="final_norm"
        )
        self.logits = layers.Dense(vocabulary_size, dtype=self.dtype_policy, name="logits")

    def build(self, input_shape):
        if isinstance(input_shape, dict):
            input_shape = input_shape["token_ids"]
        self._check_length(input_shape[1])
        self.token_embedding.build(input_shape)
        self.position_embedding.build((input_shape[1],))
        hidden_shape = tuple(input_shape) + (self.hidden_dim,)
        for block in self.blocks:
            block.build(hidden_shape)
        self.final_norm.build(hidden_shape)
        self.logits.build(hidden_shape)
        self.built = True

    def call(self, inputs):
        token_ids, segment_ids, positions = self._unpack_inputs(inputs)
        seq_len = ops.shape(token_ids)[1]
        self._check_length(seq_len)
        x = self.token_embedding(token_ids)
        if positions is None:
            dist, _ = active_context_parallel()
            if dist is None:
                # A tensor, not numpy: an exported graph's sequence length is symbolic.
                positions = positions_along(token_ids, 1)
            else:
                positions = ops.convert_to_tensor(dist.shard_positions(seq_len).astype("int32"))
            positions = ops.expand_dims(positions, 0)
        x = x + self.position_embedding(positions)
        for block in self.blocks:
            x = block(x, segment_ids=segment_ids)
        return self.logits(self.final_norm(x))

    def _unpack_inputs(self, inputs):
        """``(token_ids, segment_ids, positions)`` of a token array or a packed-input dict."""
        if not isinstance(inputs, dict):
            return inputs, None, None
        unknown = set(inputs) - {"token_ids", "segment_ids", "positions"}
        if "token_ids" not in inputs or unknown:
            raise ValueError(
                "CausalLM takes token ids, or a dict with 'token_ids' and optionally "
                f"'segment_ids' and 'positions'; got keys {sorted(inputs)}."
            )
        token_ids = inputs["token_ids"]
        segment_ids, positions = inputs.get("segment_ids"), inputs.get("positions")
        batch, seq_len = tuple(token_ids.shape)[:2]
        if segment_ids is not None:
            validate_segment_ids(segment_ids, batch, seq_len, seq_len)
            if positions is None:
                raise ValueError(
                    "Packed inputs with 'segment_ids' need 'positions' that restart at every "
                    "document; build both with kzoo.distribution.pack_documents."
                )
        if positions is not None:
            shape = tuple(positions.shape)
            dtype = keras.backend.standardize_dtype(positions.dtype)
            if "int" not in dtype or len(shape) != 2 or shape[1] != seq_len:
                raise ValueError(
                    f"positions must be integers of shape (batch, seq_len) = {(batch, seq_len)}; "
                    f"got dtype {dtype} and shape {shape}."
                )
        return token_ids, segment_ids, positions

    def _check_packed(self, x):
        """Refuse numpy packed inputs whose layout was not converted, before anything runs."""
        if not isinstance(x, dict):
            return
        self._unpack_inputs(x)
        segment_ids = x.get("segment_ids")
        if isinstance(segment_ids, np.ndarray):
            from kzoo.distribution.packing import check_packed_layout

            dist, _ = active_context_parallel()
            if dist is not None and dist.local_shards and not dist.auto_shard_dataset:
                return  # each process feeds its own part of the sequence: nothing to check
            positions = x.get("positions")
            check_packed_layout(
                segment_ids,
                positions if isinstance(positions, np.ndarray) else None,
                distribution=dist,
                max_position=self.max_sequence_length,
            )

    def fit(self, x=None, y=None, *args, **kwargs):
        self._check_packed(x)
        return super().fit(x, y, *args, **kwargs)

    def evaluate(self, x=None, y=None, *args, **kwargs):
        self._check_packed(x)
        return super().evaluate(x, y, *args, **kwargs)

    def predict(self, x, *args, **kwargs):
        self._check_packed(x)
        return super().predict(x, *args, **kwargs)

    def _check_length(self, seq_len):
        # A symbolic length (a traced graph) is checked by the embedding's gather instead.
        if isinstance(seq_len, int) and seq_len > self.max_sequence_length:
            raise ValueError(
                f"The sequence length {seq_len} exceeds max_sequence_length="
                f"{self.max_sequence_length}."
            )

    def compute_output_shape(self, input_shape):
        if isinstance(input_shape, dict):
            input_shape = input_shape["token_ids"]
        return tuple(input_shape) + (self.vocabulary_size,)

    def export_signature(self):
        """int32 ``token_ids`` (batch, sequence), what ``model.export`` and ``kzoo.export`` take
        (packed inputs are a training layout; an exported model serves plain sequences)."""
        return Signature(InputSpec("token_ids", ("batch", "sequence"), "int32"))

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "vocabulary_size": self.vocabulary_size,
                "num_layers": self.num_layers,
                "hidden_dim": self.hidden_dim,
                "num_heads": self.num_heads,
                "num_key_value_heads": self.num_key_value_heads,
                "intermediate_dim": self.intermediate_dim,
                "max_sequence_length": self.max_sequence_length,
                "layer_norm_epsilon": self.layer_norm_epsilon,
            }
        )
        return config
