"""keras's ``fit``/``evaluate``/``predict``/``save`` across torch.distributed processes.

:class:`ProcessRuntime` is what ``kzoo.distribution.ContextParallel`` holds on torch (the
dispatch op ``distribution_runtime``), and what ``kzoo.distribution.DistributedTrainer`` asks
to run a model's training across the processes of the mesh:

* **Data.** With ``auto_shard_dataset=True`` every process passes the same global arrays
  (tokens in layout order) and takes its part: the rows of its batch coordinate out of every
  global batch (so the processes of one batch row of the mesh see the same rows, and together
  they see exactly the batches one process would) and the ``1 / CP`` slice of the sequence
  axis its sequence coordinate holds - the layout ``ContextParallel.get_data_layout`` gives
  on JAX (axis 0 over the batch axis, axis 1 over the sequence axis; rank-1 arrays by rows).
  With ``auto_shard_dataset=False`` each process feeds its own shard.
* **Start.** Every variable of the model and torch's random state (which shuffles the data)
  are broadcast from rank 0, so the replicas start equal and shuffle alike.
* **Gradients.** keras's torch ``train_step`` computes the local loss (a mean over the local
  tokens), runs ``backward`` and calls ``optimizer.apply``; during the step ``apply`` first
  averages every gradient over all processes (one flat all-reduce per dtype). The mean of the
  local means is the global mean, so the update is the one the whole batch gives on one
  device, on every process alike.
* **Metrics.** keras's metrics keep additive state (totals and counts); after each step every
  metric variable gets the sum over the processes of its change, so every process logs the
  numbers of the whole batch.
* **Checkpoints.** Rank 0 writes (to a temporary file in the same folder, then an atomic
  rename); the others wait for its verdict.
"""

import os

import keras
import numpy as np
import torch
import torch.distributed as dist

from kzoo.backends.torch.distributed import ProcessMesh, initialize

DEFAULT_BATCH_SIZE = 32  # keras's default for arrays


