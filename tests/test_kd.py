"""Distillation losses against hand computations."""

import jax.numpy as jnp
import numpy as np
import pytest

from binarybert_jax import kd


def test_hidden_mse_sums_layer_means_and_masks_padding():
    s = [jnp.ones((2, 3, 4)), jnp.zeros((2, 3, 4))]
    t = [jnp.zeros((2, 3, 4)), 2 * jnp.ones((2, 3, 4))]
    assert float(kd.hidden_mse(s, t)) == pytest.approx(1.0 + 4.0)
    mask = jnp.array([[1, 1, 0], [1, 0, 0]], bool)
    t_pad = [t[0].at[:, 2].set(9.0), t[1]]
    assert float(kd.hidden_mse(s, t_pad, mask)) == pytest.approx(5.0)


def test_attention_mse_zeroes_masked_scores():
    s = [jnp.array([[[[1.0, -10000.0], [3.0, -10000.0]]]])]
    t = [jnp.array([[[[0.0, -10001.0], [1.0, -9999.0]]]])]
    # Masked entries become 0 in both; mean over 4 entries of (1, 0, 4, 0).
    assert float(kd.attention_mse(s, t)) == pytest.approx(5.0 / 4)
    with pytest.raises(ValueError, match="matching head counts"):
        kd.attention_mse([jnp.zeros((1, 2, 3, 3))], [jnp.zeros((1, 4, 3, 3))])


def test_soft_cross_entropy_and_temperature():
    s = jnp.array([[1.0, 2.0, 0.5]])
    t = jnp.array([[0.3, 0.1, 2.0]])
    sn, tn = np.asarray(s[0], np.float64), np.asarray(t[0], np.float64)
    p = np.exp(tn) / np.exp(tn).sum()
    logq = sn - np.log(np.exp(sn).sum())
    assert float(kd.soft_cross_entropy(s, t)) == pytest.approx(-(p * logq).sum(), rel=1e-6)
    p2 = np.exp(tn / 2) / np.exp(tn / 2).sum()
    logq2 = sn / 2 - np.log(np.exp(sn / 2).sum())
    assert float(kd.soft_cross_entropy(s, t, 2.0)) == pytest.approx(-(p2 * logq2).sum(), rel=1e-6)


def test_regression_uses_mse_not_soft_ce():
    student = {"logits": jnp.array([[1.0], [3.0]])}
    teacher = {"logits": jnp.array([[2.0], [3.0]])}
    batch = {"attention_mask": jnp.ones((2, 4), jnp.int32)}
    terms = kd.kd_losses(student, teacher, batch, objective="prediction", is_regression=True)
    assert float(terms["prediction_loss"]) == pytest.approx(0.5)
    # Soft cross-entropy on one logit is identically zero: the released code's bug we avoid.
    assert float(kd.soft_cross_entropy(student["logits"], teacher["logits"])) == 0.0


def test_objectives_and_example_mask():
    student = {"logits": jnp.array([[0.0, 1.0], [5.0, 0.0]]), "hidden_states": [jnp.zeros((2, 4, 3))],
               "attention_scores": [jnp.zeros((2, 1, 4, 4))]}
    teacher = {"logits": jnp.array([[0.0, 1.0], [0.0, 5.0]]), "hidden_states": [jnp.ones((2, 4, 3))],
               "attention_scores": [jnp.ones((2, 1, 4, 4))]}
    batch = {"attention_mask": jnp.ones((2, 4), jnp.int32), "labels": jnp.array([1, 0]),
             "example_mask": jnp.array([1.0, 0.0])}
    joint = kd.kd_losses(student, teacher, batch, objective="joint", is_regression=False)
    assert set(joint) == {"hidden_loss", "attention_loss", "prediction_loss", "total"}
    assert float(joint["total"]) == pytest.approx(sum(float(v) for k, v in joint.items() if k != "total"))
    sup = kd.kd_losses(student, None, batch, objective="supervised", is_regression=False)
    assert float(sup["label_loss"]) == pytest.approx(np.log(1 + np.exp(-1.0)), rel=1e-6)  # row 1 masked out
    with pytest.raises(ValueError, match="needs a teacher"):
        kd.kd_losses(student, None, batch, objective="prediction", is_regression=False)
    with pytest.raises(ValueError, match="unknown objective"):
        kd.kd_losses(student, teacher, batch, objective="logits", is_regression=False)
