"""Which backend keras runs on, checked before keras is imported.

kzoo never picks a backend: ``KERAS_BACKEND`` (or ``~/.keras/keras.json``) decides. This module
only turns a misspelt backend into a clear error instead of keras's import-time traceback.
"""

import os

KNOWN_BACKENDS = ("jax", "tensorflow", "torch", "numpy", "openvino")


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

    backend = backend or backend_name()
    module = {"tensorflow": "tensorflow", "jax": "jax", "torch": "torch", "numpy": "numpy"}.get(
        backend
    )
    if module is None:
        return "unknown"
    return getattr(importlib.import_module(module), "__version__", "unknown")


def platform():
    """The platform keras computes on for this backend: ``"gpu"``, ``"tpu"`` or ``"cpu"``."""
    backend = backend_name()
    if backend == "jax":
        import jax

        return jax.default_backend()
    if backend == "torch":
        import torch

        return "gpu" if torch.cuda.is_available() else "cpu"
    if backend == "tensorflow":
        import tensorflow as tf

        return "gpu" if tf.config.list_logical_devices("GPU") else "cpu"
    return "cpu"


def devices():
    """Names of the devices the backend can see."""
    from keras import distribution

    try:
        return list(distribution.list_devices())
    except (AttributeError, TypeError, RuntimeError):
        # keras.distribution is JAX-only in keras 3.15; ask the framework directly elsewhere.
        backend = backend_name()
        if backend == "torch":
            import torch

            found = ["cpu:0"]
            found += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
            return found
        if backend == "tensorflow":
            import tensorflow as tf

            return [d.name for d in tf.config.list_logical_devices()]
        return ["cpu:0"]
