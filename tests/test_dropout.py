"""The model's dropout (``dropout.Dropout``): Flax's masks, bit for bit."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from binarybert_jax import dropout


@pytest.mark.parametrize("shape,rate", [((3, 16, 32), 0.1), ((2, 4, 16, 16), 0.1), ((5, 7), 0.5)])
def test_fast_dropout_masks_equal_flax(shape, rate):
    import flax.linen as nn
    x = jnp.ones(shape)
    for seed in range(3):
        rngs = {"dropout": jax.random.key(seed)}
        ours = dropout.Dropout(rate).apply({}, x, deterministic=False, rngs=rngs)
        flax = nn.Dropout(rate).apply({}, x, deterministic=False, rngs=rngs)
        np.testing.assert_array_equal(ours, flax)
