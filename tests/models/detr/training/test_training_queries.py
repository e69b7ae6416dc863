"""DETR's training-only queries: DN-DETR denoising queries and Group DETR query groups.

References: the noise and the box encoding against float64 numpy written from DN-DETR's
equations (|dx| < lambda w / 2, w' in [(1 - lambda) w, (1 + lambda) w], labels flipped with
probability p), the attention mask against a matrix written out by hand, the denoising loss
against float64 numpy on the hand-assigned pairs and against the matched loss's own terms on
those pairs, the group loss against separate per-group DETR losses. Inference and presets are
checked bit for bit against a model that never had the options.
"""

import math

import h5py
import keras
import numpy as np
import pytest

from kzoo.data.detection import SyntheticDetection
from kzoo.models import DETR
from kzoo.models.detr import DenoisingConfig, DETRLoss
from kzoo.models.detr.training import training_queries as tq
from tests.models.detr.coco_files import tiny_detr

MATCHING_KEYS = ("logits", "boxes", "aux_logits", "aux_boxes")
slow_unless_torch = pytest.mark.slow if keras.backend.backend() != "torch" else (lambda f: f)
# Eager JAX compiles every op of a model's first call (minutes for this file on 2 cores).
slow_on_jax = pytest.mark.slow if keras.backend.backend() == "jax" else (lambda f: f)


def np_(x):
    return np.asarray(keras.ops.convert_to_numpy(x))


def _batch(seed=2):
    """4 images of 64 px, 0 to 3 boxes each (images 0 and 3 have none), targets padded to 3."""
    data = SyntheticDetection(num_images=4, image_size=64, batch_size=4, max_objects=3, seed=seed)
    images, targets = data[0]
    return {"images": images}, targets


# --------------------------------------------------------------------------- config


def test_denoising_config_checks_and_round_trips():
    config = DenoisingConfig(groups=3, box_noise_scale=0.5, label_noise_ratio=0.1)
    assert DenoisingConfig.from_config(config.get_config()) == config
    assert keras.saving.get_registered_object("kzoo>DenoisingConfig") is DenoisingConfig
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(config))
    assert restored == config
    for kwargs, name in (
        ({"groups": 0}, "groups"),
        ({"groups": 2.0}, "groups"),
        ({"box_noise_scale": 1.5}, "box_noise_scale"),
        ({"box_noise_scale": -0.1}, "box_noise_scale"),
        ({"label_noise_ratio": float("nan")}, "label_noise_ratio"),
        ({"label_noise_ratio": True}, "label_noise_ratio"),
    ):
        with pytest.raises(ValueError, match=name):
            DenoisingConfig(**kwargs)


def test_compile_checks_the_options_before_anything():
    model = tiny_detr()
    with pytest.raises(ValueError, match="query_groups must be an int >= 1"):
        model.compile(query_groups=0)
    with pytest.raises(ValueError, match="denoising must be None, a DenoisingConfig"):
        model.compile(denoising=5)
    assert getattr(model, "training_queries", None) is None
    model.compile(query_groups=2)
    with pytest.raises(ValueError, match="compiled with"):
        model.compile(query_groups=3)


# --------------------------------------------------------------------------- noise and masks


def _np_noise_boxes(boxes, u, lam):
    """DN-DETR's box noise in float64, coordinate by coordinate."""
    out = np.empty_like(boxes, dtype=np.float64)
    for idx in np.ndindex(boxes.shape[:-1]):
        x, y, w, h = boxes[idx].astype(np.float64)
        ux, uy, uw, uh = (2 * u[idx].astype(np.float64) - 1) * lam
        shifted = (x + ux * w / 2, y + uy * h / 2, w * (1 + uw), h * (1 + uh))
        out[idx] = [min(max(v, 0.0), 1.0) for v in shifted]
    return out


