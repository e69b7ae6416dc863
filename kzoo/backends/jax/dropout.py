"""Dropout masks from 16-bit fields of threefry hashes (four mask elements per hash).

``jax.random.bernoulli`` spends one threefry-2x32 hash (20 rounds over two 32-bit words) on
every mask element and keeps 32 of its 64 bits; the hashing is about 8 % of DETR's training
step on the CPU (2026-12-02, ``scripts/profile/detr_train.py --backend jax``). Here one hash
turns a pair of counters into two 32-bit words (``jax.extend.random.threefry2x32_p``) and each
word gives two 16-bit fields. A field below ``round(rate * 2**16)`` drops its element; kept
values are divided by ``(2**16 - threshold) / 2**16``, the keep probability the fields give, so
the expected output equals the input. An element's counter and field follow from its position
alone, so the mask does not depend on how the array is sharded.
"""

import math

import jax.numpy as jnp
from jax.extend.random import threefry2x32_p

FIELD_BITS = 16


def threshold(rate):
    """The field value below which an element is dropped."""
    return round(rate * 2**FIELD_BITS)


def dropout_fields(inputs, rate, noise_shape, seed_generator):
    """``inputs`` with a dropout mask drawn from ``seed_generator``'s next key."""
    cut = threshold(rate)
    if cut == 0:
        return inputs
    shape = tuple(inputs.shape) if noise_shape is None else tuple(noise_shape)
    size = math.prod(shape)
    key = jnp.asarray(seed_generator.next(), jnp.uint32)
    hashes = -(-size // 4)
    counter = jnp.arange(hashes, dtype=jnp.uint32)
    # Counter pairs (i, i + hashes) are distinct for every hash, hence independent words.
    first, second = threefry2x32_p.bind(key[0], key[1], counter, counter + jnp.uint32(hashes))
    low = 2**FIELD_BITS - 1
    fields = [first & low, first >> FIELD_BITS, second & low, second >> FIELD_BITS]
    keep = jnp.concatenate(fields)[:size].reshape(shape) >= cut
    kept = inputs / ((2**FIELD_BITS - cut) / 2**FIELD_BITS)
    return jnp.where(keep, kept, jnp.zeros((), inputs.dtype))
