"""DETR.from_preset(preset, num_classes=N): every weight loaded but a fresh class head."""

import logging

import keras
import numpy as np
import pytest

from kzoo.models import DETR
from kzoo.models.detr.training.finetune import label_metadata, with_new_class_head
from kzoo.presets import preset_io

TINY = dict(
    num_queries=4,
    d_model=16,
    num_heads=2,
    num_encoder_layers=1,
    num_decoder_layers=2,
    ffn_dim=16,
    dropout=0.0,
    backbone="small",
)


def _numpy(v):
    return np.asarray(keras.ops.convert_to_numpy(v))


@pytest.fixture
def preset(tmp_path):
    model = DETR(num_classes=5, **TINY)
    model.build((None, None, None, 3))
    rng = np.random.default_rng(0)
    # Weights unlike any initialiser's, so that "loaded" cannot be confused with "initialised".
    for v in model.weights:
        value = rng.normal(size=v.shape) * 0.05
        v.assign(np.abs(value) + 0.5 if "variance" in v.path else value)
    path = tmp_path / "p"
    preset_io.save_preset(
        model,
        path,
        extra_metadata={"class_names": list("abcde"), "category_ids": [1, 4, 9, 16, 25]},
    )
    return model, str(path)


def test_a_new_class_count_keeps_every_weight_but_the_class_head(preset, caplog):
    source, path = preset
    with caplog.at_level(logging.WARNING, logger="kzoo.detr"):
        model = DETR.from_preset(path, num_classes=2)
    messages = [r.getMessage() for r in caplog.records if r.name == "kzoo.detr"]
    assert len(messages) == 1
    assert "5 classes" in messages[0] and "class_embed" in messages[0] and "3 logits" in messages[0]
    assert model.num_classes == 2
    old, new = source.weights_by_path(), model.weights_by_path()
    assert set(old) == set(new)
    for key in old:
        if key.startswith("class_embed/"):
            assert new[key].shape[-1] == 3 and old[key].shape[-1] == 6
        else:
            np.testing.assert_array_equal(_numpy(new[key]), _numpy(old[key]), err_msg=key)
    kernel = _numpy(new["class_embed/kernel"])
    # Glorot-uniform limit for a (16, 3) kernel; the preset's values are N(0, 0.05) draws.
    assert np.abs(kernel).max() <= np.sqrt(6 / (16 + 3)) + 1e-6 and kernel.std() > 0.05
    assert np.array_equal(_numpy(new["class_embed/bias"]), np.zeros(3))
    # The box branch is the preset's, so boxes are the same; logits have the new width.
    x = np.random.default_rng(1).normal(size=(1, 64, 64, 3)).astype("float32")
    out_old, out_new = source(x), model(x)
    np.testing.assert_allclose(_numpy(out_new["boxes"]), _numpy(out_old["boxes"]), atol=1e-6)
    assert tuple(out_new["logits"].shape) == (1, 4, 3)


def test_the_same_class_count_loads_the_preset_as_it_is(preset, caplog):
    source, path = preset
    with caplog.at_level(logging.WARNING, logger="kzoo.detr"):
        model = DETR.from_preset(path, num_classes=5)
        plain = DETR.from_preset(path)
    assert not [r for r in caplog.records if r.name == "kzoo.detr"]
    for other in (model, plain):
        np.testing.assert_array_equal(
            _numpy(other.weights_by_path()["class_embed/kernel"]),
            _numpy(source.weights_by_path()["class_embed/kernel"]),
        )
    # load_weights=False builds the new architecture without reading the weights.
    fresh = DETR.from_preset(path, num_classes=3, load_weights=False)
    assert fresh.num_classes == 3


def test_bad_class_counts_and_other_overrides(preset):
    source, path = preset
    for bad in (0, -1, 2.0, True, "3"):
        with pytest.raises(ValueError, match="num_classes must be an int >= 1"):
            DETR.from_preset(path, num_classes=bad)
    # Overrides other than num_classes still go through the preset's own checks.
    with pytest.raises(ValueError, match="num_queries"):
        DETR.from_preset(path, num_classes=2, num_queries=7)
    model = DETR.from_preset(path, num_classes=2, dropout=0.2)
    assert model.dropout == 0.2
    with pytest.raises(ValueError, match="num_classes"):
        with_new_class_head(source, 0)


def test_label_metadata_reads_names_and_ids_with_fallbacks(preset, tmp_path):
    source, path = preset
    assert label_metadata(path, 5) == (list("abcde"), [1, 4, 9, 16, 25])
    # Entries that do not fit the model are ignored.
    names, ids = label_metadata(path, 4)
    assert names == [f"class {i}" for i in range(4)] and ids is None
    preset_io.save_preset(source, tmp_path / "bare")
    assert label_metadata(str(tmp_path / "bare"), 5)[1] is None
    names, ids = label_metadata(str(tmp_path / "bare"), 91)
    assert ids == list(range(91)) and names[1] == "person"
    preset_io.save_preset(
        source, tmp_path / "dup", extra_metadata={"category_ids": [1, 1, 2, 3, 4]}
    )
    assert label_metadata(str(tmp_path / "dup"), 5)[1] is None
