"""How the backups in this folder were made (kept for provenance; not something to rerun).

They were written by kzoo at commit c561e39, before ConvLSTM and DETR training shared
``kzoo.training.AtomicBackupAndRestore``, by the two callbacks of that time, each interrupted
after the second of four epochs of the same tiny model:

- ``detr_backup/``: DETR's ``kzoo.models.detr.train_callbacks.AtomicBackupAndRestore`` (one
  ``epoch-000002.weights.h5``, no recorded state);
- ``convlstm_backup/``: ConvLSTM's ``kzoo.models.conv_lstm.training.TrainingBackup`` (an
  ``epoch-0002/`` folder with ``training.weights.h5`` and ``state.json``);
- ``legacy_reference.npz``: the model's initial weights, the weights after epoch 2 and the
  losses of the four epochs of an uninterrupted run.

    git worktree add /tmp/old c561e39
    PYTHONPATH=/tmp/old KERAS_BACKEND=torch python tests/training/data/make_legacy_backups.py

``tests/training/test_callbacks.py`` resumes both with today's callback.
"""

import os

import keras
import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
CONVLSTM_CONFIG = {"kind": "color", "epochs": 4, "learning_rate": 0.01}


def tiny_model():
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.Adam(0.05), loss="mse")
    return model


def data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(16, 3)).astype("float32")
    return x, x @ np.array([[1.0], [-2.0], [0.5]], "float32")


class StopAfter(keras.callbacks.Callback):
    def __init__(self, epochs):
        super().__init__()
        self.epochs = epochs

    def on_epoch_end(self, epoch, logs=None):
        if epoch + 1 == self.epochs:
            raise KeyboardInterrupt


def main():
    from kzoo.models.detr.train_callbacks import AtomicBackupAndRestore

    from kzoo.models.conv_lstm.training import TrainingBackup

    keras.utils.set_random_seed(0)
    x, y = data()
    initial = tiny_model().get_weights()
    reference = tiny_model()
    reference.set_weights(initial)
    full = reference.fit(x, y, epochs=4, batch_size=4, verbose=0, shuffle=False)
    after_two = None
    for callback in (
        AtomicBackupAndRestore(os.path.join(HERE, "detr_backup")),
        TrainingBackup(os.path.join(HERE, "convlstm_backup"), CONVLSTM_CONFIG),
    ):
        model = tiny_model()
        model.set_weights(initial)
        try:
            model.fit(x, y, epochs=4, batch_size=4, verbose=0, shuffle=False,
                      callbacks=[callback, StopAfter(2)])  # fmt: skip
        except KeyboardInterrupt:
            pass
        after_two = model.get_weights()
    np.savez(
        os.path.join(HERE, "legacy_reference.npz"),
        kernel=initial[0],
        bias=initial[1],
        kernel_2=after_two[0],
        bias_2=after_two[1],
        losses=np.asarray(full.history["loss"]),
    )


if __name__ == "__main__":
    main()
