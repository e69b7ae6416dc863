"""torch's platform, devices, and the platform a tensor lives on."""

import torch


def platform():
    return "gpu" if torch.cuda.is_available() else "cpu"


def devices():
    return ["cpu:0"] + [f"cuda:{i}" for i in range(torch.cuda.device_count())]


def tensor_platform(x):
    """A torch tensor may sit on the CPU of a CUDA machine: its own device decides."""
    device = getattr(x, "device", None)
    if device is None:
        return platform()
    return "gpu" if device.type == "cuda" else device.type