class ProcessRuntime(ProcessMesh):
    """A :class:`ProcessMesh` that also runs keras training across its processes."""

    # -----------------------------------------------------------------------------------------
    # Data.

    def _rows(self, num_rows, batch_size, name):
        """This process's rows of ``num_rows`` global rows batched by ``batch_size``."""
        parts = []
        for start in range(0, num_rows, batch_size):
            size = min(batch_size, num_rows - start)
            if size % self.batch_shards:
                raise ValueError(
                    f"{name}: each global batch is split over the {self.batch_shards} processes "
                    f"of the batch axis, but a batch holds {size} rows ({num_rows} rows in "
                    f"batches of {batch_size}). Use a batch size and a number of rows that "
                    f"divide by {self.batch_shards}."
                )
            local = size // self.batch_shards
            parts.append(np.arange(local) + start + self.batch_index * local)
        return np.concatenate(parts) if parts else np.zeros((0,), np.int64)

    def _shard(self, x, rows):
        if x is None:
            return None
        if not hasattr(x, "shape"):
            x = np.asarray(x)
        if isinstance(x, torch.Tensor):
            x = x[torch.as_tensor(rows, device=x.device)]
        else:
            x = np.asarray(x)[rows]
        if len(x.shape) < 2:
            return x
        seq = int(x.shape[1])
        cp = self.context_size
        if seq % (2 * cp):
            raise ValueError(
                f"Context parallelism over {cp} devices needs the sequence length to divide by "
                f"2 * CP = {2 * cp}; got an input of shape {tuple(x.shape)} (sequence length "
                f"{seq}). Pad the sequence (and mask the padding) to a multiple of {2 * cp}."
            )
        length = seq // cp
        return x[:, self.context_index * length : (self.context_index + 1) * length]

    def count_rows(self, data, name):
        """The number of rows of global arrays (refusing anything that is not an array)."""
        leaves = [leaf for leaf in keras.tree.flatten(data) if leaf is not None]
        for leaf in leaves:
            if not (isinstance(leaf, (np.ndarray, torch.Tensor, list, tuple)) or np.isscalar(leaf)):
                raise ValueError(
                    f"{name}: under context parallelism on torch with auto_shard_dataset=True "
                    "every process passes the same global arrays (numpy arrays or tensors) and "
                    f"kzoo takes each process's part; got {type(leaf).__name__}. Pass arrays, "
                    "or build ContextParallel(..., auto_shard_dataset=False) and feed each "
                    "process its own shard."
                )
        sizes = {int(np.shape(leaf)[0]) for leaf in leaves if np.ndim(leaf) >= 1}
        if len(sizes) > 1:
            raise ValueError(f"{name}: the arrays have different numbers of rows: {sorted(sizes)}.")
        return sizes.pop() if sizes else 0

    def shard_data(self, x, y=None, sample_weight=None, batch_size=None, name="data"):
        """This process's part of global arrays: ``(x, y, sample_weight, local batch size)``."""
        batch_size = DEFAULT_BATCH_SIZE if batch_size is None else int(batch_size)
        if batch_size % self.batch_shards:
            raise ValueError(
                f"batch_size={batch_size} is the global batch and must divide by the "
                f"{self.batch_shards} processes of the batch axis."
            )
        num_rows = self.count_rows((x, y, sample_weight), name)
        rows = self._rows(num_rows, batch_size, name)

        def shard(tree):
            if tree is None:
                return None
            return keras.tree.map_structure(lambda a: self._shard(a, rows), tree)

        return shard(x), shard(y), shard(sample_weight), batch_size // self.batch_shards

    def gather_predictions(self, outputs, num_rows, batch_size):
        """Inverse of ``shard_data`` for ``predict``'s numpy outputs: the global arrays, on every
        process (the sequence axis back from the sequence processes, the rows from the batch
        processes, in the order of the global inputs)."""
        batch_size = DEFAULT_BATCH_SIZE if batch_size is None else int(batch_size)
        local_rows = [self._rows_of(j, num_rows, batch_size) for j in range(self.batch_shards)]

        def gather(x):
            x = np.asarray(x)
            if x.ndim >= 2:
                x = np.concatenate(self._all_gather(x, "context"), axis=1)
            if self.batch_shards > 1:
                parts = self._all_gather(x, "batch")
                full = np.empty((num_rows,) + x.shape[1:], x.dtype)
                for j, part in enumerate(parts):
                    full[local_rows[j]] = part
                x = full
            return x

        return keras.tree.map_structure(gather, outputs)

    def _rows_of(self, batch_index, num_rows, batch_size):
        saved = self.batch_index
        try:
            self.batch_index = batch_index
            return self._rows(num_rows, batch_size, "predict")
        finally:
            self.batch_index = saved

    def _all_gather(self, x, axis):
        """``x`` from every process along ``axis`` ("context" or "batch"), by coordinate."""
        ranks = self.context_ranks if axis == "context" else self.batch_ranks
        group = self.context_group if axis == "context" else self.batch_group
        if len(ranks) == 1:
            return [x]
        tensor = torch.as_tensor(np.ascontiguousarray(x)).to(self.device)
        parts = [torch.empty_like(tensor) for _ in ranks]
        dist.all_gather(parts, tensor, group=group)
        by_rank = dict(zip(dist.get_process_group_ranks(group), parts))
        return [by_rank[r].cpu().numpy() for r in ranks]

    # -----------------------------------------------------------------------------------------
    # Model state.

    def _flat_collective(self, tensors, op):
        """Run ``op(flat)`` on one flat buffer per dtype holding ``tensors``, then copy back."""
        by_dtype = {}
        for t in tensors:
            by_dtype.setdefault(t.dtype, []).append(t)
        for group in by_dtype.values():
            flat = torch.cat([t.detach().reshape(-1) for t in group]).to(self.device)
            op(flat)
            start = 0
            for t in group:
                n = t.numel()
                with torch.no_grad():
                    t.copy_(flat[start : start + n].view(t.shape).to(t.device))
                start += n

    def synchronize(self, model):
        """Broadcast every variable of ``model`` from rank 0."""
        values = [v.value for v in model.variables]
        self._flat_collective(values, lambda flat: dist.broadcast(flat, src=0))

    def synchronize_random_state(self):
        """Broadcast torch's global random state from rank 0 (keras's torch data loaders draw
        their shuffles from it, and the processes of one batch row must shuffle alike)."""
        state = torch.get_rng_state().to(self.device)
        dist.broadcast(state, src=0)
        torch.set_rng_state(state.cpu())

    def average_gradients(self, grads):
        """Replace every gradient by its mean over all processes, in place."""
        present = [g for g in grads if g is not None]
        world = self.world_size

        def mean(flat):
            dist.all_reduce(flat)
            flat /= world

        self._flat_collective(present, mean)

    def _metric_variables(self, model):
        seen, out = set(), []
        for v in model.metrics_variables:
            if id(v) not in seen:
                seen.add(id(v))
                out.append(v)
        return out

    def _sum_metric_changes(self, model, before):
        """Give every metric variable the sum over the processes of its change in this step."""
        variables = self._metric_variables(model)
        if not variables:
            return
        changes = []
        for v in variables:
            value = torch.as_tensor(v.value).detach().to(torch.float64)
            start = before.get(id(v))
            changes.append(value - (start if start is not None else torch.zeros_like(value)))
        flat = torch.cat([c.reshape(-1) for c in changes]).to(self.device)
        dist.all_reduce(flat)
        flat = flat.cpu()
        offset = 0
        for v, change in zip(variables, changes):
            n = change.numel()
            start = before.get(id(v))
            base = start if start is not None else torch.zeros_like(change)
            total = base + flat[offset : offset + n].view(change.shape)
            v.assign(total.to(torch.as_tensor(v.value).dtype))
            offset += n

    def _snapshot(self, model):
        return {
            id(v): torch.as_tensor(v.value).detach().to(torch.float64).cpu().clone()
            for v in self._metric_variables(model)
        }

    def _logs(self, model, logs):
        if not isinstance(logs, dict):
            return logs
        reduced = model.get_metrics_result()
        return {name: reduced.get(name, value) for name, value in logs.items()}

    def train_step(self, model, data, step):
        """keras's train step ``step(data)`` with gradients averaged over the processes before
        the optimizer applies them, and the metrics summed over the processes."""
        before = self._snapshot(model)
        optimizer = model.optimizer
        apply = optimizer.apply

        def apply_mean(grads, trainable_variables=None):
            self.average_gradients(grads)
            return apply(grads, trainable_variables)

        optimizer.apply = apply_mean
        try:
            logs = step(data)
        finally:
            del optimizer.apply  # back to the class's method
        self._sum_metric_changes(model, before)
        return self._logs(model, logs)

    def test_step(self, model, data, step):
        before = self._snapshot(model)
        logs = step(data)
        self._sum_metric_changes(model, before)
        return self._logs(model, logs)

    # -----------------------------------------------------------------------------------------
    # Checkpoints.

    def save_once(self, write, filepath, overwrite=True):
        """``write(path)`` on rank 0 only, atomically; every process returns once it is done.

        A ``.keras``/``.h5`` file is written to a temporary name in the same folder and
        renamed over ``filepath``; other paths are written directly.
        """
        failure = None
        if self.rank == 0:
            try:
                _write_atomically(write, os.fspath(filepath), overwrite)
            except BaseException as error:  # every process must hear of it before raising
                failure = error
        flag = torch.tensor([0 if failure is not None else 1], device=self.device)
        dist.broadcast(flag, src=0)
        if failure is not None:
            raise failure
        if int(flag.item()) != 1:
            raise RuntimeError(f"Rank 0 failed to write {os.fspath(filepath)!r}; see its log.")


