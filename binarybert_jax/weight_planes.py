"""Quantized weights kept resident as bit planes of their integer codes, expanded inside the forward.

A packed model that runs on integer codes (``export.load_packed_codes``) keeps each quantized
weight on the device as ``k`` bit planes of its level indices rather than as float32 values: a
binary weight takes 1 bit an entry, a ternary one 2, a k-bit one k (1/32, 1/16, k/32 of float32).
The forward pass (``model.QuantDense``, ``model.Embeddings``) expands the planes of one layer at a
time into the signed integer codes the integer-domain products read (``integer_dot``), and an
embedding gathers its rows' planes before expanding them, so the full table is never expanded.

Layout: ``planes`` is uint8 ``(k, *lead, ceil(n / 8))`` for a weight of shape ``(*lead, n)``:
plane ``b`` holds bit ``b`` (least significant first) of each entry's level index, 8 entries a
byte along the last axis, entry ``j`` in bit ``j % 8`` of byte ``j // 8`` (the last byte zero
padded). The signed code of a level index ``i`` is ``2i − 1`` with one plane (binary: −1, +1),
else ``i − (2^(k−1) − 1)`` (two planes: −1, 0, +1; k planes: the 2^k − 1 symmetric integers).
A binary weight with exact zeros (BWN's sign(0) = 0) is kept with two planes, as a ternary one.
"""

from __future__ import annotations

import numpy as np
import jax
import jax.numpy as jnp


def code_offset(planes: int) -> int:
    """The level index of code 0 for ``planes`` planes (none for one plane: −1, +1)."""
    return 2 ** (planes - 1) - 1


def to_planes(codes: np.ndarray, planes: int) -> np.ndarray:
    """The resident planes of signed integer ``codes`` (numpy, at load time).

    Args:
      codes: signed integers, any shape ``(*lead, n)``; with one plane ±1 only, else
        |codes| ≤ ``code_offset(planes)``.
      planes: k, 1..8.
    Returns:
      uint8 ``(planes, *lead, ceil(n / 8))``.
    Raises:
      ValueError: a code the planes cannot hold.
    """
    codes = np.asarray(codes).astype(np.int32)
    index = (codes + 1) // 2 if planes == 1 else codes + code_offset(planes)
    if planes == 1 and not np.all(np.abs(codes) == 1):
        raise ValueError("one plane holds the codes −1 and +1 only")
    if codes.size and (index.min() < 0 or index.max() >= 2 ** planes):
        raise ValueError(f"codes in [{codes.min()}, {codes.max()}] do not fit {planes} planes")
    bits = (index[None] >> np.arange(planes).reshape((planes,) + (1,) * codes.ndim)) & 1
    return np.packbits(bits.astype(np.uint8), axis=-1, bitorder="little")


def expand(planes: jax.Array, n: int, dtype=jnp.bfloat16) -> jax.Array:
    """The signed integer codes ``(*lead, n)`` in ``dtype`` of resident ``planes`` (jittable)."""
    bits = (planes[..., None] >> jnp.arange(8, dtype=jnp.uint8)) & 1
    bits = bits.reshape(planes.shape[:-1] + (-1,))[..., :n]
    k = planes.shape[0]
    if k == 1:
        return (bits[0].astype(jnp.int8) * 2 - 1).astype(dtype)
    index = sum(bits[b].astype(jnp.int32) << b for b in range(k))
    return (index - code_offset(k)).astype(dtype)


def planes_for(codes: np.ndarray, bits: int) -> int:
    """The fewest planes that hold ``bits``-bit weight codes: ``bits``, except 2 for a binary
    weight with exact zeros."""
    if bits == 1 and codes.size and not np.all(np.abs(codes) == 1):
        return 2
    return bits
