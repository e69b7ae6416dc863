"""DETR's transformer against torch's nn.MultiheadAttention composed as DETR's forward_post."""

import keras
import numpy as np
import pytest

from kzoo.backends.common.attention import MIN_QUERIES
from kzoo.backends.environment import platform
from kzoo.models.detr.model.transformer import (
    DETRAttention,
    DETRTransformer,
    TransformerDecoderLayer,
    TransformerEncoderLayer,
)
from kzoo.ops import attention
from tests.models.detr.compiled_call import run

torch = pytest.importorskip("torch")
F = torch.nn.functional
D, HEADS, FFN = 16, 4, 24


def _t(v):
    return torch.tensor(np.asarray(keras.ops.convert_to_numpy(v)), dtype=torch.float64)


def _torch_mha(attn):
    """An nn.MultiheadAttention holding ``attn``'s weights (q/k/v stacked as in_proj)."""
    mha = torch.nn.MultiheadAttention(attn.d_model, attn.num_heads, dtype=torch.float64).eval()
    with torch.no_grad():
        mha.in_proj_weight.copy_(
            torch.cat(
                [_t(attn.q_proj.kernel).T, _t(attn.k_proj.kernel).T, _t(attn.v_proj.kernel).T]
            )
        )
        mha.in_proj_bias.copy_(
            torch.cat([_t(attn.q_proj.bias), _t(attn.k_proj.bias), _t(attn.v_proj.bias)])
        )
        mha.out_proj.weight.copy_(_t(attn.out_proj.kernel).T)
        mha.out_proj.bias.copy_(_t(attn.out_proj.bias))
    return mha


def _mha(attn, q, k, v, key_mask=None):
    """Batch-first call of torch's MHA (which wants sequence-first) with a key padding mask."""
    mha = _torch_mha(attn)
    padding = None if key_mask is None else ~torch.tensor(key_mask, dtype=torch.bool)
    out, _ = mha(q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1), key_padding_mask=padding)
    return out.transpose(0, 1)


def _ln(layer, x):
    return F.layer_norm(x, (x.shape[-1],), _t(layer.gamma), _t(layer.beta), eps=1e-5)


def _ffn(layer, x):
    hidden = F.relu(x @ _t(layer.linear1.kernel) + _t(layer.linear1.bias))
    return hidden @ _t(layer.linear2.kernel) + _t(layer.linear2.bias)


def _encoder_ref(layer, x, pos, key_mask):
    qk = x + pos
    x = _ln(layer.norm1, x + _mha(layer.self_attn, qk, qk, x, key_mask))
    return _ln(layer.norm2, x + _ffn(layer, x))


def _decoder_ref(layer, tgt, memory, pos, query_pos, key_mask):
    qk = tgt + query_pos
    tgt = _ln(layer.norm1, tgt + _mha(layer.self_attn, qk, qk, tgt))
    cross = _mha(layer.multihead_attn, tgt + query_pos, memory + pos, memory, key_mask)
    tgt = _ln(layer.norm2, tgt + cross)
    return _ln(layer.norm3, tgt + _ffn(layer, tgt))


def _randomise_norms(layer, rng):
    for sub in layer._flatten_layers():
        if hasattr(sub, "gamma") and hasattr(sub, "beta"):
            n = sub.gamma.shape[0]
            sub.gamma.assign(rng.uniform(0.5, 1.5, n).astype("float32"))
            sub.beta.assign(rng.normal(0, 0.2, n).astype("float32"))


def _data(rng, *shape):
    return rng.normal(size=shape).astype("float32")


