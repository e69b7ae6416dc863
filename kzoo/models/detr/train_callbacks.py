"""Callbacks for DETR training runs: atomic weight checkpoints and a wall-clock limit."""

import os
import tempfile
import time

import keras


class AtomicCheckpoint(keras.callbacks.Callback):
    """Save the model's weights after every epoch; readers never see a half-written file.

    The weights go to a temporary file beside ``path`` and are renamed over it, so an
    interruption leaves the previous checkpoint intact.

    Example:

    ```python
    model.fit(data, epochs=10, callbacks=[AtomicCheckpoint("run/last.weights.h5")])
    ```
    """

    def __init__(self, path):
        super().__init__()
        path = os.fspath(path)
        if not path.endswith(".weights.h5"):
            raise ValueError(f"path must end with '.weights.h5' (keras' format); got {path!r}.")
        self.path = os.path.abspath(path)

    def on_epoch_end(self, epoch, logs=None):
        parent = os.path.dirname(self.path)
        os.makedirs(parent, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".last.", suffix=".weights.h5", dir=parent)
        os.close(fd)
        try:
            self.model.save_weights(tmp, overwrite=True)
            os.replace(tmp, self.path)
        except BaseException:
            if os.path.exists(tmp):
                os.remove(tmp)
            raise


class TimeLimit(keras.callbacks.Callback):
    """Stop training at the end of the first batch after ``seconds`` of wall time.

    Example:

    ```python
    model.fit(data, epochs=100, callbacks=[TimeLimit(30 * 60)])
    ```
    """

    def __init__(self, seconds=None):
        super().__init__()
        if seconds is not None and not seconds > 0:
            raise ValueError(f"seconds must be > 0 or None; got {seconds!r}.")
        self.seconds = seconds
        self.stopped = False
        self._start = None

    def on_train_begin(self, logs=None):
        self._start = time.time()

    def on_train_batch_end(self, batch, logs=None):
        if self.seconds is not None and time.time() - self._start > self.seconds:
            self.model.stop_training = True
            self.stopped = True
