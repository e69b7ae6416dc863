"""``ScaledAdamW``'s update and global-norm clipping in keras.ops: the portable implementations.

``kzoo/models/detr/training/optimizer.py`` registers them as the fallbacks of ops
``scaled_adamw_update`` and ``clip_by_global_norm``; torch's multi-tensor version
(``kzoo/backends/torch/scaled_adamw.py``) falls back on them, so they live here, below both.
"""

import keras
from keras import ops


def global_norm(values):
    """The L2 norm of all ``values`` together, finite whenever every value is finite.

    Scaled by the largest magnitude first: squares of float32 gradients overflow above ~1.8e19.
    """
    values = [ops.cast(v, "float32") for v in values if v is not None]
    peak = ops.max(ops.stack([ops.max(ops.abs(v)) for v in values]))
    # An all-zero gradient has norm 0; dividing by 1 keeps it so.
    safe_peak = ops.where(peak > 0, peak, ops.ones_like(peak))
    total = ops.sum(ops.stack([ops.sum(ops.square(v / safe_peak)) for v in values]))
    return safe_peak * ops.sqrt(total)


def clip_by_global_norm(values, clip_norm):
    """``values`` scaled to global norm ``clip_norm`` when larger (keras's rule, no overflow)."""
    values = [None if v is None else ops.convert_to_tensor(v) for v in values]
    norm = global_norm(values)
    scale = ops.minimum(ops.cast(1.0, norm.dtype), clip_norm / ops.maximum(norm, 1e-30))
    # NaN or infinite gradients give a NaN scale, as in keras, so the step is visibly broken.
    scale = scale + (norm - norm)
    return [None if v is None else v * ops.cast(scale, v.dtype) for v in values]


def update_portable(optimizer, grads, variables, learning_rate):
    """keras's update for ``optimizer`` (a ``ScaledAdamW``): ``update_step`` per variable."""
    keras.optimizers.Adam._backend_update_step(optimizer, grads, variables, learning_rate)
