"""The shipped ``convlstm_color_shapes`` preset gives the outputs it gave when it was made.

``data/convlstm_color_shapes_outputs.npz`` holds, per backend, what kzoo at commit b57f64d
computed for a fixed input; later changes to the layers' constructors or configs must keep
loading the preset into the same computation.
"""

import os

import keras
import numpy as np

from kzoo.models import ColorFramePredictor

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")


def test_convlstm_color_shapes_outputs_are_unchanged():
    reference = np.load(os.path.join(DATA, "convlstm_color_shapes_outputs.npz"))
    x = np.random.default_rng(11).uniform(size=(2, 3, 16, 16, 3)).astype("float32")
    model = ColorFramePredictor.from_preset("convlstm_color_shapes")
    got = np.asarray(keras.ops.convert_to_numpy(model.predict_on_batch(x)))
    np.testing.assert_allclose(got, reference[keras.backend.backend()], rtol=0, atol=1e-6)
