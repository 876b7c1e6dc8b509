"""BertAdam: no bias correction, decoupled decay off LayerNorm/biases, quantizer groups."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from binarybert_jax import optim


def _params():
    return {"dense": {"kernel": jnp.ones((2, 2)), "bias": jnp.ones(2), "input_clip": jnp.array([-2.5, 2.5])},
            "LayerNorm": {"scale": jnp.ones(2), "bias": jnp.zeros(2)}}


def test_labels():
    labels = optim.param_labels(_params())
    assert labels == {"dense": {"kernel": "decay", "bias": "no_decay", "input_clip": "quant"},
                      "LayerNorm": {"scale": "no_decay", "bias": "no_decay"}}


def test_first_steps_match_bert_adam_by_hand():
    lr, qlr, wd, eps = 0.1, 0.01, 0.01, 1e-6
    tx = optim.bert_adam(lr, qlr, wd, eps)
    params = _params()
    state = tx.init(params)
    grads = jax.tree_util.tree_map(lambda p: jnp.full_like(p, 0.5), params)
    m = v = 0.0
    p_kernel, p_clip, p_bias = 1.0, 2.5, 1.0
    for _ in range(3):
        updates, state = tx.update(grads, state, params)
        params = optax.apply_updates(params, updates)
        m, v = 0.9 * m + 0.1 * 0.5, 0.999 * v + 0.001 * 0.25
        p_kernel = p_kernel - lr * (m / (np.sqrt(v) + eps) + wd * p_kernel)
        p_clip = p_clip - qlr * (m / (np.sqrt(v) + eps))
        p_bias = p_bias - lr * (m / (np.sqrt(v) + eps))
    np.testing.assert_allclose(params["dense"]["kernel"], p_kernel, rtol=1e-5)
    np.testing.assert_allclose(params["dense"]["input_clip"][1], p_clip, rtol=1e-5)
    # No weight decay on biases and LayerNorm.
    np.testing.assert_allclose(params["dense"]["bias"], p_bias, rtol=1e-5)
    nu = optim.second_moments(state)
    np.testing.assert_allclose(nu["dense"]["kernel"], v, rtol=1e-5)


def test_schedule_warmup_then_linear_decay():
    sched = optim.warmup_linear_schedule(1.0, 100, 0.1)
    assert float(sched(0)) == 0.0
    assert float(sched(10)) == pytest.approx(1.0)
    assert float(sched(55)) == pytest.approx(0.5)
    assert float(sched(100)) == pytest.approx(0.0)


def test_bias_corrected_variant_equals_optax_adamw():
    params = {"dense": {"kernel": jnp.linspace(-1, 1, 6).reshape(2, 3)}}
    ours = optim.bert_adam(0.01, 0.01, 0.01, eps=1e-8, bias_correction=True)
    ref = optax.adamw(0.01, eps=1e-8, weight_decay=0.01)
    s1, s2, p1, p2 = ours.init(params), ref.init(params), params, params
    for i in range(4):
        g = jax.tree_util.tree_map(lambda p: jnp.sin(p * (i + 1)), p1)
        u1, s1 = ours.update(g, s1, p1)
        u2, s2 = ref.update(g, s2, p2)
        p1, p2 = optax.apply_updates(p1, u1), optax.apply_updates(p2, u2)
    np.testing.assert_allclose(p1["dense"]["kernel"], p2["dense"]["kernel"], rtol=1e-6)
