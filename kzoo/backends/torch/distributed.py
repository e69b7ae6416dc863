"""torch.distributed under ``kzoo.distribution.ContextParallel``: one process per device.

keras 3.15 has no distribution API on torch (``keras.distribution`` meshes construct, but
nothing shards, communicates or reduces). Here kzoo runs the mesh on torch's own runtime:
every process (started by ``torchrun``) is one device of the mesh and holds its shard of the
data; the mesh's axes become process groups.

* ``initialize``: the default process group from torchrun's environment (``RANK``,
  ``WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT``, ``LOCAL_RANK``), NCCL on GPUs and gloo on
  CPU; each GPU process computes on ``cuda:LOCAL_RANK``.
* ``list_devices``: one device name per process, ``"cpu:r"`` or ``"cuda:r"`` for global rank
  ``r`` - what a ``keras.distribution.DeviceMesh`` is built from.
* :class:`ProcessMesh`: this process's coordinates in a mesh and the process groups along
  its sequence and batch axes (created once per set of ranks, by every process in the same
  order, as torch requires).

The attention (``cp_ring.py``, ``cp_all_to_all.py``) takes a ``ProcessMesh``;
``cp_training.py`` extends it to run keras training and builds it (``make_runtime``).
"""

import datetime
import os

import numpy as np
import torch
import torch.distributed as dist

BACKENDS = ("gloo", "nccl")
_TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
# Process groups by (axis kind, ranks): new_group is a collective call; a ContextParallel built
# again over the same mesh reuses its groups.
_GROUPS = {}


def launched_by_torchrun():
    return all(name in os.environ for name in _TORCHRUN_VARIABLES)


def initialize(backend=None, timeout_s=None):
    """Start torch.distributed from torchrun's environment, once. Returns the world size.

    ``backend`` is ``"nccl"`` (GPUs), ``"gloo"`` (CPU) or ``None`` (NCCL when CUDA is
    available, else gloo). Without torchrun's variables (a plain ``python script.py``) nothing
    starts and the world has one process.

    Raises:
        ValueError: for an unknown backend, or NCCL on a machine without CUDA GPUs.
    """
    if backend is not None and backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS} or None; got {backend!r}.")
    cuda = torch.cuda.is_available()
    if backend == "nccl" and not cuda:
        raise ValueError(
            "backend='nccl' needs CUDA GPUs, and this machine has none (torch.cuda.is_available() "
            "is False); use backend='gloo' (or None) to run the processes on CPU."
        )
    if dist.is_initialized():
        running = dist.get_backend()
        if backend is not None and running != backend:
            raise ValueError(
                f"torch.distributed is already initialised with backend {running!r}; "
                f"got backend={backend!r}."
            )
        return dist.get_world_size()
    if not launched_by_torchrun():
        return 1
    backend = backend or ("nccl" if cuda else "gloo")
    if backend == "nccl":
        # One GPU per process: keras's torch backend computes on the current CUDA device.
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    kwargs = {}
    if timeout_s is not None:
        kwargs["timeout"] = datetime.timedelta(seconds=float(timeout_s))
    dist.init_process_group(backend=backend, **kwargs)
    return dist.get_world_size()


def _device_type():
    if dist.is_initialized():
        return "cuda" if dist.get_backend() == "nccl" else "cpu"
    return "cuda" if torch.cuda.is_available() else "cpu"


def list_devices(device_type=None):
    """One device per process: ``["cpu:0", "cpu:1", ...]`` (or ``cuda:``) by global rank."""
    world = initialize()
    kind = _device_type()
    if device_type is not None and device_type.lower().replace("gpu", "cuda") != kind:
        return []
    return [f"{kind}:{r}" for r in range(world)]


def _rank_of(device):
    name = str(device)
    kind, _, index = name.rpartition(":")
    if kind.lower() not in ("cpu", "cuda", "gpu") or not index.isdigit():
        raise ValueError(
            "On torch each device of the mesh is one process, named 'cpu:<rank>' or "
            f"'cuda:<rank>' (kzoo.distribution.list_devices() lists them); got {name!r}."
        )
    return int(index)


