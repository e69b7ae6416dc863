"""``DistributedTrainer``: keras's ``fit``/``evaluate``/``predict``/``save`` across the processes
of a :class:`kzoo.distribution.ContextParallel` whose backend runs one process per device.

On JAX keras's own trainer runs a distribution (global arrays, XLA's collectives) and this
mixin changes nothing; the same on TensorFlow, and on torch without a multi-process mesh. On
torch under ``torchrun`` the distribution's runtime (``kzoo/backends/torch/cp_training.py``)
shards the data, averages the gradients, sums the metrics and writes checkpoints once.
"""

import inspect

from keras import distribution as kd

from kzoo.distribution.context_parallel import ContextParallel


def _bind(method, args, kwargs):
    bound = inspect.signature(method).bind(*args, **kwargs)
    bound.apply_defaults()
    arguments = dict(bound.arguments)
    extra = arguments.pop("kwargs", None) or {}
    return {**arguments, **extra}


class DistributedTrainer:
    """Mixin for ``keras.Model`` subclasses (before ``keras.Model`` in the bases): training under
    a ``ContextParallel`` that runs one process per device (torch) works like on JAX.

    Under such a distribution (the active one, ``cp.scope()`` or
    ``keras.distribution.set_distribution(cp)``) and with several processes:

    * ``fit``, ``evaluate`` and ``predict`` take the same global arrays on every process
      (sequences in layout order, ``cp.to_layout_order``) and each process keeps its part:
      its batch coordinate's rows out of every global batch (``batch_size`` is the global
      batch) and its sequence coordinate's ``1 / CP`` of the sequence axis. With
      ``ContextParallel(..., auto_shard_dataset=False)`` each process passes its own shard
      instead (and ``batch_size`` is per process). ``predict`` returns the global outputs on
      every process (each process's own shard with ``auto_shard_dataset=False``).
      ``validation_split`` is refused (pass ``validation_data``): keras would split each
      process's part rather than the global data.
    * The first training step of each ``fit`` copies every variable from rank 0 (and ``fit``
      copies torch's random state, which shuffles the data), so all processes hold the same
      weights; each step averages the gradients over the processes before the optimizer
      applies them - the update one process computes for the whole batch when the loss is a
      mean over the tokens (keras's default ``"sum_over_batch_size"`` reduction; a ``"sum"``
      loss, or a mean over sample weights, would be weighted per process); and the metrics
      are summed over the processes, so every process logs the numbers of the whole batch.
    * ``save`` and ``save_weights`` write once, on rank 0, through a temporary file in the
      same folder renamed over the target (``ModelCheckpoint`` goes through them); the other
      processes wait for it.

    Example:

    ```python
    class MyModel(kzoo.distribution.DistributedTrainer, keras.Model):
        ...

    # torchrun --nproc-per-node 4 train.py
    cp = kzoo.distribution.ContextParallel(
        keras.distribution.DeviceMesh((1, 4), ["batch", "context"],
                                      devices=kzoo.distribution.list_devices()))
    with cp.scope():
        model = MyModel(...)
        model.compile(...)
        model.fit(cp.to_layout_order(x), cp.to_layout_order(y), batch_size=8)
    ```
    """

    def _context_parallel_runtime(self):
        """The active distribution's per-process runtime, or ``None``."""
        try:
            dist = kd.distribution()
        except (AttributeError, TypeError):
            return None, None
        if not isinstance(dist, ContextParallel) or dist.runtime is None:
            return None, None
        return dist, dist.runtime

    def fit(self, *args, **kwargs):
        dist, runtime = self._context_parallel_runtime()
        if runtime is None:
            return super().fit(*args, **kwargs)
        a = _bind(super().fit, args, kwargs)
        if a.get("validation_split"):
            raise ValueError(
                "validation_split is not supported under context parallelism across processes "
                "(keras would split each process's part, not the global data); pass "
                "validation_data instead."
            )
        if dist.auto_shard_dataset:
            global_batch = a["batch_size"]
            a["x"], a["y"], a["sample_weight"], a["batch_size"] = runtime.shard_data(
                a["x"], a["y"], a["sample_weight"], global_batch, "fit"
            )
            validation = a.get("validation_data")
            if validation is not None:
                parts = tuple(validation) + (None,) * (3 - len(validation))
                val_batch = a.get("validation_batch_size") or global_batch
                vx, vy, vw, a["validation_batch_size"] = runtime.shard_data(
                    *parts, val_batch, "validation_data"
                )
                a["validation_data"] = (vx, vy, vw)
        runtime.synchronize_random_state()
        self._kzoo_copy_variables = True
        return super().fit(**a)

    def evaluate(self, *args, **kwargs):
        dist, runtime = self._context_parallel_runtime()
        if runtime is None or kwargs.get("_use_cached_eval_dataset"):
            # Inside fit the validation data was sharded with the training data.
            return super().evaluate(*args, **kwargs)
        a = _bind(super().evaluate, args, kwargs)
        if dist.auto_shard_dataset:
            a["x"], a["y"], a["sample_weight"], a["batch_size"] = runtime.shard_data(
                a["x"], a["y"], a["sample_weight"], a["batch_size"], "evaluate"
            )
        return super().evaluate(**a)

    def predict(self, *args, **kwargs):
        dist, runtime = self._context_parallel_runtime()
        if runtime is None:
            return super().predict(*args, **kwargs)
        a = _bind(super().predict, args, kwargs)
        if not dist.auto_shard_dataset:
            return super().predict(**a)
        global_batch = a["batch_size"]
        num_rows = runtime.count_rows(a["x"], "predict")
        a["x"], _, _, a["batch_size"] = runtime.shard_data(a["x"], None, None, global_batch)
        outputs = super().predict(**a)
        return runtime.gather_predictions(outputs, num_rows, global_batch)

    # keras's JAX trainer calls train_step(state, data); the others train_step(data).

    def train_step(self, *args):
        _, runtime = self._context_parallel_runtime()
        if runtime is None:
            return super().train_step(*args)
        if getattr(self, "_kzoo_copy_variables", True):
            # After keras has built the model (in fit, before the first step).
            runtime.synchronize(self)
            self._kzoo_copy_variables = False
        return runtime.train_step(self, *args, super().train_step)

    def test_step(self, *args):
        _, runtime = self._context_parallel_runtime()
        if runtime is None:
            return super().test_step(*args)
        return runtime.test_step(self, *args, super().test_step)

    def save(self, filepath, *args, **kwargs):
        _, runtime = self._context_parallel_runtime()
        save = super().save
        if runtime is None:
            return save(filepath, *args, **kwargs)
        overwrite = _bind(save, (filepath,) + args, kwargs).get("overwrite", True)
        runtime.save_once(lambda path: save(path, *args, **kwargs), filepath, overwrite)

    def save_weights(self, filepath, *args, **kwargs):
        _, runtime = self._context_parallel_runtime()
        save = super().save_weights
        if runtime is None:
            return save(filepath, *args, **kwargs)
        overwrite = _bind(save, (filepath,) + args, kwargs).get("overwrite", True)
        runtime.save_once(lambda path: save(path, *args, **kwargs), filepath, overwrite)
