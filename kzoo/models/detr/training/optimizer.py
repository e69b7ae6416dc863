"""AdamW with per-variable learning-rate scales (DETR trains its backbone at 1/10 the rate).

Keras 3 has one learning rate per optimizer and no parameter groups. Scaling the backbone's
gradients instead would not work: Adam's update is invariant to the gradient's scale. So this
optimizer multiplies the learning rate itself, per variable, by the first scale whose regular
expression matches the variable's path (``"backbone/"`` → 0.1 gives DETR's 1e-5 next to 1e-4).
Weight decay is decoupled and uses the scaled rate, as torch's AdamW does per parameter group.

Global gradient clipping measures the norm without overflowing: keras squares the gradients in
float32, so a step whose gradients reach ~1e19 (a LayerNorm over a constant input, e.g. a blank
image at initialisation) gets an infinite norm and keras turns every weight into NaN. Here the
gradients are divided by their largest magnitude before squaring, so such a step is clipped to
norm ``global_clipnorm`` like any other; NaN or infinite gradients still give NaN, for
``TerminateOnNaN`` to stop the run.

It subclasses ``keras.optimizers.Adam``, whose generic update runs ``update_step`` once per
variable (keras's own multi-tensor torch update serves only its built-in classes). On torch that
loop cost a fifth of DETR-R50's training step, so the update and the clipping go through the
dispatch (ops ``scaled_adamw_update`` and ``clip_by_global_norm``): torch takes a multi-tensor
version (``kzoo/backends/torch/scaled_adamw.py``), the other backends keras's path, which they
compile into the training step anyway.
"""

import re

import keras
from keras import ops

from kzoo.backends import dispatch
from kzoo.backends.common.scaled_adamw import (  # noqa: F401
    clip_by_global_norm,
    global_norm,
    update_portable,
)
from kzoo.models.detr import recipe

UPDATE_OP = "scaled_adamw_update"
CLIP_OP = "clip_by_global_norm"


@keras.saving.register_keras_serializable(package="kzoo")
class ScaledAdamW(keras.optimizers.Adam):
    """AdamW whose learning rate (and weight decay) is scaled per variable by path pattern.

    Args:
        learning_rate: Base learning rate (a float or a schedule).
        weight_decay: Decoupled weight decay, applied as ``v -= v * weight_decay * lr_v``.
        learning_rate_scales: Dict of regular expression → scale; a variable takes the scale of
            the first pattern that ``re.search``-matches its ``path``, else 1.
        **kwargs: Everything ``keras.optimizers.Adam`` takes (``beta_1``, ``global_clipnorm``,
            ...).

    Example:

    ```python
    optimizer = ScaledAdamW(1e-4, weight_decay=1e-4, learning_rate_scales={"backbone/": 0.1},
                            global_clipnorm=0.1)
    ```
    """

    def __init__(
        self,
        learning_rate=recipe.LEARNING_RATE,
        weight_decay=recipe.WEIGHT_DECAY,
        learning_rate_scales=None,
        **kwargs,
    ):
        if weight_decay is None:
            weight_decay = 0.0
        if (
            isinstance(weight_decay, bool)
            or not isinstance(weight_decay, (int, float))
            or (weight_decay < 0)
        ):
            raise ValueError(f"weight_decay must be a float >= 0; got {weight_decay!r}.")
        scales = dict(learning_rate_scales or {})
        for pattern, scale in scales.items():
            if not isinstance(pattern, str):
                raise ValueError(
                    f"learning_rate_scales keys must be regular expressions; got {pattern!r}."
                )
            try:
                re.compile(pattern)
            except re.error as e:
                raise ValueError(
                    f"learning_rate_scales key {pattern!r} is not a regular expression: {e}"
                ) from None
            if isinstance(scale, bool) or not isinstance(scale, (int, float)) or scale < 0:
                raise ValueError(
                    f"learning_rate_scales[{pattern!r}] must be a number >= 0; got {scale!r}."
                )
        super().__init__(learning_rate=learning_rate, weight_decay=None, **kwargs)
        self.decoupled_weight_decay = float(weight_decay)
        self.learning_rate_scales = {k: float(v) for k, v in scales.items()}

    def scale_for(self, path):
        """The learning-rate scale for a variable path."""
        for pattern, scale in self.learning_rate_scales.items():
            if re.search(pattern, path):
                return scale
        return 1.0

    def build(self, variables):
        if self.built:
            return
        super().build(variables)
        # Indexed like the optimizer's slots: update_step only sees the backend variable, whose
        # name (on TensorFlow) is not the keras path.
        self._variable_scales = [self.scale_for(v.path) for v in variables]

    def update_step(self, gradient, variable, learning_rate):
        scale = self._variable_scales[self._get_variable_index(variable)]
        lr = ops.cast(learning_rate, variable.dtype) * scale
        if self.decoupled_weight_decay:
            self.assign_sub(variable, variable * (lr * self.decoupled_weight_decay))
        super().update_step(gradient, variable, lr)

    def _backend_update_step(self, grads, trainable_variables, learning_rate):
        dispatch.select(UPDATE_OP).load()(self, grads, trainable_variables, learning_rate)

    def _clip_gradients(self, grads):
        if self.global_clipnorm and self.global_clipnorm > 0:
            return dispatch.select(CLIP_OP).load()(grads, self.global_clipnorm)
        return super()._clip_gradients(grads)

    def get_config(self):
        config = super().get_config()
        config["weight_decay"] = self.decoupled_weight_decay
        config["learning_rate_scales"] = dict(self.learning_rate_scales)
        return config


dispatch.register(
    UPDATE_OP,
    dispatch.Implementation(
        name="portable",
        target="kzoo.backends.common.scaled_adamw:update_portable",
        description="keras's update_step per variable (compiled into the step on JAX/TF)",
    ),
    fallback=True,
)
dispatch.register(
    CLIP_OP,
    dispatch.Implementation(
        name="portable",
        target="kzoo.backends.common.scaled_adamw:clip_by_global_norm",
        description="keras.ops: norms scaled by the largest magnitude, no float32 overflow",
    ),
    fallback=True,
)
