"""Which backend keras runs on, on which devices; checked before keras is imported.

kzoo never picks a backend: ``KERAS_BACKEND`` (or ``~/.keras/keras.json``) decides. This module
turns a misspelt backend into a clear error instead of keras's import-time traceback, and asks
the backend's own package (through the dispatch) which platform and devices it computes on.
"""

import os

from kzoo.backends import dispatch

KNOWN_BACKENDS = ("jax", "tensorflow", "torch", "numpy", "openvino")
FRAMEWORK_MODULES = {"tensorflow": "tensorflow", "jax": "jax", "torch": "torch", "numpy": "numpy"}


def check_backend_env():
    """Raise a clear ``ValueError`` when ``KERAS_BACKEND`` names a backend keras does not know."""
    name = os.environ.get("KERAS_BACKEND")
    if name is not None and name not in KNOWN_BACKENDS:
        raise ValueError(
            f"KERAS_BACKEND={name!r} is not a backend keras knows; expected one of "
            f"{', '.join(KNOWN_BACKENDS)}."
        )


def backend_name():
    import keras

    return keras.backend.backend()


def framework_version(backend=None):
    """The version of the framework behind ``backend`` (imported only through keras)."""
    import importlib

    module = FRAMEWORK_MODULES.get(backend or backend_name())
    if module is None:
        return "unknown"
    return getattr(importlib.import_module(module), "__version__", "unknown")


def platform():
    """The platform keras computes on for this backend: ``"gpu"``, ``"tpu"`` or ``"cpu"``.

    Cached: the devices a process sees do not change while it runs.
    """
    return dispatch.current_platform(backend_name())


def devices():
    """Names of the devices the backend can see."""
    return dispatch.select("device_list", platform="any").load()()


def default_platform():
    return "cpu"


def default_tensor_platform(x):
    return platform()


# keras.distribution (DataParallel, ModelParallel) distributes on JAX only in keras 3.15: on
# torch it does not exist, and TensorFlow's prototype silently ignores the distribution.
DISTRIBUTION_BACKENDS = ("jax",)


def supports_distribution(backend=None):
    """Whether ``keras.distribution`` really distributes on ``backend`` (default: the current)."""
    return (backend or backend_name()) in DISTRIBUTION_BACKENDS


def keras_devices():
    """The devices ``keras.distribution`` lists (JAX), else the CPU alone."""
    from keras import distribution

    try:
        return list(distribution.list_devices())
    except (AttributeError, TypeError, RuntimeError):
        return ["cpu:0"]


def _register_fallbacks():
    here = "kzoo.backends.environment"
    dispatch.register(
        "device_platform",
        dispatch.Implementation("cpu", f"{here}:default_platform", description="the CPU"),
        fallback=True,
    )
    dispatch.register(
        "device_list",
        dispatch.Implementation("keras", f"{here}:keras_devices", description="keras.distribution"),
        fallback=True,
    )
    dispatch.register(
        "tensor_platform",
        dispatch.Implementation(
            "default", f"{here}:default_tensor_platform", description="platform()"
        ),
        fallback=True,
    )


_register_fallbacks()