_SUFFIXES = (".weights.h5", ".keras", ".h5")


def _write_atomically(write, path, overwrite):
    suffix = next((s for s in _SUFFIXES if path.endswith(s)), None)
    if suffix is None or (not overwrite and os.path.exists(path)):
        # Not a single file (or keras is to ask before overwriting): keras writes it itself.
        write(path)
        return
    folder, name = os.path.split(path)
    temporary = os.path.join(folder, f".{name[: -len(suffix)]}.tmp-{os.getpid()}{suffix}")
    try:
        write(temporary)
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)


def make_runtime(devices, axis_names, sequence_axis, batch_axis=None):
    """A :class:`ProcessRuntime` for the mesh, or ``None`` for a one-device mesh in one process.

    Starts torch.distributed from torchrun's environment if the script did not.

    Raises:
        ValueError: if the mesh has several devices but no process group runs (the script was
            not launched by torchrun), or its size is not the number of processes.
    """
    size = int(np.asarray(devices, dtype=object).size)
    world = initialize()
    if not dist.is_initialized():
        if size == 1:
            return None
        raise ValueError(
            f"The device mesh has {size} devices, and on torch each is a process of "
            "torch.distributed, but no process group is initialised. Launch the script with "
            f"`torchrun --nproc-per-node {size} script.py` (kzoo then starts the group: NCCL on "
            "GPUs, gloo on CPU), or call kzoo.distribution.initialize() or "
            "torch.distributed.init_process_group() first."
        )
    if world == 1 and size == 1:
        return None
    return ProcessRuntime(devices, axis_names, sequence_axis, batch_axis)
