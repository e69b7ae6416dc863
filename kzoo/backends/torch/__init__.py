"""torch implementations, registered by dotted path (torch and triton are not imported here)."""

from kzoo.backends.dispatch import Implementation, register

BACKEND = ("torch",)
KERNEL_DTYPES = ("float16", "bfloat16", "float32")

register(
    "device_platform",
    Implementation(
        name="torch",
        target="kzoo.backends.torch.device:platform",
        backends=BACKEND,
        optional=False,
        description="GPU when torch.cuda is available",
    ),
)
register(
    "device_list",
    Implementation(
        name="torch",
        target="kzoo.backends.torch.device:devices",
        backends=BACKEND,
        optional=False,
        description="the CPU and each CUDA device",
    ),
)
register(
    "tensor_platform",
    Implementation(
        name="torch",
        target="kzoo.backends.torch.device:tensor_platform",
        backends=BACKEND,
        optional=False,
        description="the tensor's own device (a CPU tensor on a CUDA machine is cpu)",
    ),
)
register(
    "host_call",
    Implementation(
        name="torch-eager",
        target="kzoo.backends.torch.host_call:host_call",
        backends=BACKEND,
        optional=False,
        description="tensors to numpy and back (keras runs torch eagerly)",
    ),
)
register(
    "context_parallel_ring",
    Implementation(
        name="torch-distributed-ring",
        target="kzoo.backends.torch.cp_ring:ring_attention",
        backends=BACKEND,
        optional=False,
        description="one process per device, batch_isend_irecv ring, reverse-ring backward",
    ),
)
register(
    "context_parallel_all_to_all",
    Implementation(
        name="torch-distributed-all-to-all",
        target="kzoo.backends.torch.cp_all_to_all:all_to_all_attention",
        backends=BACKEND,
        optional=False,
        description="one process per device, two all_to_all_single (sequence <-> heads)",
    ),
)
for _op, _target, _what in (
    ("distribution_initialize", "distributed:initialize", "torch.distributed from torchrun's env"),
    ("distribution_devices", "distributed:list_devices", "one device per process, by rank"),
    ("distribution_runtime", "cp_training:make_runtime", "process groups, data and gradients"),
):
    register(
        _op,
        Implementation(
            name="torch-distributed",
            target=f"kzoo.backends.torch.{_target}",
            backends=BACKEND,
            optional=False,
            description=_what,
        ),
    )
register(
    "conv_data_format",
    Implementation(
        name="torch-nchw",
        target="kzoo.backends.torch.layout:conv_data_format",
        backends=BACKEND,
        description="channels_first: torch's convolutions take NCHW without transposes",
    ),
)
register(
    "conv_lstm_forward",
    Implementation(
        name="torch-channels-first",
        target="kzoo.backends.torch.conv_lstm:conv_lstm_forward",
        backends=BACKEND,
        priority=10,
        description="hoisted input conv, state kept channels-first through the eager loop",
    ),
)
register(
    "conv_lstm_forward",
    Implementation(
        name="torch-traced",
        target="kzoo.backends.torch.conv_lstm:conv_lstm_forward",
        backends=BACKEND,
        supports="kzoo.backends.torch.conv_lstm_traced:supports_tracing",
        priority=20,
        # An export traced with KZOO_KERNELS=off needs the scripted loop all the same: keras's
        # scan runs a Python loop on torch, which the tracer would unroll.
        optional=False,
        description="graphs traced for export: the time loop as TorchScript (an ONNX Loop)",
    ),
)
register(
    "conv_lstm_export_fixed_dims",
    Implementation(
        name="torch-traced",
        target="kzoo.backends.torch.conv_lstm_traced:export_fixed_dims",
        backends=BACKEND,
        optional=False,
        description="the time axis, where an activation has no TorchScript form",
    ),
)
# One set of Triton kernels (kzoo/backends/torch/layer_norm_triton.py) serves the four norm ops.
for _op, _what in (
    ("layer_norm", ("layer norm", "F.layer_norm")),
    ("rms_norm", ("RMS norm", "F.rms_norm")),
    ("add_layer_norm", ("residual add + layer norm in one pass", "add, then F.layer_norm")),
    ("add_rms_norm", ("residual add + RMS norm in one pass", "add, then F.rms_norm")),
):
    register(
        _op,
        Implementation(
            name="triton",
            target=f"kzoo.backends.torch.layer_norm_triton:{_op}",
            backends=BACKEND,
            platforms=("gpu",),
            dtypes=KERNEL_DTYPES,
            supports="kzoo.ops.layer_norm:kernel_supports",
            priority=10,
            description=f"Triton {_what[0]}, fp32 statistics, deterministic dgamma/dbeta",
        ),
    )
    register(
        _op,
        Implementation(
            name="torch-native",
            target=f"kzoo.backends.torch.layer_norm:{_op}",
            backends=BACKEND,
            supports="kzoo.backends.torch.layer_norm:supports",
            priority=5,
            optional=False,
            description=f"{_what[1]} on trailing axes (what keras's own layer runs)",
        ),
    )
for _op, _fn, _what in (
    ("scaled_adamw_update", "update", "multi-tensor (_foreach) AdamW update, per scale group"),
    ("clip_by_global_norm", "clip_by_global_norm", "multi-tensor norms (_foreach_norm)"),
):
    register(
        _op,
        Implementation(
            name="torch-foreach",
            target=f"kzoo.backends.torch.scaled_adamw:{_fn}",
            backends=BACKEND,
            priority=5,
            optional=False,
            description=_what,
        ),
    )
register(
    "detr_conv_bn",
    Implementation(
        name="torch-fused",
        target="kzoo.backends.torch.detr_backbone:conv_bn",
        backends=BACKEND,
        description="F.conv2d with the frozen-BN shift as bias; folded kernel reused at inference",
    ),
)
register(
    "dense",
    Implementation(
        name="torch-addmm",
        target="kzoo.backends.torch.dense:dense",
        backends=BACKEND,
        description="torch.addmm: the bias added inside the matrix product",
    ),
)
register(
    "export_artifact",
    Implementation(
        name="torch",
        target="kzoo.backends.torch.export:export_artifact",
        backends=BACKEND,
        optional=False,
        description="keras's torch.onnx export, eager dimensions fixed in size",
    ),
)
register(
    "export_fixed_dims",
    Implementation(
        name="torch",
        target="kzoo.backends.torch.export:fixed_dims",
        backends=BACKEND,
        optional=False,
        description="dimensions eager Python code depends on (a traced run fixes them)",
    ),
)
