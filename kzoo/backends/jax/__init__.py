"""JAX implementations, registered with the dispatch by dotted path (JAX is not imported here)."""

from kzoo.backends.dispatch import Implementation, register

BACKEND = ("jax",)
KERNEL_DTYPES = ("float16", "bfloat16", "float32")

register(
    "device_platform",
    Implementation(
        name="jax",
        target="kzoo.backends.jax.device:platform",
        backends=BACKEND,
        optional=False,
        description="jax.default_backend()",
    ),
)
register(
    "tensor_platform",
    Implementation(
        name="jax",
        target="kzoo.backends.jax.device:tensor_platform",
        backends=BACKEND,
        optional=False,
        description="the platform of the array's devices",
    ),
)
register(
    "host_call",
    Implementation(
        name="jax-pure-callback",
        target="kzoo.backends.jax.host_call:host_call",
        backends=BACKEND,
        optional=False,
        description="direct call when eager, jax.pure_callback when traced",
    ),
)
register(
    "context_parallel_ring",
    Implementation(
        name="jax-shard-map",
        target="kzoo.backends.jax.ring_attention:ring_attention",
        backends=BACKEND,
        optional=False,
        description="shard_map + ppermute ring, zigzag schedule, custom_vjp backward",
    ),
)
register(
    "layer_norm",
    Implementation(
        name="pallas",
        target="kzoo.backends.jax.layer_norm_pallas:layer_norm",
        backends=BACKEND,
        platforms=("gpu",),
        dtypes=KERNEL_DTYPES,
        supports="kzoo.ops.layer_norm:kernel_supports",
        priority=10,
        description="Pallas fused forward/backward under jax.custom_vjp, fp32 statistics",
    ),
)
register(
    "detr_conv_bn",
    Implementation(
        name="xla-scale-after",
        target="kzoo.backends.jax.detr_backbone:conv_bn_scale_after",
        backends=BACKEND,
        description="keras.ops: conv, then scale and shift (fused by XLA into the ReLU)",
    ),
)
register(
    "detr_stem_pool",
    Implementation(
        name="slices",
        target="kzoo.backends.jax.detr_backbone:max_pool_by_slices",
        backends=BACKEND,
        description="maximum of nine strided slices (XLA's CPU reduce_window is ~8x slower)",
    ),
)
register(
    "conv_lstm_forward",
    Implementation(
        name="jax-per-step-input-conv",
        target="kzoo.layers.conv_lstm_portable:conv_lstm_forward_per_step",
        backends=BACKEND,
        supports="kzoo.backends.jax.conv_lstm:supports_symbolic_batch_or_time",
        priority=10,
        # Exporting to ONNX needs it whatever KZOO_KERNELS says.
        optional=False,
        description="symbolic batch/time only (jax2tf, jax2onnx exports): input conv in the scan",
    ),
)
register(
    "export_artifact",
    Implementation(
        name="jax",
        target="kzoo.backends.jax.export:export_artifact",
        backends=BACKEND,
        optional=False,
        description="shared symbolic dimensions (jax2tf), ONNX through jax2onnx",
    ),
)
register(
    "export_fixed_dims",
    Implementation(
        name="jax",
        target="kzoo.backends.jax.export:fixed_dims",
        backends=BACKEND,
        optional=False,
        description="ONNX: dimensions the model merges in a reshape (jax2onnx)",
    ),
)
