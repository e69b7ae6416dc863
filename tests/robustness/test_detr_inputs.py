"""Issue #17, item 5 (and DETR's part of item 9): masks DETR would misread are refused, the same
way on every backend, in eager calls, predict, fit and compiled steps."""

import keras
import numpy as np
import pytest

from tests.robustness.support import tiny_detr

SIZE = 64


@pytest.fixture(scope="module")
def model():
    return tiny_detr()


def _images(batch=2, seed=0):
    return np.random.default_rng(seed).normal(size=(batch, SIZE, SIZE, 3)).astype("float32")


def _good_mask():
    mask = np.ones((2, SIZE, SIZE), "float32")
    mask[1, 40:, :] = 0
    mask[1, :, 50:] = 0
    return mask


def _bad_masks():
    left = np.ones((2, SIZE, SIZE), "float32")
    left[1, :, :20] = 0  # padding on the left
    top = np.ones((2, SIZE, SIZE), "float32")
    top[0, :8, :] = 0
    hole = np.ones((2, SIZE, SIZE), "float32")
    hole[1, 10:12, 10:12] = 0
    empty = np.ones((2, SIZE, SIZE), "float32")
    empty[1] = 0
    soft = np.ones((2, SIZE, SIZE), "float32")
    soft[0, :, 40:] = 0.5
    return {
        "left": (left, r"pixel_mask of image 1 is not one rectangle of ones at the top left"),
        "top": (top, r"pixel_mask of image 0 is not one rectangle"),
        "hole": (hole, r"pixel_mask of image 1 is not one rectangle"),
        "all_zero": (empty, r"pixel_mask of image 1 has no real pixel"),
        "soft": (soft, r"pixel_mask of image 0 holds .* value\(s\) other than 0 and 1"),
    }


BAD = _bad_masks()


@pytest.mark.parametrize("case", sorted(BAD))
@pytest.mark.parametrize("how", ["call", "predict", "predict_on_batch", "predict_detections"])
def test_bad_masks_are_refused(model, case, how):
    mask, message = BAD[case]
    inputs = {"images": _images(), "pixel_mask": mask}
    with pytest.raises(ValueError, match=message):
        if how == "call":
            model(inputs)
        elif how == "predict":
            model.predict(inputs, verbose=0)
        elif how == "predict_on_batch":
            model.predict_on_batch(inputs)
        else:
            model.predict_detections(inputs, threshold=0.0)
    # The model is untouched by a refused call: a good batch still runs.
    out = model.predict_on_batch({"images": _images(), "pixel_mask": _good_mask()})
    assert np.isfinite(np.asarray(out["logits"])).all()


def test_compiled_steps_check_the_mask_too():
    # A tf.data pipeline reaches DETR.call inside keras's compiled predict step (jax.jit,
    # tf.function) with traced tensors: the check runs through the host callback.
    import tensorflow as tf

    fresh = tiny_detr(seed=1)
    mask, message = BAD["left"]
    data = tf.data.Dataset.from_tensor_slices({"images": _images(), "pixel_mask": mask}).batch(2)
    with pytest.raises(ValueError, match=message):
        fresh.predict(data, verbose=0)
    good = tf.data.Dataset.from_tensor_slices({"images": _images(), "pixel_mask": _good_mask()})
    assert tiny_detr(seed=1).predict(good.batch(2), verbose=0)["logits"].shape == (2, 4, 4)


class _Batches(keras.utils.PyDataset):
    def __init__(self, masks):
        super().__init__()
        self.masks = masks

    def __len__(self):
        return len(self.masks)

    def __getitem__(self, i):
        targets = {
            "boxes": np.full((2, 2, 4), 0.25, "float32"),
            "labels": np.array([[0, -1], [1, -1]], "int32"),
        }
        return {"images": _images(seed=i), "pixel_mask": self.masks[i]}, targets


def test_fit_refuses_a_bad_batch_before_any_step_and_keeps_the_weights():
    fresh = tiny_detr(seed=2)
    fresh.compile(optimizer=keras.optimizers.SGD(0.1))
    before = [np.array(keras.ops.convert_to_numpy(w)) for w in fresh.weights]
    with pytest.raises(ValueError, match="pixel_mask of image 1 is not one rectangle"):
        fresh.fit(_Batches([BAD["left"][0]]), epochs=1, verbose=0)
    after = [np.array(keras.ops.convert_to_numpy(w)) for w in fresh.weights]
    assert all(np.array_equal(a, b) for a, b in zip(before, after))
    with pytest.raises(ValueError, match="pixel_mask of image 0 holds"):
        fresh.train_on_batch(*_Batches([BAD["soft"][0]])[0])


def test_an_empty_batch_is_refused(model):
    empty = np.zeros((0, SIZE, SIZE, 3), "float32")
    with pytest.raises(ValueError, match="`images` is an empty batch"):
        model(empty)
    with pytest.raises(ValueError, match="`images` is an empty batch"):
        model.predict_on_batch(empty)


def test_device_and_host_summaries_agree():
    from kzoo.models.detr.model.pixel_mask import (
        mask_summary,
        mask_summary_numpy,
        raise_for_summary,
    )

    for mask, _ in [*BAD.values(), (_good_mask(), None)]:
        device = keras.ops.convert_to_numpy(mask_summary(mask))
        np.testing.assert_array_equal(device, mask_summary_numpy(mask))
    raise_for_summary(mask_summary_numpy(_good_mask()))  # a good mask passes
    bool_mask = _good_mask().astype(bool)
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(mask_summary(bool_mask)), mask_summary_numpy(bool_mask)
    )


@pytest.mark.backends("tensorflow")
def test_host_check_steps_aside_under_xla():
    # XLA has no host callbacks: a model compiled with jit_compile=True must still compile, so
    # the in-graph check is skipped there (the host-side checks above still run).
    import tensorflow as tf

    from kzoo.ops.host_call import host_check

    def refuse(summary):
        raise ValueError("checked")

    @tf.function(jit_compile=True)
    def compiled(x):
        return x * host_check(refuse, [x])

    @tf.function
    def graph(x):
        return x * host_check(refuse, [x])

    np.testing.assert_array_equal(compiled(tf.ones(3)).numpy(), np.ones(3))
    with pytest.raises(Exception, match="checked"):
        graph(tf.ones(3))
