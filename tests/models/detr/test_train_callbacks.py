"""AtomicCheckpoint and TimeLimit on a tiny keras model."""

import os

import keras
import numpy as np
import pytest

from kzoo.models.detr.train_callbacks import AtomicCheckpoint, TimeLimit


def tiny_model():
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse")
    return model


def test_atomic_checkpoint_replaces_the_file_and_leaves_no_temporaries(tmp_path):
    path = tmp_path / "ckpt" / "last.weights.h5"
    model = tiny_model()
    x, y = np.ones((8, 3), "float32"), np.ones((8, 1), "float32")
    model.fit(x, y, epochs=2, batch_size=4, verbose=0, callbacks=[AtomicCheckpoint(path)])
    assert os.listdir(path.parent) == ["last.weights.h5"]
    other = tiny_model()
    other.load_weights(path)
    np.testing.assert_allclose(other.predict(x, verbose=0), model.predict(x, verbose=0))
    with pytest.raises(ValueError, match="weights.h5"):
        AtomicCheckpoint(tmp_path / "last.h5")


def test_time_limit_stops_after_the_first_batch_past_the_limit():
    model = tiny_model()
    limit = TimeLimit(1e-9)
    x, y = np.ones((40, 3), "float32"), np.ones((40, 1), "float32")
    history = model.fit(x, y, epochs=5, batch_size=4, verbose=0, callbacks=[limit])
    assert limit.stopped and len(history.history["loss"]) == 1
    unlimited = TimeLimit(None)
    model.fit(x, y, epochs=1, batch_size=4, verbose=0, callbacks=[unlimited])
    assert not unlimited.stopped
    with pytest.raises(ValueError, match="seconds"):
        TimeLimit(0)
