"""DETRLoss against an independent per-image float64 reference (scipy matching, torch CE)."""

import keras
import numpy as np
import pytest
from test_matcher import random_problem

from kzoo.models.detr.training.loss import DETRLoss
from tests.models.detr.detr_reference import detr_loss as reference_loss


def make_outputs(seed, num_aux=2, counts=(0, 5, 2, 1)):
    logits, boxes, tgt, labels = random_problem(seed, counts=list(counts))
    rng = np.random.default_rng(seed + 100)
    aux_logits = rng.normal(size=(4, num_aux) + logits.shape[1:]).astype(np.float32)
    aux_boxes = np.concatenate(
        [
            rng.uniform(0.2, 0.8, size=(4, num_aux, boxes.shape[1], 2)),
            rng.uniform(0.05, 0.4, size=(4, num_aux, boxes.shape[1], 2)),
        ],
        -1,
    ).astype(np.float32)
    y_pred = {"logits": logits, "boxes": boxes, "aux_logits": aux_logits, "aux_boxes": aux_boxes}
    return y_pred, {"boxes": tgt, "labels": labels}


def test_matches_reference_with_aux_outputs_and_empty_images():
    y_pred, y_true = make_outputs(0)
    loss = DETRLoss()
    value = float(keras.ops.convert_to_numpy(loss(y_true, y_pred)))
    expected, terms = reference_loss(y_pred, y_true["labels"], y_true["boxes"])
    np.testing.assert_allclose(value, expected, rtol=2e-5)
    components = loss.components(y_true, y_pred)
    for key, i in (("loss_ce", 0), ("loss_bbox", 1), ("loss_giou", 2)):
        got = [float(keras.ops.convert_to_numpy(v)) for v in components[key]]
        np.testing.assert_allclose(got, [t[i] for t in terms], rtol=2e-5, atol=1e-6)


def test_weights_eos_coef_and_no_aux():
    y_pred, y_true = make_outputs(1)
    loss = DETRLoss(num_classes=3, eos_coef=0.5, class_weight=2.0, giou_weight=1.0, aux_loss=False)
    value = float(keras.ops.convert_to_numpy(loss(y_true, y_pred)))
    no_aux = {k: y_pred[k] for k in ("logits", "boxes")}
    no_aux["aux_logits"] = y_pred["aux_logits"][:, :0]
    expected, _ = reference_loss(
        no_aux, y_true["labels"], y_true["boxes"], weights=(2.0, 5.0, 1.0), eos_coef=0.5
    )
    np.testing.assert_allclose(value, expected, rtol=2e-5)
    restored = DETRLoss.from_config(loss.get_config())
    assert (restored.num_classes, restored.eos_coef, restored.aux_loss) == (3, 0.5, False)
    assert restored.matcher.get_config() == loss.matcher.get_config()


def test_batch_without_any_target_counts_one_box():
    y_pred, y_true = make_outputs(2, counts=(0, 0, 0, 0))
    value = float(keras.ops.convert_to_numpy(DETRLoss()(y_true, y_pred)))
    expected, terms = reference_loss(y_pred, y_true["labels"], y_true["boxes"])
    assert all(t[1] == 0 and t[2] == 0 for t in terms)
    np.testing.assert_allclose(value, expected, rtol=2e-5)


def test_perfect_predictions_give_a_lower_loss_than_random_ones():
    y_pred, y_true = make_outputs(3, num_aux=0, counts=(2, 2, 2, 2))
    perfect = dict(y_pred)
    logits = np.full_like(y_pred["logits"], -10.0)
    logits[..., -1] = 10.0
    boxes = y_pred["boxes"].copy()
    for b in range(4):
        slots = np.nonzero(y_true["labels"][b] >= 0)[0]
        boxes[b, : len(slots)] = y_true["boxes"][b, slots]
        logits[b, np.arange(len(slots)), -1] = -10.0
        logits[b, np.arange(len(slots)), y_true["labels"][b, slots]] = 10.0
    perfect.update(logits=logits, boxes=boxes)
    loss = DETRLoss()
    terms = loss.components(y_true, perfect)
    assert float(keras.ops.convert_to_numpy(terms["loss_bbox"][0])) < 1e-6
    assert float(keras.ops.convert_to_numpy(terms["loss_giou"][0])) < 1e-5
    assert float(keras.ops.convert_to_numpy(terms["loss_ce"][0])) < 1e-6


def test_bad_input_raises():
    y_pred, y_true = make_outputs(4)
    with pytest.raises(ValueError, match="6 logits per query"):
        DETRLoss(num_classes=5)(y_true, y_pred)
    with pytest.raises(ValueError, match="'logits' and 'boxes'"):
        DETRLoss()(y_true, y_pred["logits"])
    with pytest.raises(ValueError, match="'labels'"):
        DETRLoss()({"boxes": y_true["boxes"]}, y_pred)
    with pytest.raises(ValueError, match="eos_coef"):
        DETRLoss(eos_coef=0.0)
    with pytest.raises(ValueError, match="num_classes"):
        DETRLoss(num_classes=0)
    bad = dict(y_pred, boxes=np.full_like(y_pred["boxes"], np.nan))
    with pytest.raises(ValueError, match="predicted boxes contain NaN"):
        DETRLoss()(y_true, bad)


@pytest.mark.backends("jax")
def test_gradient_inside_jax_jit_matches_reference_value():
    import jax

    y_pred, y_true = make_outputs(5)
    loss = DETRLoss()
    value, grads = jax.jit(jax.value_and_grad(lambda p: loss(y_true, p)))(y_pred)
    expected, _ = reference_loss(y_pred, y_true["labels"], y_true["boxes"])
    np.testing.assert_allclose(float(value), expected, rtol=2e-5)
    assert all(np.isfinite(np.asarray(g)).all() for g in jax.tree_util.tree_leaves(grads))
    assert np.abs(np.asarray(grads["boxes"])).sum() > 0


@pytest.mark.backends("tensorflow")
def test_gradient_inside_tf_function():
    import tensorflow as tf

    y_pred, y_true = make_outputs(5)
    loss = DETRLoss()
    variables = {k: tf.Variable(v) for k, v in y_pred.items()}

    @tf.function
    def step():
        with tf.GradientTape() as tape:
            value = loss(y_true, dict(variables))
        return value, tape.gradient(value, variables)

    value, grads = step()
    expected, _ = reference_loss(y_pred, y_true["labels"], y_true["boxes"])
    np.testing.assert_allclose(float(value), expected, rtol=2e-5)
    assert np.abs(grads["boxes"].numpy()).sum() > 0


@pytest.mark.backends("torch")
def test_gradient_with_torch_autograd():
    import torch

    y_pred, y_true = make_outputs(5)
    tensors = {k: torch.tensor(v, requires_grad=True) for k, v in y_pred.items()}
    value = DETRLoss()(y_true, tensors)
    value.backward()
    expected, _ = reference_loss(y_pred, y_true["labels"], y_true["boxes"])
    np.testing.assert_allclose(value.item(), expected, rtol=2e-5)
    assert tensors["boxes"].grad.abs().sum() > 0
    assert torch.isfinite(tensors["aux_logits"].grad).all()