def test_box_noise_matches_dn_detr_equations():
    rng = np.random.default_rng(0)
    boxes = np.concatenate(
        [rng.uniform(0.1, 0.9, (3, 7, 2)), rng.uniform(0.01, 0.8, (3, 7, 2))], -1
    ).astype("float32")
    u = rng.uniform(0, 1, (3, 7, 4)).astype("float32")
    for lam in (0.0, 0.4, 1.0):
        got = np_(tq.noise_boxes(boxes, u, lam))
        expected = _np_noise_boxes(boxes, u, lam)
        np.testing.assert_allclose(got, expected, atol=1e-6)
    got = np_(tq.noise_boxes(boxes, u, 0.4))
    # The bounds of the paper, before clipping: |dx| < lambda w / 2, w' / w in [0.6, 1.4].
    inside = (got > 0) & (got < 1)
    assert np.all(np.abs(got[..., 0] - boxes[..., 0]) <= 0.2 * boxes[..., 2] + 1e-6)
    ratio = got[..., 2:] / boxes[..., 2:]
    assert np.all(((ratio >= 0.6 - 1e-6) & (ratio <= 1.4 + 1e-6)) | ~inside[..., 2:])


def test_label_noise_matches_numpy():
    rng = np.random.default_rng(1)
    labels = rng.integers(-1, 5, (4, 9)).astype("int32")
    u = rng.uniform(0, 1, (4, 9)).astype("float32")
    random_labels = rng.integers(0, 5, (4, 9)).astype("int32")
    got = np_(tq.noise_labels(labels, u, random_labels, 0.3))
    expected = labels.copy()
    for idx in np.ndindex(labels.shape):
        if labels[idx] >= 0 and float(u[idx]) < 0.3:
            expected[idx] = random_labels[idx]
    np.testing.assert_array_equal(got, expected)


