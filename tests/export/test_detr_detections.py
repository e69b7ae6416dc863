"""DETRDetections: DETR with its post-processing in the graph, against the numpy reference
(``kzoo.models.detr.model.postprocess.outputs_to_detections``) on a padded batch."""

import keras
import numpy as np
import pytest

from kzoo.models import DETRDetections
from kzoo.models.detr.model.postprocess import outputs_to_detections
from tests.export.cases import detr_inputs, small_detr


def test_matches_the_numpy_post_processing_on_a_padded_batch():
    detr = small_detr()
    inputs = detr_inputs({"batch": 2, "height": 64, "width": 96}, np.random.default_rng(0))
    served = DETRDetections(detr)
    got = {k: keras.ops.convert_to_numpy(v) for k, v in served(inputs).items()}
    raw = detr(inputs, training=False)
    mask = inputs["pixel_mask"] > 0
    sizes = np.stack([mask.any(axis=2).sum(axis=1), mask.any(axis=1).sum(axis=1)], axis=1)
    assert sizes.tolist() == [[64, 96], [43, 72]]  # the second image is padded
    expected = outputs_to_detections(
        keras.ops.convert_to_numpy(raw["logits"]),
        keras.ops.convert_to_numpy(raw["boxes"]),
        sizes,
        threshold=0.0,
    )
    assert got["labels"].dtype == np.int32
    for i, reference in enumerate(expected):
        # The reference sorts by score; the served model keeps query order.
        order = np.argsort(-got["scores"][i], kind="stable")
        np.testing.assert_allclose(got["scores"][i][order], reference["scores"], atol=1e-6)
        np.testing.assert_array_equal(got["labels"][i][order], reference["labels"])
        np.testing.assert_allclose(got["boxes"][i][order], reference["boxes"], atol=1e-4)


def test_takes_only_images_and_pixel_mask():
    served = DETRDetections(small_detr())
    with pytest.raises(ValueError, match="'images' and 'pixel_mask'"):
        served(np.zeros((1, 32, 32, 3), "float32"))
    with pytest.raises(ValueError, match="kzoo.models.DETR"):
        DETRDetections(keras.Sequential([keras.layers.Dense(2)]))


def test_config_round_trip_rebuilds_the_same_architecture():
    served = DETRDetections(small_detr())
    again = DETRDetections.from_config(served.get_config())
    assert isinstance(again, DETRDetections)
    assert again.detr.get_config() == served.detr.get_config()
