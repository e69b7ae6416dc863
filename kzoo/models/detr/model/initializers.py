"""Weight initialisers drawn with numpy on the host.

On JAX every distinct shape makes ``keras.random`` compile a new XLA program: building DETR's
ResNet-50 (dozens of kernel shapes) with keras' own ``HeNormal`` took minutes on a loaded 2-core
machine, seconds with these. The draws come from numpy's global generator when no seed is given,
so ``keras.utils.set_random_seed`` (which seeds numpy) still makes them reproducible.
"""

import math

import keras
import numpy as np

_MODES = ("fan_in", "fan_out", "fan_avg")
_DISTRIBUTIONS = ("normal", "uniform")


def _fans(shape):
    if len(shape) < 2:
        fan = shape[0] if shape else 1
        return fan, fan
    receptive = math.prod(shape[:-2])
    return shape[-2] * receptive, shape[-1] * receptive


@keras.saving.register_keras_serializable(package="kzoo")
class HostVarianceScaling(keras.initializers.Initializer):
    """Variance scaling (He, Glorot, ...) computed in numpy; fans as keras computes them.

    ``stddev = sqrt(scale / fan)`` for ``"normal"`` (a plain normal, as torch's
    ``kaiming_normal_``), ``limit = sqrt(3 * scale / fan)`` for ``"uniform"``.

    Args:
        scale: Positive scaling factor (2 for He/ReLU, 1 for Glorot with ``"fan_avg"``).
        mode: ``"fan_in"``, ``"fan_out"`` or ``"fan_avg"``.
        distribution: ``"normal"`` or ``"uniform"``.
        seed: Optional int; without one each call draws from numpy's global generator.

    Example:

    ```python
    kernel_initializer = HostVarianceScaling(2.0, "fan_out", "normal")  # torchvision's ResNet
    ```
    """

    def __init__(self, scale=1.0, mode="fan_avg", distribution="uniform", seed=None):
        if isinstance(scale, bool) or not isinstance(scale, (int, float)) or scale <= 0:
            raise ValueError(f"scale must be a positive number; got {scale!r}.")
        if mode not in _MODES:
            raise ValueError(f"mode must be one of {', '.join(_MODES)}; got {mode!r}.")
        if distribution not in _DISTRIBUTIONS:
            raise ValueError(
                f"distribution must be one of {', '.join(_DISTRIBUTIONS)}; got {distribution!r}."
            )
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise ValueError(f"seed must be an int or None; got {seed!r}.")
        self.scale = float(scale)
        self.mode = mode
        self.distribution = distribution
        self.seed = seed

    def __call__(self, shape, dtype=None):
        shape = tuple(int(s) for s in shape)
        fan_in, fan_out = _fans(shape)
        fan = {"fan_in": fan_in, "fan_out": fan_out, "fan_avg": (fan_in + fan_out) / 2}[self.mode]
        rng = np.random.default_rng(
            self.seed if self.seed is not None else np.random.randint(0, 2**31 - 1)
        )
        if self.distribution == "normal":
            values = rng.normal(0.0, math.sqrt(self.scale / max(1.0, fan)), size=shape)
        else:
            limit = math.sqrt(3.0 * self.scale / max(1.0, fan))
            values = rng.uniform(-limit, limit, size=shape)
        dtype = keras.backend.standardize_dtype(dtype or keras.config.floatx())
        return keras.ops.convert_to_tensor(values.astype(dtype), dtype=dtype)

    def get_config(self):
        return {
            "scale": self.scale,
            "mode": self.mode,
            "distribution": self.distribution,
            "seed": self.seed,
        }


@keras.saving.register_keras_serializable(package="kzoo")
class HostRandomNormal(keras.initializers.Initializer):
    """N(mean, stddev²) computed in numpy (see the module docstring).

    Example:

    ```python
    embeddings_initializer = HostRandomNormal(stddev=1.0)  # torch's nn.Embedding
    ```
    """

    def __init__(self, mean=0.0, stddev=1.0, seed=None):
        if isinstance(stddev, bool) or not isinstance(stddev, (int, float)) or stddev <= 0:
            raise ValueError(f"stddev must be a positive number; got {stddev!r}.")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise ValueError(f"seed must be an int or None; got {seed!r}.")
        self.mean = float(mean)
        self.stddev = float(stddev)
        self.seed = seed

    def __call__(self, shape, dtype=None):
        rng = np.random.default_rng(
            self.seed if self.seed is not None else np.random.randint(0, 2**31 - 1)
        )
        values = rng.normal(self.mean, self.stddev, size=tuple(int(s) for s in shape))
        dtype = keras.backend.standardize_dtype(dtype or keras.config.floatx())
        return keras.ops.convert_to_tensor(values.astype(dtype), dtype=dtype)

    def get_config(self):
        return {"mean": self.mean, "stddev": self.stddev, "seed": self.seed}


def he_normal_fan_out():
    """torchvision's ResNet convolution init (``kaiming_normal_(mode="fan_out")``)."""
    return HostVarianceScaling(2.0, "fan_out", "normal")


def glorot_uniform():
    """DETR's transformer init (``xavier_uniform_``)."""
    return HostVarianceScaling(1.0, "fan_avg", "uniform")


def standard_normal():
    """torch's ``nn.Embedding`` init, DETR's query embedding: N(0, 1)."""
    return HostRandomNormal(0.0, 1.0)