def _key_mask(batch, tokens):
    mask = np.ones((batch, tokens), bool)
    mask[1, tokens // 2 :] = False
    return mask


def test_attention_matches_torch_multihead_attention_with_key_padding():
    rng = np.random.default_rng(0)
    attn = DETRAttention(D, HEADS)
    q, kv = _data(rng, 2, 5, D), _data(rng, 2, 9, D)
    mask = _key_mask(2, 9)
    out = run(attn, q, kv, kv, mask)
    expected = _mha(attn, torch.tensor(q).double(), *[torch.tensor(kv).double()] * 2, mask)
    np.testing.assert_allclose(out, expected.detach().numpy(), atol=1e-5)
    # Padded keys do not matter, whatever they hold.
    junk = kv.copy()
    junk[1, 5:] = 100.0
    np.testing.assert_allclose(run(attn, q, junk, junk, mask), out, atol=1e-5)


def test_long_self_attention_matches_torch_multihead_attention():
    # DC5's encoder sequences are long: from MIN_QUERIES tokens on, JAX and TensorFlow on the
    # CPU compute the attention in blocks of queries (kzoo.ops.attention).
    rng = np.random.default_rng(6)
    attn = DETRAttention(D, HEADS)
    tokens = MIN_QUERIES + 9
    x = _data(rng, 2, tokens, D)
    mask = _key_mask(2, tokens)
    heads = np.zeros((2, tokens, HEADS, D // HEADS), "float32")
    keep = mask[:, None, None, :]
    blocked = {"jax": "jax-query-blocks", "tensorflow": "tensorflow-query-blocks"}
    want = blocked.get(keras.backend.backend(), "keras") if platform() == "cpu" else "keras"
    assert attention.implementation(heads, heads, heads, mask=keep).name == want
    out = run(attn, x, x, x, mask)
    expected = _mha(attn, *[torch.tensor(x).double()] * 3, mask)
    np.testing.assert_allclose(out, expected.detach().numpy(), atol=1e-5)


def test_encoder_layer_matches_reference():
    rng = np.random.default_rng(1)
    layer = TransformerEncoderLayer(D, HEADS, FFN, dropout=0.1)
    x, pos = _data(rng, 2, 7, D), _data(rng, 2, 7, D)
    mask = _key_mask(2, 7)
    layer.build()
    _randomise_norms(layer, rng)
    out = run(layer, x, pos, mask)  # inference: dropout off
    expected = _encoder_ref(layer, torch.tensor(x).double(), torch.tensor(pos).double(), mask)
    np.testing.assert_allclose(out, expected.detach().numpy(), atol=2e-5)


def test_decoder_layer_matches_reference():
    rng = np.random.default_rng(2)
    layer = TransformerDecoderLayer(D, HEADS, FFN, dropout=0.1)
    layer.build()
    _randomise_norms(layer, rng)
    tgt, query_pos = _data(rng, 2, 4, D), _data(rng, 2, 4, D)
    memory, pos = _data(rng, 2, 7, D), _data(rng, 2, 7, D)
    mask = _key_mask(2, 7)
    out = run(layer, tgt, memory, pos, query_pos, mask)
    args = [torch.tensor(a).double() for a in (tgt, memory, pos, query_pos)]
    expected = _decoder_ref(layer, *args, mask)
    np.testing.assert_allclose(out, expected.detach().numpy(), atol=2e-5)


def test_transformer_stacks_normed_outputs_of_every_decoder_layer():
    rng = np.random.default_rng(3)
    transformer = DETRTransformer(D, HEADS, 2, 3, FFN, dropout=0.1)
    transformer.build()
    _randomise_norms(transformer, rng)
    features, pos = _data(rng, 2, 6, D), _data(rng, 2, 6, D)
    query_pos = _data(rng, 2, 5, D)
    mask = _key_mask(2, 6)
    out = run(transformer, features, pos, query_pos, mask)
    assert out.shape == (3, 2, 5, D)
    memory = torch.tensor(features).double()
    pos_t, query_t = torch.tensor(pos).double(), torch.tensor(query_pos).double()
    for layer in transformer.encoder_layers:
        memory = _encoder_ref(layer, memory, pos_t, mask)
    tgt = torch.zeros_like(query_t)  # DETR's decoder starts from zeros
    for i, layer in enumerate(transformer.decoder_layers):
        # The decoder norm is applied to each output, but the next layer gets the un-normed one.
        tgt = _decoder_ref(layer, tgt, memory, pos_t, query_t, mask)
        expected = _ln(transformer.decoder_norm, tgt).detach().numpy()
        np.testing.assert_allclose(out[i], expected, atol=3e-5, err_msg=f"decoder layer {i}")


def test_training_applies_dropout_and_config_round_trips():
    layer = TransformerEncoderLayer(D, HEADS, FFN, dropout=0.5)
    x = np.random.default_rng(4).normal(size=(1, 6, D)).astype("float32")
    pos = np.zeros_like(x)
    eval_out = keras.ops.convert_to_numpy(layer(x, pos, training=False))
    train_out = keras.ops.convert_to_numpy(layer(x, pos, training=True))
    assert np.abs(eval_out - train_out).max() > 1e-3
    restored = TransformerEncoderLayer.from_config(layer.get_config())
    restored.build()
    restored.set_weights(layer.get_weights())
    np.testing.assert_allclose(keras.ops.convert_to_numpy(restored(x, pos)), eval_out, atol=1e-6)
    for cls, kwargs in (
        (DETRAttention, {"d_model": 10, "num_heads": 3}),
        (DETRTransformer, {"num_decoder_layers": 0}),
        (TransformerEncoderLayer, {"d_model": 8, "num_heads": 2, "ffn_dim": 8, "dropout": 1.0}),
    ):
        with pytest.raises(ValueError):
            cls(**kwargs)


def test_training_path_without_dropout_matches_fused_attention():
    # With dropout configured, training takes the explicit softmax path (the fused one has no
    # dropout); with the dropout layer's rate at 0 both paths must agree.
    rng = np.random.default_rng(5)
    attn = DETRAttention(D, HEADS, dropout=0.5)
    q, kv = _data(rng, 2, 5, D), _data(rng, 2, 9, D)
    mask = _key_mask(2, 9)
    fused = keras.ops.convert_to_numpy(attn(q, kv, kv, key_mask=mask, training=False))
    attn.attention_dropout.rate = 0.0
    explicit = keras.ops.convert_to_numpy(attn(q, kv, kv, key_mask=mask, training=True))
    np.testing.assert_allclose(explicit, fused, atol=1e-5)
