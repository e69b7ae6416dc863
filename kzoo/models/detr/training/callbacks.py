"""DETR's own training callbacks (the shared ones are in ``kzoo.training``).

- :class:`CocoEvaluation`: a Keras callback that evaluates on the validation set every N epochs,
  logs ``val_AP``, ``val_AP50``, ``val_AP75`` into the history, saves the best model as a preset
  (atomically), keeps a per-epoch record across resumed runs and draws the loss and AP curves;
- :class:`DatasetEpoch`: keeps a dataset's epoch (its shuffle order and augmentation) equal to
  the training epoch, also when ``fit`` resumes from a backup.
"""

import json
import math
import os

import keras

from kzoo.models.detr.training.evaluation import EVAL_METRICS, evaluate_coco
from kzoo.utils.files import atomic_file


class DatasetEpoch(keras.callbacks.Callback):
    """Set the dataset's epoch to ``fit``'s at the start of every epoch.

    ``CocoDetection`` draws its shuffle order and augmentation from ``(seed, epoch)``; a run
    resumed at epoch ``e`` (from a backup) must continue with epoch ``e``'s order, which this
    callback sets before the epoch's first batch is read. Pass ``shuffle=False`` to ``fit``:
    keras would otherwise shuffle the order of the batches too, from its global generator.

    Example:

    ```python
    model.fit(train, epochs=10, shuffle=False,
              callbacks=[AtomicBackupAndRestore(dir), DatasetEpoch(train)])
    ```
    """

    def __init__(self, dataset):
        super().__init__()
        if not callable(getattr(dataset, "set_epoch", None)):
            raise ValueError(
                f"dataset must have set_epoch(epoch) (like CocoDetection); got "
                f"{type(dataset).__name__}."
            )
        self.dataset = dataset

    def on_epoch_begin(self, epoch, logs=None):
        self.dataset.set_epoch(epoch)


