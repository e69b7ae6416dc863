"""The portable norms under ``jax.jit``: one compiled XLA computation per call, also when eager.

The portable norms' ``keras.ops`` compositions (``kzoo.backends.common.layer_norm``) are what XLA compiles under ``jax.jit``
anyway (where a nested ``jit`` is inlined); run eagerly, the same composition would dispatch
about ten ops one at a time, each through ``keras.ops``. Jitting it makes an eager call one
dispatch of a fused computation. Axes, epsilon and ``rms_scaling`` are static (hashable).
"""

import jax

from kzoo.backends.common.layer_norm import (
    add_layer_norm_portable,
    add_rms_norm_portable,
    layer_norm_portable,
    rms_norm_portable,
)

layer_norm = jax.jit(layer_norm_portable, static_argnums=(3, 4, 5))
rms_norm = jax.jit(rms_norm_portable, static_argnums=(2, 3))
add_layer_norm = jax.jit(add_layer_norm_portable, static_argnums=(4, 5))
add_rms_norm = jax.jit(add_rms_norm_portable, static_argnums=(3, 4))
