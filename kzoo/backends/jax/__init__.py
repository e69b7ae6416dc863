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
    "context_parallel_all_to_all",
    Implementation(
        name="jax-shard-map",
        target="kzoo.backends.jax.all_to_all_attention:all_to_all_attention",
        backends=BACKEND,
        optional=False,
        description="shard_map + two all_to_alls (sequence <-> heads), custom_vjp backward",
    ),
)
# One set of Pallas kernels (kzoo/backends/jax/layer_norm_pallas.py) serves the four norm ops.
for _op, _what in (
    ("layer_norm", "layer norm"),
    ("rms_norm", "RMS norm"),
    ("add_layer_norm", "residual add + layer norm in one pass"),
    ("add_rms_norm", "residual add + RMS norm in one pass"),
):
    register(
        _op,
        Implementation(
            name="pallas",
            target=f"kzoo.backends.jax.layer_norm_pallas:{_op}",
            backends=BACKEND,
            platforms=("gpu",),
            dtypes=KERNEL_DTYPES,
            supports="kzoo.ops.layer_norm:kernel_supports",
            priority=10,
            description=f"Pallas {_what} under jax.custom_vjp, fp32 statistics",
        ),
    )
    register(
        _op,
        Implementation(
            name="xla-jit",
            target=f"kzoo.backends.jax.layer_norm:{_op}",
            backends=BACKEND,
            priority=1,
            description="the keras.ops composition under jax.jit (one fused call when eager)",
        ),
    )
register(
    "dropout",
    Implementation(
        name="threefry-16bit-fields",
        target="kzoo.backends.jax.dropout:dropout_fields",
        backends=BACKEND,
        description="mask from 16-bit fields of threefry hashes: four elements per hash",
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
        name="jax-unrolled",
        target="kzoo.backends.jax.conv_lstm:conv_lstm_forward",
        backends=BACKEND,
        priority=10,
        description="hoisted input conv, time loop unrolled (XLA CPU convs in a while loop crawl)",
    ),
)
register(
    "conv_lstm_forward",
    Implementation(
        name="jax-per-step-input-conv",
        target="kzoo.backends.common.conv_lstm:conv_lstm_forward_per_step",
        backends=BACKEND,
        supports="kzoo.backends.jax.conv_lstm:supports_symbolic_batch_or_time",
        priority=20,
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
register(
    "dot_product_attention",
    Implementation(
        name="jax-query-blocks",
        target="kzoo.backends.jax.attention:dot_product_attention",
        backends=BACKEND,
        platforms=("cpu",),
        dtypes=KERNEL_DTYPES,
        supports="kzoo.backends.common.attention:supports_static",
        priority=10,
        description="CPU, >= 512 queries of known length: lax.map over blocks of <= 256 queries",
    ),
)