def _group(kind, ranks):
    """The process group of ``ranks`` (created on first use; every process must ask for the
    groups of a mesh in the same order)."""
    key = (kind, tuple(ranks))
    if key not in _GROUPS:
        _GROUPS[key] = dist.new_group(list(ranks)) if len(ranks) > 1 else None
    return _GROUPS[key]


class ProcessMesh:
    """This process's place in a device mesh whose devices are torch.distributed processes.

    Attributes:
        rank, world_size: global rank and number of processes.
        ranks: the mesh as an integer array of global ranks.
        context_ranks, context_index, context_size, context_group: the processes sharing this
            process's sequence (along the sequence axis), this process's position among them
            (its sequence shard) and their group.
        batch_ranks, batch_index, batch_shards, batch_group: the same along the batch axis
            (one process and no group without a batch axis).
        device: the torch device this process computes on.
    """

    def __init__(self, devices, axis_names, sequence_axis, batch_axis=None):
        ranks = np.vectorize(_rank_of, otypes=[np.int64])(np.asarray(devices, dtype=object))
        world = dist.get_world_size()
        if ranks.size != world or sorted(ranks.ravel().tolist()) != list(range(world)):
            raise ValueError(
                f"The device mesh has {ranks.size} devices ({ranks.ravel().tolist()}) but "
                f"torch.distributed runs {world} processes: on torch every device of the mesh is "
                f"one process. Launch {ranks.size} processes (`torchrun --nproc-per-node "
                f"{ranks.size} script.py`) or build the mesh from "
                "kzoo.distribution.list_devices()."
            )
        self.rank = dist.get_rank()
        self.world_size = world
        self.ranks = ranks
        self.axis_names = list(axis_names)
        self.sequence_axis = sequence_axis
        self.batch_axis = batch_axis
        self.backend = dist.get_backend()
        self.device = (
            torch.device("cuda", torch.cuda.current_device())
            if self.backend == "nccl"
            else torch.device("cpu")
        )
        where = tuple(int(i) for i in np.argwhere(ranks == self.rank)[0])
        self.context_ranks, self.context_index, self.context_group = self._line(
            "context", sequence_axis, where
        )
        if batch_axis is None:
            self.batch_ranks, self.batch_index, self.batch_group = [self.rank], 0, None
        else:
            self.batch_ranks, self.batch_index, self.batch_group = self._line(
                "batch", batch_axis, where
            )
        self.context_size = len(self.context_ranks)
        # A collective orders its members by group rank (ascending global ranks), which is not
        # the order along the axis when the mesh's devices were given out of order.
        self.context_group_order = (
            [self.context_ranks.index(r) for r in dist.get_process_group_ranks(self.context_group)]
            if self.context_group is not None
            else [0]
        )
        self.batch_shards = len(self.batch_ranks)

    def _line(self, kind, axis_name, where):
        """The ranks along ``axis_name`` through this process, its index there, and the group.

        Every line along the axis gets its group, in the same order on every process."""
        axis = self.axis_names.index(axis_name)
        lines = np.moveaxis(self.ranks, axis, -1).reshape(-1, self.ranks.shape[axis])
        mine = None
        for line in lines:
            group = _group(kind, line.tolist())
            if self.rank in line:
                mine = (line.tolist(), int(where[axis]), group)
        return mine

    def context_peer(self, shift):
        """Global rank of the process ``shift`` places on along the sequence ring."""
        return self.context_ranks[(self.context_index + shift) % self.context_size]

    def __repr__(self):
        return (
            f"<ProcessMesh rank={self.rank}/{self.world_size} backend={self.backend} "
            f"context {self.context_index}/{self.context_size} "
            f"batch {self.batch_index}/{self.batch_shards}>"
        )


def exchange(sends, recvs, group, tag=0):
    """Post sends ``[(tensor, global rank)]`` and receives ``[(buffer, global rank)]`` at once
    (``batch_isend_irecv``); returns the requests to wait on."""
    ops = [dist.P2POp(dist.isend, t, peer, group, tag) for t, peer in sends]
    ops += [dist.P2POp(dist.irecv, t, peer, group, tag) for t, peer in recvs]
    return dist.batch_isend_irecv(ops) if ops else []


def wait(requests):
    for request in requests:
        request.wait()