class CocoEvaluation(keras.callbacks.Callback):
    """Evaluate on a COCO validation set every ``every`` epochs; keep the best model.

    At the end of every ``every``-th epoch, of the last one, and of an epoch where training was
    stopped (a time limit), the model is evaluated on ``dataset`` (:func:`evaluate_coco`) and
    ``val_AP``, ``val_AP50`` and ``val_AP75`` are added to the epoch's logs, so they appear in
    the progress bar and in the ``History``. Then:

    - ``best_preset``: when ``val_<monitor>`` beats every earlier evaluation, the model is saved
      there as a preset (``kzoo.presets.save_preset``: atomic, a kill leaves the previous best),
      with ``extra_metadata`` plus ``epoch`` and the metrics in its ``metadata.json``;
    - ``log_file``: every epoch's logs, as JSON written atomically. A resumed run (the epoch
      ``fit`` starts at is later than 0) keeps the records of the epochs before it and drops
      later ones, which a killed run may have written before its backup. Put this callback
      before the backup callback, so that every backed-up epoch has its record;
    - ``curves``: a PNG of the training loss and the AP curves over all recorded epochs.

    Args:
        dataset: A ``kzoo.data.CocoDetection`` with a deterministic transform, or None to only
            record the losses and draw their curves.
        every: Evaluate every this many epochs (the last epoch is always evaluated).
        best_preset: Directory of the best model's preset, or None.
        log_file: JSON file of the per-epoch records, or None.
        curves: PNG file of the curves, or None.
        monitor: The metric the best model is chosen by (``"AP"``, ``"AP50"`` or ``"AP75"``).
        category_ids: Category id of each model label (default: ``dataset.category_ids``).
        extra_metadata: Entries for the best preset's ``metadata.json`` (class names...).
        verbose: 1 prints a line per evaluation.

    Attributes:
        records: The per-epoch records (``{"epoch": 1-based, "loss": ..., "val_AP": ...}``).
        best: The best ``val_<monitor>`` so far (-inf before any evaluation).

    Example:

    ```python
    evaluation = CocoEvaluation(val, every=2, best_preset="run/best", curves="run/curves.png")
    model.fit(train, epochs=20, callbacks=[evaluation])
    ```
    """

    def __init__(
        self,
        dataset,
        every=1,
        best_preset=None,
        log_file=None,
        curves=None,
        monitor="AP",
        category_ids=None,
        extra_metadata=None,
        verbose=1,
    ):
        super().__init__()
        for method in ("batch_image_ids", "image_size") if dataset is not None else ():
            if not callable(getattr(dataset, method, None)):
                raise ValueError(
                    f"dataset must be a kzoo.data.CocoDetection; {type(dataset).__name__} has "
                    f"no {method}()."
                )
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ValueError(f"every must be an int >= 1; got {every!r}.")
        if monitor not in EVAL_METRICS:
            raise ValueError(f"monitor must be one of {', '.join(EVAL_METRICS)}; got {monitor!r}.")
        self.dataset = dataset
        self.every = every
        self.best_preset = None if best_preset is None else os.path.abspath(best_preset)
        self.log_file = None if log_file is None else os.path.abspath(log_file)
        self.curves = None if curves is None else os.path.abspath(curves)
        self.monitor = monitor
        self.category_ids = category_ids
        self.extra_metadata = dict(extra_metadata or {})
        self.verbose = verbose
        self.records = []
        self.best = -math.inf
        self._started = False

    # ------------------------------------------------------------------ records

    def _read_records(self):
        if self.log_file is None or not os.path.isfile(self.log_file):
            return []
        try:
            with open(self.log_file) as f:
                records = json.load(f)
        except (OSError, ValueError):
            return []
        if not isinstance(records, list):
            return []
        return [r for r in records if isinstance(r, dict) and isinstance(r.get("epoch"), int)]

    def _write_records(self):
        if self.log_file is None:
            return
        with atomic_file(self.log_file, "w") as f:
            json.dump(self.records, f, indent=1)

    def on_train_begin(self, logs=None):
        self._started = False

    def on_epoch_begin(self, epoch, logs=None):
        if self._started:
            return
        self._started = True
        # The first epoch of this fit: records of later epochs belong to a killed run's
        # epochs that were never backed up, and are trained again now.
        self.records = [r for r in self._read_records() if r["epoch"] <= epoch]
        key = f"val_{self.monitor}"
        scores = [r[key] for r in self.records if isinstance(r.get(key), int | float)]
        self.best = max(scores, default=-math.inf)

    # ------------------------------------------------------------------ evaluation

    def _due(self, epoch):
        last = epoch + 1 >= self.params.get("epochs", math.inf)
        return (epoch + 1) % self.every == 0 or last or self.model.stop_training

    def on_epoch_end(self, epoch, logs=None):
        logs = logs if logs is not None else {}
        if self.dataset is not None and self._due(epoch):
            metrics = evaluate_coco(self.model, self.dataset, category_ids=self.category_ids)
            for name in EVAL_METRICS:
                logs[f"val_{name}"] = metrics[name]
            if self.verbose:
                print(
                    f"epoch {epoch + 1}: validation AP {metrics['AP']:.3f}  AP50 "
                    f"{metrics['AP50']:.3f}  AP75 {metrics['AP75']:.3f}",
                    flush=True,
                )
            score = metrics[self.monitor]
            if score > self.best:
                self.best = score
                if self.best_preset is not None:
                    self._save_best(epoch, metrics)
        record = {"epoch": epoch + 1}
        for key, value in logs.items():
            try:
                record[key] = float(value)
            except (TypeError, ValueError):
                continue
        self.records = [r for r in self.records if r["epoch"] != epoch + 1] + [record]
        self._write_records()
        if self.curves is not None:
            self.save_curves(self.curves)

    def _save_best(self, epoch, metrics):
        from kzoo.presets import preset_io

        metadata = {
            **self.extra_metadata,
            "epoch": epoch + 1,
            "val_metrics": {k: float(v) for k, v in metrics.items()},
        }
        with _inference_weights(self.model):
            preset_io.save_preset(self.model, self.best_preset, extra_metadata=metadata)
        if self.verbose:
            print(
                f"epoch {epoch + 1}: best validation {self.monitor} so far; saved "
                f"{self.best_preset}",
                flush=True,
            )

    def save_curves(self, path):
        """Write the PNG of the training loss and the validation AP curves to ``path``."""
        from kzoo.utils.plots import save_curves

        def series(key):
            points = [(r["epoch"], r[key]) for r in self.records if key in r]
            return tuple(zip(*points)) if points else None

        loss = {"training loss": series("loss")}
        ap = {name: series(f"val_{name}") for name in EVAL_METRICS}
        panels = [
            ("loss", {k: v for k, v in loss.items() if v}),
            ("validation COCO AP", {k: v for k, v in ap.items() if v}),
        ]
        if not any(curves for _, curves in panels):
            return None
        return save_curves(panels, path)


def _inference_weights(model):
    """The model's ``without_training_queries()`` context (a DETR's), else a no-op: presets
    hold the inference weights only."""
    import contextlib

    hide = getattr(model, "without_training_queries", None)
    return hide() if hide is not None else contextlib.nullcontext()
