"""JAX's platform and the platform a JAX array lives on."""

import jax


def platform():
    return jax.default_backend()


def tensor_platform(x):
    """The platform holding ``x``; a tracer has none, so it gets the default platform."""
    devices = getattr(x, "devices", None)
    try:
        found = devices() if callable(devices) else None
    except Exception:  # noqa: BLE001 - tracers raise various errors when asked for devices.
        found = None
    if found:
        return next(iter(found)).platform
    return jax.default_backend()
