"""Backend-specific kernels behind a small dispatch (see ``kzoo.kernels.dispatch``)."""

from kzoo.kernels.dispatch import Implementation, describe, register, select

__all__ = ["Implementation", "describe", "register", "select"]
