"""HungarianMatcher against a scipy-built per-image reference, including images without targets."""

import keras
import numpy as np
import pytest

from kzoo.models.detr.training.matcher import HungarianMatcher
from tests.models.detr.detr_reference import match_batch


def random_problem(seed, batch=4, queries=9, max_targets=5, num_classes=3, counts=None):
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(batch, queries, num_classes + 1)).astype(np.float32) * 2
    centre = rng.uniform(0.2, 0.8, size=(batch, queries, 2))
    size = rng.uniform(0.05, 0.4, size=(batch, queries, 2))
    boxes = np.concatenate([centre, size], -1).astype(np.float32)
    counts = rng.integers(0, max_targets + 1, size=batch) if counts is None else counts
    tgt = np.zeros((batch, max_targets, 4), np.float32)
    labels = np.full((batch, max_targets), -1, np.int32)
    for b, n in enumerate(counts):
        slots = rng.permutation(max_targets)[:n]  # padding need not be at the end
        tgt[b, slots, :2] = rng.uniform(0.2, 0.8, size=(n, 2))
        tgt[b, slots, 2:] = rng.uniform(0.05, 0.4, size=(n, 2))
        labels[b, slots] = rng.integers(0, num_classes, size=n)
    return logits, boxes, tgt, labels


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_scipy_reference(seed):
    counts = [0, 5, 2, 1] if seed == 0 else None  # zero targets and a full image
    logits, boxes, tgt, labels = random_problem(seed, counts=counts)
    query = keras.ops.convert_to_numpy(HungarianMatcher()(logits, boxes, tgt, labels))
    assert query.shape == labels.shape and query.dtype == np.int32
    for b, (slots, ref) in enumerate(match_batch(logits, boxes, tgt, labels)):
        np.testing.assert_array_equal(query[b, slots], ref)
        assert len(set(query[b].tolist())) == labels.shape[1]  # one query per slot


def test_cost_weights_change_the_matching_like_the_reference():
    logits, boxes, tgt, labels = random_problem(5, counts=[4, 3, 0, 5])
    matcher = HungarianMatcher(cost_class=3.0, cost_bbox=0.0, cost_giou=1.0)
    query = keras.ops.convert_to_numpy(matcher(logits, boxes, tgt, labels))
    from tests.models.detr.detr_reference import match_image

    for b in range(4):
        slots = np.nonzero(labels[b] >= 0)[0]
        ref = match_image(logits[b], boxes[b], tgt[b][slots], labels[b][slots], 3.0, 0.0, 1.0)
        np.testing.assert_array_equal(query[b, slots], ref)
    assert HungarianMatcher.from_config(matcher.get_config()).cost_class == 3.0


@pytest.mark.backends("jax")
def test_inside_jax_jit():
    import jax

    logits, boxes, tgt, labels = random_problem(3)
    query = jax.jit(HungarianMatcher().__call__)(logits, boxes, tgt, labels)
    for b, (slots, ref) in enumerate(match_batch(logits, boxes, tgt, labels)):
        np.testing.assert_array_equal(np.asarray(query)[b, slots], ref)


@pytest.mark.backends("tensorflow")
def test_inside_tf_function():
    import tensorflow as tf

    logits, boxes, tgt, labels = random_problem(3)
    query = tf.function(HungarianMatcher().__call__)(logits, boxes, tgt, labels)
    for b, (slots, ref) in enumerate(match_batch(logits, boxes, tgt, labels)):
        np.testing.assert_array_equal(query.numpy()[b, slots], ref)


def test_bad_boxes_and_arguments_raise():
    logits, boxes, tgt, labels = random_problem(4, counts=[1, 1, 1, 1])
    bad = boxes.copy()
    bad[1, 2, 0] = np.nan
    with pytest.raises(ValueError, match="predicted boxes contain NaN"):
        HungarianMatcher()(logits, bad, tgt, labels)
    bad = tgt.copy()
    bad[labels >= 0] = [0.5, 0.5, -0.1, 0.1]
    with pytest.raises(ValueError, match="target boxes contain degenerate"):
        HungarianMatcher()(logits, boxes, bad, labels)
    # Degenerate values in padded slots are ignored.
    bad = tgt.copy()
    bad[labels < 0] = np.nan
    HungarianMatcher()(logits, boxes, bad, labels)
    with pytest.raises(ValueError, match="queries"):
        HungarianMatcher()(logits[:, :3], boxes[:, :3], tgt, labels)
    with pytest.raises(ValueError, match="cost_bbox"):
        HungarianMatcher(cost_bbox=-1)