def test_box_sine_embedding_matches_numpy():
    rng = np.random.default_rng(2)
    boxes = rng.uniform(0, 1, (2, 3, 4)).astype("float32")
    n = 8
    got = np_(tq.box_sine_embedding(boxes, n))
    expected = np.empty((2, 3, 4 * n))
    for idx in np.ndindex(boxes.shape[:-1]):
        for c in range(4):
            for i in range(n):
                angle = float(boxes[idx][c]) * 2 * math.pi / 10000.0 ** (2 * (i // 2) / n)
                expected[idx][c * n + i] = math.sin(angle) if i % 2 == 0 else math.cos(angle)
    np.testing.assert_allclose(got, expected, atol=2e-5)


# Q = 2 queries, K = 2 groups, G = 2 DN groups of T = 2 slots. Rows attend to columns (1).
# Image 0 has one target (slot 1 padded), image 1 none.
MASK_ONE_TARGET = """
11000000
11000000
00110000
00110000
11001000
11001000
11000010
11000010
"""
MASK_NO_TARGET = """
11000000
11000000
00110000
00110000
11000000
11000000
11000000
11000000
"""


def _parse(text):
    return np.array([[c == "1" for c in row] for row in text.split()], bool)


def test_attention_mask_entry_by_entry():
    valid = np.array([[True, False], [False, False]])
    got = np_(tq.decoder_attention_mask(2, 2, 2, valid))
    assert got.dtype == bool and got.shape == (2, 8, 8)
    np.testing.assert_array_equal(got[0], _parse(MASK_ONE_TARGET))
    np.testing.assert_array_equal(got[1], _parse(MASK_NO_TARGET))
    # Groups only: block diagonal, the same for every image.
    got = np_(tq.decoder_attention_mask(2, 3, 0, valid))
    expected = np.kron(np.eye(3, dtype=bool), np.ones((2, 2), bool))
    np.testing.assert_array_equal(got, np.broadcast_to(expected, (2, 6, 6)))


def _np_mask(q, k, g, valid):
    """The mask from its rules, query pair by query pair."""
    b, t = valid.shape
    n = q * k + g * t
    out = np.zeros((b, n, n), bool)

    def kind(i):
        return ("match", i // q, None) if i < q * k else ("dn", (i - q * k) // t, (i - q * k) % t)

    for img in range(b):
        for i in range(n):
            for j in range(n):
                ki, gi, _ = kind(i)
                kj, gj, sj = kind(j)
                if kj == "dn" and not valid[img, sj]:
                    continue  # nobody sees a padded slot
                if ki == "match":
                    out[img, i, j] = kj == "match" and gi == gj
                else:
                    out[img, i, j] = (kj == "match" and gj == 0) or (kj == "dn" and gj == gi)
    return out


def test_attention_mask_matches_rules_on_random_padding():
    rng = np.random.default_rng(3)
    valid = rng.uniform(size=(3, 4)) < 0.5
    got = np_(tq.decoder_attention_mask(3, 2, 3, valid))
    np.testing.assert_array_equal(got, _np_mask(3, 2, 3, valid))


# --------------------------------------------------------------------------- losses


def _np_giou(a, b):
    def corners(x):
        return x[0] - x[2] / 2, x[1] - x[3] / 2, x[0] + x[2] / 2, x[1] + x[3] / 2

    ax0, ay0, ax1, ay1 = corners(a)
    bx0, by0, bx1, by1 = corners(b)
    inter = max(0, min(ax1, bx1) - max(ax0, bx0)) * max(0, min(ay1, by1) - max(ay0, by0))
    union = (ax1 - ax0) * (ay1 - ay0) + (bx1 - bx0) * (by1 - by0) - inter
    hull = (max(ax1, bx1) - min(ax0, bx0)) * (max(ay1, by1) - min(ay0, by0))
    return inter / union - (hull - union) / hull


def _dn_outputs(rng, batch, groups, slots, classes, aux):
    n = groups * slots
    logits = rng.normal(size=(batch, n, classes + 1)).astype("float32")
    boxes = np.concatenate(
        [rng.uniform(0.2, 0.8, (batch, n, 2)), rng.uniform(0.05, 0.4, (batch, n, 2))], -1
    ).astype("float32")
    aux_logits = rng.normal(size=(batch, aux, n, classes + 1)).astype("float32")
    aux_boxes = np.concatenate(
        [rng.uniform(0.2, 0.8, (batch, aux, n, 2)), rng.uniform(0.05, 0.4, (batch, aux, n, 2))],
        -1,
    ).astype("float32")
    return {
        "dn_logits": logits,
        "dn_boxes": boxes,
        "dn_aux_logits": aux_logits,
        "dn_aux_boxes": aux_boxes,
    }


def test_denoising_loss_is_the_matched_loss_on_hand_assigned_pairs():
    rng = np.random.default_rng(4)
    batch, groups, slots, classes = 3, 2, 3, 4
    labels = np.array([[2, 0, -1], [-1, -1, -1], [1, 3, 3]], "int32")  # 5 targets, one image none
    boxes = np.where(
        labels[..., None] >= 0,
        np.concatenate([rng.uniform(0.3, 0.7, (3, 3, 2)), rng.uniform(0.1, 0.3, (3, 3, 2))], -1),
        0.0,
    ).astype("float32")
    y_true = {"boxes": boxes, "labels": labels}
    y_pred = _dn_outputs(rng, batch, groups, slots, classes, aux=1)
    loss = DETRLoss()
    terms = {
        k: [float(np_(v)) for v in vs]
        for k, vs in loss.denoising_components(y_true, y_pred).items()
    }
    # float64 numpy: DN query (g, t) of image b answers for target t of image b.
    outputs = [
        (y_pred["dn_logits"], y_pred["dn_boxes"]),
        (y_pred["dn_aux_logits"][:, 0], y_pred["dn_aux_boxes"][:, 0]),
    ]
    for out_index, (logits, pred) in enumerate(outputs):
        ce = l1 = giou = 0.0
        count = 0
        for b in range(batch):
            for g in range(groups):
                for t in range(slots):
                    if labels[b, t] < 0:
                        continue
                    q = g * slots + t
                    z = logits[b, q].astype(np.float64)
                    log_p = z - z.max() - np.log(np.exp(z - z.max()).sum())
                    ce -= log_p[labels[b, t]]
                    l1 += np.abs(pred[b, q].astype(np.float64) - boxes[b, t]).sum()
                    giou += 1 - _np_giou(pred[b, q].astype(np.float64), boxes[b, t])
                    count += 1
        assert count == groups * 5
        np.testing.assert_allclose(terms["loss_ce_dn"][out_index], ce / count, rtol=1e-5)
        np.testing.assert_allclose(terms["loss_bbox_dn"][out_index], l1 / count, rtol=1e-5)
        np.testing.assert_allclose(terms["loss_giou_dn"][out_index], giou / count, rtol=1e-5)

    # The matched loss's own terms on the same pairs (every query assigned, so no "no object").
    keep = [
        (b, g * slots + t, t) for b in range(batch) for g in range(groups) for t in range(slots)
    ]
    keep = [k for k in keep if labels[k[0], k[2]] >= 0]
    n = len(keep)
    pair_logits = np.stack([y_pred["dn_logits"][b, q] for b, q, _ in keep])[None]
    pair_boxes = np.stack([y_pred["dn_boxes"][b, q] for b, q, _ in keep])[None]
    pair_targets = np.stack([boxes[b, t] for b, _, t in keep])[None]
    pair_labels = np.array([[labels[b, t] for b, _, t in keep]], "int32")
    matched = loss.pair_terms(
        keras.ops.convert_to_tensor(pair_logits),
        keras.ops.convert_to_tensor(pair_boxes),
        keras.ops.convert_to_tensor(pair_targets),
        keras.ops.convert_to_tensor(pair_labels),
        keras.ops.convert_to_tensor(np.eye(n, dtype="float32")[None]),
        float(n),
    )
    for key in ("loss_ce", "loss_bbox", "loss_giou"):
        np.testing.assert_allclose(terms[f"{key}_dn"][0], float(np_(matched[key])), rtol=1e-5)
    # Weighted like the matched terms in the total.
    total = float(np_(loss(y_true, y_pred | _zero_matching(batch, classes))))
    matched_only = float(np_(loss(y_true, _zero_matching(batch, classes))))
    expected = sum(
        w * sum(terms[f"{k}_dn"]) for k, w in (("loss_ce", 1), ("loss_bbox", 5), ("loss_giou", 2))
    )
    np.testing.assert_allclose(total - matched_only, expected, rtol=1e-5)


def _zero_matching(batch, classes, queries=4, aux=1):
    boxes = np.full((batch, queries, 4), 0.5, "float32")
    return {
        "logits": np.zeros((batch, queries, classes + 1), "float32"),
        "boxes": boxes,
        "aux_logits": np.zeros((batch, aux, queries, classes + 1), "float32"),
        "aux_boxes": np.full((batch, aux, queries, 4), 0.5, "float32"),
    }


def test_denoising_loss_of_a_batch_without_targets_is_zero():
    rng = np.random.default_rng(5)
    y_true = {"boxes": np.zeros((2, 3, 4), "float32"), "labels": np.full((2, 3), -1, "int32")}
    terms = DETRLoss().denoising_components(y_true, _dn_outputs(rng, 2, 2, 3, 3, aux=1))
    for values in terms.values():
        assert [float(np_(v)) for v in values] == [0.0, 0.0]


def test_group_loss_is_the_mean_of_each_groups_own_detr_loss():
    rng = np.random.default_rng(6)
    batch, groups, queries, classes = 2, 3, 4, 3
    labels = np.array([[1, 0, -1], [2, -1, -1]], "int32")
    boxes = np.where(
        labels[..., None] >= 0,
        np.concatenate([rng.uniform(0.3, 0.7, (2, 3, 2)), rng.uniform(0.1, 0.3, (2, 3, 2))], -1),
        0.0,
    ).astype("float32")
    y_true = {"boxes": boxes, "labels": labels}

    def sample(*shape):
        return rng.normal(size=shape).astype("float32")

    def sample_boxes(*shape):
        return rng.uniform(0.1, 0.9, shape).astype("float32")

    group = {
        "group_logits": sample(batch, groups, queries, classes + 1),
        "group_boxes": sample_boxes(batch, groups, queries, 4),
        "group_aux_logits": sample(batch, 1, groups, queries, classes + 1),
        "group_aux_boxes": sample_boxes(batch, 1, groups, queries, 4),
    }
    y_pred = {
        "logits": group["group_logits"][:, 0],
        "boxes": group["group_boxes"][:, 0],
        "aux_logits": group["group_aux_logits"][:, :, 0],
        "aux_boxes": group["group_aux_boxes"][:, :, 0],
        **group,
    }
    loss = DETRLoss()
    got = float(np_(loss(y_true, y_pred)))
    each = []
    for k in range(groups):
        alone = {
            "logits": group["group_logits"][:, k],
            "boxes": group["group_boxes"][:, k],
            "aux_logits": group["group_aux_logits"][:, :, k],
            "aux_boxes": group["group_aux_boxes"][:, :, k],
        }
        each.append(float(np_(loss(y_true, alone))))
    np.testing.assert_allclose(got, np.mean(each), rtol=1e-5)


# --------------------------------------------------------------------------- the model


def _plain_and_compiled(denoising=None, query_groups=3):
    keras.utils.set_random_seed(7)
    denoising = denoising or DenoisingConfig(groups=2)
    plain = tiny_detr()
    other = tiny_detr()
    other.set_weights(plain.get_weights())
    other.compile(denoising=denoising, query_groups=query_groups)
    return plain, other


@slow_on_jax
def test_the_options_change_nothing_at_inference_bit_for_bit():
    x, _ = _batch()
    plain, model = _plain_and_compiled()
    assert {**model.get_config(), "name": None} == {**plain.get_config(), "name": None}
    n = len(plain.weights)
    assert [v.path.split("/", 1)[1] for v in model.weights[:n]] == [
        v.path.split("/", 1)[1] for v in plain.weights
    ]
    assert all(v.path.startswith("training_queries/") for v in model.weights[n:])
    for training in (False, True):  # training=True without targets: DETR's own queries only
        expected, got = plain(x, training=training), model(x, training=training)
        assert sorted(got) == sorted(expected)
        for key in expected:
            np.testing.assert_array_equal(np_(got[key]), np_(expected[key]))
    got = model.predict_detections(x["images"], threshold=0.0)
    expected = plain.predict_detections(x["images"], threshold=0.0)
    for a, b in zip(got, expected):
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])
    # compile() without the options adds nothing.
    again = tiny_detr()
    again.compile()
    assert getattr(again, "training_queries", None) is None
    assert len(again.weights) == len(plain.weights)


def _h5_datasets(path):
    names = {}
    with h5py.File(path, "r") as f:
        f.visititems(
            lambda name, obj: (
                names.__setitem__(name, obj[()]) if isinstance(obj, h5py.Dataset) else None
            )
        )
    return names


@slow_on_jax
def test_preset_of_a_model_trained_with_the_options_is_a_plain_detr(trained, tmp_path):
    x, _ = _batch()
    model = trained["model"]
    model.save_to_preset(str(tmp_path / "trained"))
    # Its weights file has exactly the groups a plain DETR's has, none of the training queries
    # (the optimizer's groups aside: training changes no other group's names).
    plain = tiny_detr()
    plain.compile()
    plain.save_to_preset(str(tmp_path / "plain"))
    saved = _h5_datasets(tmp_path / "trained" / "model.weights.h5")
    reference = _h5_datasets(tmp_path / "plain" / "model.weights.h5")
    model_keys = {k for k in saved if not k.startswith("optimizer")}
    assert model_keys == {k for k in reference if not k.startswith("optimizer")}
    assert not any("training_queries" in k for k in saved)
    loaded = DETR.from_preset(str(tmp_path / "trained"))
    assert getattr(loaded, "training_queries", None) is None
    expected = model(x)
    got = loaded(x)
    for key in MATCHING_KEYS:
        np.testing.assert_array_equal(np_(got[key]), np_(expected[key]))
    # Hiding them for the preset changed nothing in the model.
    assert model.layers[-1] is model.training_queries
    assert len(model.weights) == len(plain.weights) + len(model.training_queries.weights)
    # The backups keep them (a resumed run continues with them).
    model.save_weights(str(tmp_path / "backup.weights.h5"))
    assert any("training_queries" in k for k in _h5_datasets(tmp_path / "backup.weights.h5"))


def _training_outputs(model, x, y, state):
    model.training_queries.seed_generator.state.assign(state)
    return model({**x, "targets": y}, training=True)


@slow_on_jax
def test_matching_queries_never_see_the_denoising_queries():
    """Gradients reach the label table only through the DN queries: the matching outputs do not
    depend on it (nor on the targets), bit for bit, while the DN outputs do."""
    x, y = _batch()
    _, model = _plain_and_compiled()
    queries = model.training_queries
    state = np_(queries.seed_generator.state)
    first = _training_outputs(model, x, y, state)
    assert first["group_logits"].shape == (4, 3, 5, 4)
    assert first["dn_logits"].shape == (4, 2 * 3, 4)
    assert first["dn_aux_boxes"].shape == (4, 1, 2 * 3, 4)
    queries.label_embed.assign(queries.label_embed + 1.0)
    moved = dict(y, boxes=np.clip(y["boxes"] * 0.9 + 0.05, 0, 1) * (y["labels"] >= 0)[..., None])
    second = _training_outputs(model, x, moved, state)
    for key in (*MATCHING_KEYS, "group_logits", "group_boxes", "group_aux_logits"):
        np.testing.assert_array_equal(np_(second[key]), np_(first[key]))
    # Image 1 has boxes: its real DN slots changed.
    assert np.abs(np_(second["dn_logits"])[1, 0] - np_(first["dn_logits"])[1, 0]).max() > 1e-4
    # Group 0 of the training outputs is the inference model's output (the other groups and
    # the DN queries masked away; only the summation order of the larger attention differs).
    inference = model(x, training=True)
    for key in MATCHING_KEYS:
        np.testing.assert_allclose(np_(first[key]), np_(inference[key]), atol=2e-5)


@slow_on_jax
def test_denoising_slots_of_padding_change_nothing():
    """Ragged targets: the DN outputs of real slots do not depend on how far targets are padded,
    and images without boxes work."""
    x, y = _batch()
    _, model = _plain_and_compiled(query_groups=1)
    state = np_(model.training_queries.seed_generator.state)
    three = _training_outputs(model, x, y, state)
    # The same targets padded to 5 slots: the noise is drawn per slot, so compare with the noise
    # off (scale 0, ratio 0) in a model of its own.
    _, quiet = _plain_and_compiled(
        DenoisingConfig(groups=2, box_noise_scale=0, label_noise_ratio=0), 1
    )
    quiet.set_weights(model.get_weights())
    pad = {
        "boxes": np.concatenate([y["boxes"], np.zeros((4, 2, 4), "float32")], 1),
        "labels": np.concatenate([y["labels"], np.full((4, 2), -1, "int32")], 1),
    }
    a = _training_outputs(quiet, x, y, state)
    b = _training_outputs(quiet, x, pad, state)
    real = np.tile(y["labels"] >= 0, (1, 2))
    a_dn = np_(a["dn_boxes"])
    b_dn = np_(b["dn_boxes"]).reshape(4, 2, 5, 4)[:, :, :3].reshape(4, 6, 4)
    np.testing.assert_allclose(b_dn[real], a_dn[real], atol=1e-5)
    assert np.isfinite(np_(three["dn_logits"])).all()


@slow_on_jax
def test_noise_is_seeded_and_drawn_afresh_every_step():
    x, y = _batch()
    _, model = _plain_and_compiled(query_groups=1)
    state = np_(model.training_queries.seed_generator.state)
    a = _training_outputs(model, x, y, state)
    b = _training_outputs(model, x, y, state)
    np.testing.assert_array_equal(np_(a["dn_boxes"]), np_(b["dn_boxes"]))
    c = model({**x, "targets": y}, training=True)  # the generator moved on
    assert np.abs(np_(c["dn_boxes"])[1] - np_(b["dn_boxes"])[1]).max() > 1e-6


@pytest.mark.backends("torch")
def test_label_table_gradient_comes_from_the_denoising_loss_only():
    x, y = _batch()
    _, model = _plain_and_compiled()
    out = model({**x, "targets": y}, training=True)
    loss = DETRLoss()
    table = model.training_queries.label_embed.value
    matched = {k: v for k, v in out.items() if not k.startswith("dn_")}
    (grad,) = __import__("torch").autograd.grad(
        loss(y, matched), [table], allow_unused=True, retain_graph=True
    )
    assert grad is None or float(grad.abs().max()) == 0.0
    (grad,) = __import__("torch").autograd.grad(loss(y, out), [table])
    rows = np.abs(np_(grad)).max(axis=1)
    assert rows.max() > 0


def _fit(model, epochs=3):
    x, y = _batch()
    history = model.fit(x, y, batch_size=2, epochs=epochs, shuffle=False, verbose=0)
    return np.array(history.history["loss"])


@pytest.fixture(scope="module")
def trained():
    """A tiny DETR trained with both options, shared by the tests that only read it (a fit's
    first step costs a trace or compile of several seconds)."""
    keras.utils.set_random_seed(8)
    model = tiny_detr()
    model.compile(denoising=DenoisingConfig(groups=2), query_groups=2)
    before = [np_(v) for v in model.training_queries.weights]
    return {"model": model, "before": before, "losses": _fit(model)}


@slow_unless_torch
def test_fit_with_both_options_trains_every_weight(trained):
    model, before, losses = trained["model"], trained["before"], trained["losses"]
    assert np.isfinite(losses).all()
    after = [np_(v) for v in model.training_queries.weights]
    for a, b in zip(before, after):
        assert np.abs(a - b).max() > 0
    # The loss holds the DN terms: higher than the same model's matched loss alone.
    x, y = _batch()
    out = model({**x, "targets": y}, training=True)
    matched = {k: v for k, v in out.items() if not k.startswith(("dn_", "group_"))}
    assert float(np_(DETRLoss()(y, out))) > float(np_(DETRLoss()(y, matched)))


@pytest.mark.parametrize(
    "policy",
    [
        pytest.param("mixed_bfloat16", marks=pytest.mark.slow),
        # XLA's CPU dot has no float16 x float16 -> float32 form ("precision F16_F16_F32 is not
        # supported by dot_general on CPU"), so float16 is checked where the CPU runs it.
        pytest.param("mixed_float16", marks=pytest.mark.backends("tensorflow", "torch")),
    ],
)
def test_fit_with_both_options_under_mixed_precision(policy):
    before = keras.config.dtype_policy()
    keras.config.set_dtype_policy(policy)
    try:
        model = tiny_detr()
        model.compile(denoising=DenoisingConfig(groups=2), query_groups=2)
        x, y = _batch()
        out = model({**x, "targets": y}, training=True)
        assert keras.backend.standardize_dtype(out["dn_logits"].dtype) == policy.split("_")[1]
        losses = _fit(model)
        assert np.isfinite(losses).all()
        assert all(v.dtype == "float32" for v in model.trainable_variables)
    finally:
        keras.config.set_dtype_policy(before)


@pytest.mark.slow
@pytest.mark.backends("jax")
def test_data_parallel_with_both_options_matches_one_device(tmp_path):
    keras.utils.set_random_seed(9)
    start = tiny_detr()
    preset = str(tmp_path / "start")
    start.save_to_preset(preset)
    x, y = _batch()

    def run():
        keras.utils.set_random_seed(10)
        model = DETR.from_preset(preset)
        model.compile(
            optimizer=keras.optimizers.AdamW(1e-3, global_clipnorm=0.1),
            denoising=DenoisingConfig(groups=2),
            query_groups=2,
        )
        history = model.fit(x, y, batch_size=4, epochs=3, shuffle=False, verbose=0)
        return np.array(history.history["loss"]), model

    expected, _ = run()
    devices = keras.distribution.list_devices()
    assert len(devices) == 8
    distribution = keras.distribution.DataParallel(devices=devices[:4])
    with distribution.scope():
        losses, model = run()
        assert len(model.training_queries.trainable_variables[0].value.sharding.device_set) == 4
    np.testing.assert_allclose(losses, expected, rtol=1e-5)
