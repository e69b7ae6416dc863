"""TensorFlow implementations, registered by dotted path (TensorFlow is not imported here)."""

from kzoo.backends.dispatch import Implementation, register

BACKEND = ("tensorflow",)

register(
    "device_platform",
    Implementation(
        name="tensorflow",
        target="kzoo.backends.tensorflow.device:platform",
        backends=BACKEND,
        optional=False,
        description="GPU when TensorFlow lists one",
    ),
)
register(
    "device_list",
    Implementation(
        name="tensorflow",
        target="kzoo.backends.tensorflow.device:devices",
        backends=BACKEND,
        optional=False,
        description="tf.config.list_logical_devices()",
    ),
)
register(
    "host_call",
    Implementation(
        name="tf-numpy-function",
        target="kzoo.backends.tensorflow.host_call:host_call",
        backends=BACKEND,
        optional=False,
        description="direct call when eager, tf.numpy_function in graphs",
    ),
)
register(
    "host_callable",
    Implementation(
        name="tensorflow",
        target="kzoo.backends.tensorflow.host_call:can_call_host",
        backends=BACKEND,
        optional=False,
        description="False inside functions XLA compiles (jit_compile=True)",
    ),
)
register(
    "conv_lstm_forward",
    Implementation(
        name="tensorflow-custom-gradient",
        target="kzoo.backends.tensorflow.conv_lstm:conv_lstm_forward",
        backends=BACKEND,
        supports="kzoo.backends.tensorflow.conv_lstm:supports_training",
        priority=10,
        description="training=True: hoisted input conv, while_loop, hand-written backward pass",
    ),
)
register(
    "conv_lstm_forward",
    Implementation(
        name="tensorflow-inference",
        target="kzoo.backends.tensorflow.conv_lstm:conv_lstm_forward_inference",
        backends=BACKEND,
        supports="kzoo.backends.tensorflow.conv_lstm:supports_inference",
        priority=9,
        description="training=False: the same loop without tf.custom_gradient (exportable)",
    ),
)
register(
    "layer_norm",
    Implementation(
        name="tensorflow-folded",
        target="kzoo.backends.tensorflow.layer_norm:layer_norm",
        backends=BACKEND,
        supports="kzoo.backends.tensorflow.layer_norm:supports",
        priority=5,
        optional=False,
        description="tf.nn.moments with gamma folded into the scale (what keras's layer runs)",
    ),
)
register(
    "export_artifact",
    Implementation(
        name="tensorflow",
        target="kzoo.backends.tensorflow.export:export_artifact",
        backends=BACKEND,
        optional=False,
        description="keras's writers plus an Erfc conversion for tf2onnx",
    ),
)
register(
    "dot_product_attention",
    Implementation(
        name="tensorflow-query-blocks",
        target="kzoo.backends.tensorflow.attention:dot_product_attention",
        backends=BACKEND,
        platforms=("cpu",),
        dtypes=("float16", "bfloat16", "float32"),
        supports="kzoo.backends.common.attention:supports_static_queries",
        priority=10,
        description="CPU, >= 512 queries of known length: unrolled blocks of <= 128 queries",
    ),
)
