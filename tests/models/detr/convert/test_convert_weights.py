"""WEIGHT_TABLE, the one table of which checkpoint tensor fills which DETR variable."""

import numpy as np
import pytest

from kzoo.models import DETR
from kzoo.models.detr import convert
from kzoo.models.detr.convert import weights as convert_weights
from kzoo.models.detr.convert.weights import WEIGHT_TABLE, assign_weights, canonical_name
from kzoo.presets.preset_io import placeholder_initializers


@pytest.fixture(scope="module")
def model():
    detr = DETR(
        num_classes=3,
        num_queries=5,
        d_model=16,
        num_heads=4,
        num_encoder_layers=2,
        num_decoder_layers=2,
        ffn_dim=24,
        backbone="small",
    )
    with placeholder_initializers(detr):
        detr.build()
    return detr


def test_rows_map_keys_both_ways():
    for key, name, shape, torch_shape in (
        ("backbone/conv1/kernel", "backbone.conv1.weight", (7, 7, 3, 16), (16, 3, 7, 7)),
        (
            "backbone/layer2_0_downsample_1/moving_variance",
            "backbone.layer2.0.downsample.1.running_var",
            (8,),
            (8,),
        ),
        (
            "transformer/decoder_layer_1/multihead_attn/out_proj/kernel",
            "transformer.decoder.layers.1.multihead_attn.out_proj.weight",
            (16, 12),
            (12, 16),
        ),
        ("transformer/decoder_norm/gamma", "transformer.decoder.norm.weight", (4,), (4,)),
        ("query_embed/embeddings", "query_embed.weight", (5, 16), (5, 16)),
        ("bbox_embed_2/bias", "bbox_embed.layers.2.bias", (4,), (4,)),
    ):
        found, layout = canonical_name(key)
        assert found == name
        torch_value = np.arange(np.prod(torch_shape), dtype="float32").reshape(torch_shape)
        keras_value = torch_value if layout is None else layout(torch_value)
        assert keras_value.shape == shape
    # A conv kernel is permuted (O, I, kh, kw) -> (kh, kw, I, O), a Dense kernel transposed.
    w = np.random.default_rng(0).normal(size=(4, 3, 2, 5))
    np.testing.assert_array_equal(
        canonical_name("input_proj/kernel")[1](w)[1, 4, 2, 3], w[3, 2, 1, 4]
    )
    assert canonical_name("head_of_something/kernel") is None
    assert canonical_name("transformer/encoder_layer_0/self_attn/w_proj/kernel") is None


def test_every_variable_has_exactly_one_row(model):
    keys = model.weights_by_path()
    names = [canonical_name(key) for key in keys]
    assert all(name is not None for name in names), [k for k, n in zip(keys, names) if n is None]
    # No two variables take the same tensor.
    assert len({name for name, _ in names}) == len(keys)
    # Each key matches one row, and every row is used by this model (the small ResNet has
    # every block kind; both transformer stacks are there).
    used = set()
    for key in keys:
        layer = key.rpartition("/")[0]
        rows = [
            k for k, (_, regex, _) in enumerate(convert_weights._TABLE) if regex.fullmatch(layer)
        ]
        assert len(rows) == 1, (key, rows)
        used.update(rows)
    assert used == set(range(len(WEIGHT_TABLE)))


def test_assign_weights_fills_every_variable_and_reports_leftovers(model):
    rng = np.random.default_rng(1)
    canonical = {}
    expected = {}
    for key, variable in model.weights_by_path().items():
        name, layout = canonical_name(key)
        shape = tuple(variable.shape)
        if layout is not None:
            # The torch shape the layout turns into this variable's shape.
            probe = np.zeros(shape[::-1] if len(shape) == 2 else shape)
            if len(shape) == 4:
                probe = np.zeros((shape[3], shape[2], shape[0], shape[1]))
            assert layout(probe).shape == shape
            shape = probe.shape
        canonical[name] = rng.normal(size=shape).astype("float32")
        expected[key] = canonical[name] if layout is None else layout(canonical[name])
    assert assign_weights(model, canonical) == len(expected)
    for key, variable in model.weights_by_path().items():
        np.testing.assert_array_equal(np.asarray(variable), expected[key], err_msg=key)
    extra = {**canonical, "transformer.encoder.layers.9.linear1.weight": np.zeros((1, 1))}
    del extra["class_embed.bias"]
    with pytest.raises(ValueError, match="unmapped tensors.*missing tensors \\(1\\): class_embed"):
        assign_weights(model, extra)


def test_public_names_stay_importable_from_convert():
    # presets register "kzoo.models.detr.convert:convert_detr"; tests and users import these.
    for name in ("convert_detr", "load_detr_checkpoint", "read_state_dict", "to_canonical"):
        assert callable(getattr(convert, name))
    assert convert.WEIGHT_TABLE is WEIGHT_TABLE
