"""``ContextParallelAttention``: multi-head (or grouped-query) attention that shards the sequence."""

import keras
from keras import layers, ops

from kzoo.ops.ring_attention import (
    check_segment_layout,
    ring_attention,
    validate_segment_ids,
    validate_window_size,
)


def _positive_int(value):
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


@keras.saving.register_keras_serializable(package="kzoo")
class ContextParallelAttention(layers.Layer):
    """Multi-head attention that runs as ring attention under context parallelism.

    Called like ``keras.layers.MultiHeadAttention``: ``layer(query, value, key=None,
    attention_mask=None)``, with the same weights (``query_dense``, ``key_dense``,
    ``value_dense``, ``output_dense`` einsum kernels and biases), plus grouped-query attention
    (``num_key_value_heads``), ``causal``, a sliding window (``window_size``) and packed
    documents (``segment_ids``).

    When the active distribution is a :class:`kzoo.distribution.ContextParallel` whose sequence
    axis has more than one device, each device keeps its queries and the keys/values travel
    round a ring of devices (exact log-sum-exp merging, zigzag causal load balance), or two
    all-to-alls re-shard from the sequence to the heads and back, as the distribution's
    ``strategy`` says; the sequence axis is then in the distribution's layout order. On JAX
    the layer sees global arrays and runs inside ``shard_map``
    (``kzoo.backends.jax.ring_attention``); on torch every device is a process of
    ``torch.distributed`` (launched by ``torchrun``) and the layer sees this process's shard of
    the sequence (``kzoo.backends.torch.cp_ring``). Otherwise it computes exact attention on
    one device. All modes have the same weights and give the same outputs.

    On TensorFlow the layer always computes exact single-device attention: keras's TensorFlow
    distribution ignores the distribution, so there is no sharded sequence to run a ring over.

    Args:
        num_heads: Number of query heads.
        key_dim: Size of each query/key head.
        value_dim: Size of each value head; ``key_dim`` by default.
        num_key_value_heads: Number of key/value heads for grouped-query attention (a divisor
            of ``num_heads``); ``num_heads`` by default (multi-head attention).
        use_bias: Whether the projections have biases.
        output_shape: Size of the output's last axis; the query's by default.
        causal: Mask keys after each query's position.
        window_size: Sliding-window attention (needs ``causal``): each query sees itself and
            the ``window_size - 1`` keys before it. Under context parallelism, ring steps no
            query can reach are skipped.
        kernel_initializer, bias_initializer: For the projections.

    Call arguments:
        query: ``(batch, q_len, dim)``.
        value: ``(batch, kv_len, dim)``.
        key: Optional ``(batch, kv_len, dim)``; ``value`` by default.
        attention_mask: Optional key padding mask ``(batch, kv_len)`` (``True`` = attend), or
            on one device a full ``(batch, q_len, kv_len)`` mask. A query that sees no key
            outputs the output projection's bias.
        segment_ids: Optional ``(batch, seq_len)`` integer document ids for packed sequences
            (query and key/value of the same length): a token attends only within its own
            document; id 0 is padding. Under context parallelism they are in the layout
            order, like the tokens (``kzoo.distribution.pack_documents``).

    Example:

    ```python
    layer = kzoo.layers.ContextParallelAttention(num_heads=4, key_dim=16,
                                                 num_key_value_heads=2, causal=True)
    x = np.random.rand(2, 32, 64).astype("float32")
    y = layer(x, x)  # (2, 32, 64)
    ```
    """

    def __init__(
        self,
        num_heads,
        key_dim,
        value_dim=None,
        num_key_value_heads=None,
        use_bias=True,
        output_shape=None,
        causal=False,
        window_size=None,
        kernel_initializer="glorot_uniform",
        bias_initializer="zeros",
        **kwargs,
    ):
        super().__init__(**kwargs)
        for name, val in (("num_heads", num_heads), ("key_dim", key_dim)):
            if not _positive_int(val):
                raise ValueError(f"{name} must be a positive integer; got {val!r}.")
        if value_dim is not None and not _positive_int(value_dim):
            raise ValueError(f"value_dim must be a positive integer or None; got {value_dim!r}.")
        if num_key_value_heads is None:
            num_key_value_heads = num_heads
        if not _positive_int(num_key_value_heads) or num_heads % num_key_value_heads:
            raise ValueError(
                "num_key_value_heads must be a positive divisor of num_heads="
                f"{num_heads}; got {num_key_value_heads!r}."
            )
        if output_shape is not None and not _positive_int(output_shape):
            raise ValueError(
                f"output_shape must be a positive integer or None; got {output_shape!r}."
            )
        if not isinstance(causal, bool):
            raise ValueError(f"causal must be True or False; got {causal!r}.")
        validate_window_size(window_size, causal)
        self.num_heads = num_heads
        self.key_dim = key_dim
        self.value_dim = value_dim or key_dim
        self.num_key_value_heads = num_key_value_heads
        self.use_bias = bool(use_bias)
        self.output_shape_ = output_shape
        self.causal = bool(causal)
        self.window_size = None if window_size is None else int(window_size)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.bias_initializer = keras.initializers.get(bias_initializer)

    def _dense(self, name, equation, shape, bias_axes):
        kernel_initializer = self.kernel_initializer
        if isinstance(kernel_initializer, keras.initializers.Initializer):
            # A fresh initializer per projection (as keras's MultiHeadAttention does), so a
            # seeded initializer does not give the four kernels the same values.
            kernel_initializer = kernel_initializer.__class__.from_config(
                kernel_initializer.get_config()
            )
        return layers.EinsumDense(
            equation,
            output_shape=shape,
            bias_axes=bias_axes if self.use_bias else None,
            kernel_initializer=kernel_initializer,
            bias_initializer=self.bias_initializer,
            dtype=self.dtype_policy,
            name=name,
        )

    def _check_shapes(self, query_shape, value_shape, key_shape=None, mask_shape=None):
        """The same ValueError on every backend, before any projection or einsum runs."""
        query_shape, value_shape = tuple(query_shape), tuple(value_shape)
        key_given = key_shape is not None
        key_shape = tuple(key_shape) if key_given else value_shape
        for name, shape in (("query", query_shape), ("value", value_shape), ("key", key_shape)):
            if len(shape) != 3:
                raise ValueError(
                    f"`{name}` must have shape (batch, seq_len, dim); got shape {shape} "
                    f"(rank {len(shape)})."
                )

        def differ(a, b):
            return a is not None and b is not None and a != b

        for name, shape in (("value", value_shape), ("key", key_shape)):
            if differ(shape[0], query_shape[0]):
                raise ValueError(
                    f"`{name}` has batch size {shape[0]} but `query` has {query_shape[0]}; "
                    f"got shapes query={query_shape}, {name}={shape}."
                )
        if differ(key_shape[1], value_shape[1]):
            raise ValueError(
                f"`key` and `value` must have the same length; got key length {key_shape[1]} "
                f"and value length {value_shape[1]}."
            )
        if self.causal and differ(query_shape[1], key_shape[1]):
            raise ValueError(
                f"causal=True needs equal query and key/value lengths; got query length "
                f"{query_shape[1]} and key/value length {key_shape[1]}."
            )
        if self.built:
            checks = [("query", query_shape, self.query_dense)]
            checks.append(("value", value_shape, self.value_dense))
            if key_given:
                checks.append(("key", key_shape, self.key_dense))
            for name, shape, dense in checks:
                expected = dense.kernel.shape[0]
                if differ(shape[-1], expected):
                    raise ValueError(
                        f"`{name}` has last dimension {shape[-1]} but the layer was built for "
                        f"{expected}; got shape {shape}."
                    )
        if mask_shape is not None:
            mask_shape = tuple(mask_shape)
            batch, q_len, kv_len = query_shape[0], query_shape[1], key_shape[1]
            if len(mask_shape) == 2:
                expected = (batch, kv_len)
            elif len(mask_shape) == 3:
                expected = (batch, q_len, kv_len)
            else:
                expected = None
            if expected is None or any(differ(a, b) for a, b in zip(mask_shape, expected)):
                raise ValueError(
                    "`attention_mask` must be a key padding mask (batch, kv_len) = "
                    f"{(batch, kv_len)} or a full mask (batch, q_len, kv_len) = "
                    f"{(batch, q_len, kv_len)}; got shape {mask_shape}."
                )

    def build(self, query_shape, value_shape, key_shape=None):
        self._check_shapes(query_shape, value_shape, key_shape)
        key_shape = value_shape if key_shape is None else key_shape
        out_dim = self.output_shape_ or query_shape[-1]
        h, hk = self.num_heads, self.num_key_value_heads
        self.query_dense = self._dense("query", "abc,cde->abde", (None, h, self.key_dim), "de")
        self.query_dense.build(query_shape)
        self.key_dense = self._dense("key", "abc,cde->abde", (None, hk, self.key_dim), "de")
        self.key_dense.build(key_shape)
        self.value_dense = self._dense("value", "abc,cde->abde", (None, hk, self.value_dim), "de")
        self.value_dense.build(value_shape)
        self.output_dense = self._dense("attention_output", "abcd,cde->abe", (None, out_dim), "e")
        self.output_dense.build(tuple(query_shape[:-1]) + (h, self.value_dim))
        self.built = True

    def call(self, query, value, key=None, attention_mask=None, segment_ids=None):
        self._check_shapes(
            query.shape,
            value.shape,
            None if key is None else key.shape,
            None if attention_mask is None else attention_mask.shape,
        )
        if segment_ids is not None:
            kv_len = (value if key is None else key).shape[1]
            validate_segment_ids(segment_ids, query.shape[0], query.shape[1], kv_len)
            check_segment_layout(segment_ids)
        key = value if key is None else key
        q = self.query_dense(query)
        k = self.key_dense(key)
        v = self.value_dense(value)
        if attention_mask is not None:
            attention_mask = ops.cast(attention_mask, "bool")
        out = ring_attention(
            q,
            k,
            v,
            key_mask=attention_mask,
            causal=self.causal,
            segment_ids=segment_ids,
            window_size=self.window_size,
        )
        return self.output_dense(out)

    def compute_output_shape(self, query_shape, value_shape, key_shape=None):
        return tuple(query_shape[:-1]) + (self.output_shape_ or query_shape[-1],)

    def compute_output_spec(self, query, value, key=None, attention_mask=None, segment_ids=None):
        shape = self.compute_output_shape(query.shape, value.shape)
        return keras.KerasTensor(shape, dtype=self.compute_dtype)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "num_heads": self.num_heads,
                "key_dim": self.key_dim,
                "value_dim": self.value_dim,
                "num_key_value_heads": self.num_key_value_heads,
                "use_bias": self.use_bias,
                "output_shape": self.output_shape_,
                "causal": self.causal,
                "window_size": self.window_size,
                "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
                "bias_initializer": keras.initializers.serialize(self.bias_initializer),
            }
        )
        return config
