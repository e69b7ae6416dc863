"""DETR's sine position embedding of a feature map, computed from its padding mask.

For every valid position the row and column indices are counted from 1 (a cumulative sum of the
mask), divided by the image's unpadded extent (plus 1e-6) and multiplied by ``scale`` (2π), so
each image's positions span the same range whatever the padding around it. Each axis then gets
``num_features`` channels, ``sin(p / T**(2i/n))`` and ``cos(p / T**(2i/n))`` interleaved; the
y features come first, then the x features (DETR's and HuggingFace's order).
"""

import math

import keras
from keras import ops

from kzoo.ops.shapes import arange


@keras.saving.register_keras_serializable(package="kzoo")
class SinePositionEmbedding(keras.layers.Layer):
    """Sine position embedding of a (B, h, w) feature mask, normalised by the unpadded extent.

    Args:
        num_features: Features per axis; the output has ``2 * num_features`` channels (128 for
            DETR's d_model 256). Must be even.
        temperature: The base of the frequencies (10000).
        scale: The range positions are normalised to (2π).
        epsilon: Added to the extent before dividing (1e-6, as DETR).

    Call arguments:
        valid_mask: (B, h, w), 1 (or True) for valid positions, 0 for padding.

    Returns (B, h, w, 2 * num_features) in the layer's compute dtype.

    Example:

    ```python
    pos = SinePositionEmbedding(64)(np.ones((2, 5, 7), "float32"))  # (2, 5, 7, 128)
    ```
    """

    def __init__(
        self, num_features=128, temperature=10000.0, scale=2 * math.pi, epsilon=1e-6, **kwargs
    ):
        super().__init__(**kwargs)
        if not isinstance(num_features, int) or num_features <= 0 or num_features % 2:
            raise ValueError(f"num_features must be a positive even int; got {num_features!r}.")
        if not isinstance(temperature, (int, float)) or temperature <= 0:
            raise ValueError(f"temperature must be a positive number; got {temperature!r}.")
        if not isinstance(scale, (int, float)) or scale <= 0:
            raise ValueError(f"scale must be a positive number; got {scale!r}.")
        self.num_features = num_features
        self.temperature = float(temperature)
        self.scale = float(scale)
        self.epsilon = float(epsilon)

    def build(self, valid_mask_shape):
        self.built = True

    def call(self, valid_mask):
        dtype = self.compute_dtype
        mask = ops.cast(valid_mask, dtype)
        y = ops.cumsum(mask, axis=1)
        x = ops.cumsum(mask, axis=2)
        y = y / (y[:, -1:, :] + self.epsilon) * self.scale
        x = x / (x[:, :, -1:] + self.epsilon) * self.scale
        # dim_t[i] = T ** (2 * floor(i / 2) / n): sin and cos of one pair share a frequency.
        exponent = ops.cast(2 * (arange(self.num_features) // 2), dtype) / self.num_features
        dim_t = ops.power(ops.cast(self.temperature, dtype), exponent)
        return ops.concatenate([self._encode(y, dim_t), self._encode(x, dim_t)], axis=-1)

    def _encode(self, positions, dim_t):
        # expand_dims, not [..., None]: TF Lite has no builtin for new-axis slices of tensors
        # of unknown size.
        angles = ops.expand_dims(positions, -1) / dim_t
        sin = ops.sin(angles[..., 0::2])
        cos = ops.cos(angles[..., 1::2])
        # Interleave: sin_0, cos_1, sin_2, cos_3, ...
        stacked = ops.stack([sin, cos], axis=-1)
        shape = ops.shape(positions)
        return ops.reshape(stacked, (shape[0], shape[1], shape[2], self.num_features))

    def compute_output_shape(self, valid_mask_shape):
        return (*valid_mask_shape, 2 * self.num_features)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "num_features": self.num_features,
                "temperature": self.temperature,
                "scale": self.scale,
                "epsilon": self.epsilon,
            }
        )
        return config
