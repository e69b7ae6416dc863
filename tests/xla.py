"""XLA settings for the JAX processes that tests start themselves."""

import os


def flags_with_devices(count):
    """This process's ``XLA_FLAGS`` (tests/conftest.py's compile settings) with ``count``
    virtual CPU devices, for a child process: children compile the same programs as the test
    that compares with them, and at the tests' sizes compiling is most of their time."""
    kept = [f for f in os.environ.get("XLA_FLAGS", "").split() if "device_count" not in f]
    return " ".join([*kept, f"--xla_force_host_platform_device_count={count}"])
