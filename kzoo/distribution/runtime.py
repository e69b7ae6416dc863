"""The backend's multi-process runtime, as ``ContextParallel`` uses it.

On JAX, keras's distribution API runs the mesh: one process drives many devices, arrays are
global and XLA shards them. On torch, keras has no distribution API; kzoo runs the mesh on
``torch.distributed`` instead, one process per device (``kzoo/backends/torch/``): the dispatch
ops ``distribution_initialize``, ``distribution_devices`` and ``distribution_runtime`` give
this module the backend's pieces. TensorFlow has neither, and computes on one device.
"""

import numpy as np
from keras import distribution as kd

from kzoo.backends import dispatch


def _backend_piece(op):
    impl = dispatch.find(op, platform="any")
    return None if impl is None else impl.load()


def initialize(backend=None):
    """Start the backend's multi-process runtime when the script was launched as several
    processes; returns the number of processes (1 when there is nothing to start).

    On torch under ``torchrun`` this starts ``torch.distributed`` from torchrun's environment:
    ``backend="nccl"`` on GPUs, ``"gloo"`` on CPU, ``None`` picks (NCCL when CUDA is
    available). ``ContextParallel`` calls it itself, so a script launched by ``torchrun`` needs
    no call. On JAX, multi-process runs start with ``keras.distribution.initialize``; this
    does nothing there and returns 1.

    Raises:
        ValueError: for ``backend`` other than ``"nccl"``, ``"gloo"`` or ``None``, NCCL on a
            machine without CUDA GPUs, or a backend on JAX or TensorFlow.
    """
    start = _backend_piece("distribution_initialize")
    if start is None:
        if backend is not None:
            raise ValueError(
                "backend= chooses torch.distributed's backend ('nccl' or 'gloo'); this keras "
                f"backend has none to choose (got backend={backend!r})."
            )
        return 1
    return start(backend)


def list_devices(device_type=None):
    """The devices a mesh is built from: ``keras.distribution.list_devices()`` on JAX; on
    torch one device per process, ``["cpu:0", "cpu:1", ...]`` (``"cuda:r"`` on GPUs) for the
    global ranks ``r`` (starting torch.distributed under torchrun if needed).

    ``keras.distribution.DeviceMesh(shape, names, devices=kzoo.distribution.list_devices())``
    builds the same mesh on both backends.
    """
    devices = _backend_piece("distribution_devices")
    if devices is None:
        return kd.list_devices(device_type)
    return devices(device_type)


def process_runtime(device_mesh, sequence_axis, batch_axis):
    """The backend's per-process runtime for ``device_mesh`` (``None`` where arrays are global,
    as on JAX, or where there is no multi-process runtime)."""
    make = _backend_piece("distribution_runtime")
    if make is None:
        return None
    devices = np.asarray(device_mesh.devices, dtype=object)
    return make(devices, list(device_mesh.axis_names), sequence_axis, batch_axis)
