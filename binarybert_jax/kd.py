"""Distillation and supervised losses on arrays (no model, no loop).

Stage 1 ("intermediate"): Σ over the embedding output and every layer of MSE(hidden states) plus
Σ over layers of MSE(pre-softmax attention scores), with entries ≤ −100 (masked keys, which carry the
additive mask) set to 0 in both, as in the released code.
Stage 2 ("prediction"): soft cross-entropy −softmax(t/T)·log_softmax(s/T); MSE for regression (the
released BinaryBERT code applies soft cross-entropy to a single logit, which is identically zero).

Span heads (SQuAD; logits ``(B, T, 2)``, labels ``(B, 2)`` the start and end token): the label
loss is the mean of the start and end cross-entropies over the tokens, as BERT's ``run_squad.py``;
stage 2 is the mean of the soft cross-entropies on the start and on the end logits (TernaryBERT's
code sums the two: a factor 2, which Adam's update does not see). Stage 1 is the same as GLUE's.

BiBERT's one stage (``dmd``, direction-matching distillation): for Q, K and V of every layer,
before binarization, the Gram matrix P = X·Xᵀ/√d per head, and the loss ‖P_s/‖P_s‖ − P_t/‖P_t‖‖
with Frobenius norms over the whole batch tensor (``direction_loss``); the same normalized
difference on the hidden states (embedding output and every layer); soft cross-entropy on the
logits, averaged over examples and classes as the released code's ``.mean()`` (MSE against the
teacher for regression); plus 0.5× the ground-truth cross-entropy (MSE for regression).

MSE is a mean over every element, padding included, as the released code computes it; with
``token_mask`` it is a mean over real tokens only (real query/key pairs for attention), which makes
the loss independent of how much padding a batch carries (needed with length bucketing).
"""

from __future__ import annotations

from typing import Mapping, Optional, Sequence

import jax
import jax.numpy as jnp

MASKED_SCORE = -100.0
MODES = ("two_stage", "joint", "intermediate", "prediction", "supervised", "dmd")
# Two-stage distillation's objectives, stage 1's then stage 2's, and the terms of each (``kd_losses``).
TWO_STAGE = ("intermediate", "prediction")
TERMS = {"intermediate": ("hidden_loss", "attention_loss"), "prediction": ("prediction_loss",)}


def step_objectives(objective: str) -> tuple[str, ...]:
    """The objectives of the train step that a phase minimising ``objective`` runs in training:
    both of two-stage distillation's for either stage (its phases share one program), else its own."""
    return TWO_STAGE if objective in TWO_STAGE else (objective,)
# Weight of the ground-truth term in BiBERT's objective (the released ``gt_beta``).
DMD_LABEL_WEIGHT = 0.5


def _masked_mse(a, b, mask):
    diff = jnp.square(a.astype(jnp.float32) - b.astype(jnp.float32))
    if mask is None:
        return jnp.mean(diff)
    mask = jnp.broadcast_to(mask, diff.shape).astype(jnp.float32)
    return jnp.sum(diff * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def hidden_mse(student: Sequence[jax.Array], teacher: Sequence[jax.Array],
               token_mask: Optional[jax.Array] = None) -> jax.Array:
    """Σ_l MSE(student[l], teacher[l]) over hidden states ``(B, T, H)``.

    Args:
      student, teacher: equal-length sequences (embedding output then each layer).
      token_mask: optional ``(B, T)``; when given, the mean runs over real tokens only.
    """
    if len(student) != len(teacher):
        raise ValueError(f"hidden-state distillation needs as many layers in the student "
                         f"({len(student) - 1}) as in the teacher ({len(teacher) - 1})")
    mask = None if token_mask is None else token_mask[:, :, None]
    return sum(_masked_mse(s, t, mask) for s, t in zip(student, teacher))


def attention_mse(student: Sequence[jax.Array], teacher: Sequence[jax.Array],
                  token_mask: Optional[jax.Array] = None) -> jax.Array:
    """Σ_l MSE of pre-softmax attention scores ``(B, heads, T, T)``, masked entries zeroed."""
    if len(student) != len(teacher):
        raise ValueError(f"attention distillation needs equal layer counts: student {len(student)}, "
                         f"teacher {len(teacher)}")
    if student and student[0].shape[1] != teacher[0].shape[1]:
        raise ValueError(f"attention-score distillation needs matching head counts: the student has "
                         f"{student[0].shape[1]} heads, the teacher {teacher[0].shape[1]}. Use a "
                         f"teacher of the student's width, or turn attention distillation off.")
    mask = None
    if token_mask is not None:
        mask = (token_mask[:, None, :, None] & token_mask[:, None, None, :])
    total = 0.0
    for s, t in zip(student, teacher):
        s = jnp.where(s <= MASKED_SCORE, 0.0, s)
        t = jnp.where(t <= MASKED_SCORE, 0.0, t)
        total = total + _masked_mse(s, t, mask)
    return total


def soft_cross_entropy(student_logits, teacher_logits, temperature: float = 1.0,
                       example_mask: Optional[jax.Array] = None) -> jax.Array:
    """Mean over examples of −softmax(t/T)·log_softmax(s/T)."""
    t = jax.nn.softmax(teacher_logits.astype(jnp.float32) / temperature, axis=-1)
    per_example = -jnp.sum(t * jax.nn.log_softmax(student_logits.astype(jnp.float32) / temperature,
                                                  axis=-1), axis=-1)
    return _example_mean(per_example, example_mask)


def _example_mean(values, example_mask):
    if example_mask is None:
        return jnp.mean(values)
    m = example_mask.astype(jnp.float32)
    return jnp.sum(values * m) / jnp.maximum(jnp.sum(m), 1.0)


def cross_entropy(logits, labels, example_mask=None) -> jax.Array:
    """Mean cross-entropy against integer labels."""
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    per_example = -jnp.take_along_axis(logp, labels[:, None].astype(jnp.int32), axis=-1)[:, 0]
    return _example_mean(per_example, example_mask)


def regression_mse(predictions, targets, example_mask=None) -> jax.Array:
    """Mean squared error of a single-output head ``(B, 1)`` against ``(B,)`` targets."""
    err = jnp.square(predictions.astype(jnp.float32).reshape(targets.shape) - targets.astype(jnp.float32))
    return _example_mean(err, example_mask)


def span_cross_entropy(logits, labels, example_mask=None) -> jax.Array:
    """Mean of the start and end cross-entropies: ``logits`` (B, T, 2), ``labels`` (B, 2)."""
    return (cross_entropy(logits[..., 0], labels[:, 0], example_mask)
            + cross_entropy(logits[..., 1], labels[:, 1], example_mask)) / 2


def span_soft_cross_entropy(student_logits, teacher_logits, temperature: float = 1.0,
                            example_mask=None) -> jax.Array:
    """Mean of the start and end soft cross-entropies of (B, T, 2) logits."""
    return (soft_cross_entropy(student_logits[..., 0], teacher_logits[..., 0], temperature, example_mask)
            + soft_cross_entropy(student_logits[..., 1], teacher_logits[..., 1], temperature, example_mask)) / 2


def label_loss(logits, labels, example_mask=None, *, is_regression: bool = False,
               span: bool = False) -> jax.Array:
    """The task loss against ground-truth labels, mean over (real) examples: cross-entropy for a
    classification head, MSE for a one-output regression head, the mean of the start and end
    cross-entropies for a span head."""
    if span:
        return span_cross_entropy(logits, labels, example_mask)
    if is_regression:
        return regression_mse(logits, labels, example_mask)
    return cross_entropy(logits, labels, example_mask)


def direction_loss(student: jax.Array, teacher: jax.Array) -> jax.Array:
    """‖s/‖s‖ − t/‖t‖‖: the distance between the directions of two equal-shape tensors, norms
    (Frobenius) over the whole tensor, batch included, as the released code's ``att_loss_r2b``."""
    s, t = student.astype(jnp.float32), teacher.astype(jnp.float32)
    tiny = jnp.finfo(jnp.float32).tiny  # an all-zero tensor has no direction: count it as 0
    s = s / jnp.maximum(jnp.linalg.norm(s), tiny)
    t = t / jnp.maximum(jnp.linalg.norm(t), tiny)
    return jnp.linalg.norm(s - t)


def gram(x: jax.Array, token_mask: Optional[jax.Array] = None) -> jax.Array:
    """X·Xᵀ/√d per head: ``(B, heads, T, d)`` -> ``(B, heads, T, T)``; with ``token_mask``
    ``(B, T)`` the rows and columns of padding are 0."""
    x = x.astype(jnp.float32)
    if token_mask is not None:
        x = x * token_mask[:, None, :, None].astype(jnp.float32)
    return jnp.einsum("bhqd,bhkd->bhqk", x, x) / jnp.sqrt(jnp.float32(x.shape[-1]))


def direction_matching(student_qkv: Sequence, teacher_qkv: Sequence,
                       token_mask: Optional[jax.Array] = None) -> dict[str, jax.Array]:
    """BiBERT's DMD terms: Σ over layers of ``direction_loss`` between the Gram matrices of the
    student's and the teacher's Q, K and V (before binarization).

    Args:
      student_qkv, teacher_qkv: per layer ``(q, k, v)``, each ``(B, heads, T, d)`` (the model's
        ``qkv`` output); the same number of layers and heads in both.
      token_mask: optional ``(B, T)``: padding rows and columns left out of the Gram matrices.
    Returns:
      ``{"query_loss", "key_loss", "value_loss"}``.
    """
    if len(student_qkv) != len(teacher_qkv):
        raise ValueError(f"direction-matching distillation needs as many layers in the student "
                         f"({len(student_qkv)}) as in the teacher ({len(teacher_qkv)})")
    out = {}
    for i, name in enumerate(("query_loss", "key_loss", "value_loss")):
        out[name] = sum(direction_loss(gram(s[i], token_mask), gram(t[i], token_mask))
                        for s, t in zip(student_qkv, teacher_qkv))
    return out


def _bibert_terms(student, teacher, batch, is_regression, token_mask, example_mask):
    terms = direction_matching(student["qkv"], teacher["qkv"], token_mask)
    if len(student["hidden_states"]) != len(teacher["hidden_states"]):
        raise ValueError("hidden-state distillation needs as many layers in the student as in the teacher")
    mask = None if token_mask is None else token_mask[:, :, None].astype(jnp.float32)
    terms["hidden_loss"] = sum(direction_loss(s if mask is None else s * mask,
                                              t if mask is None else t * mask)
                               for s, t in zip(student["hidden_states"], teacher["hidden_states"]))
    if is_regression:
        terms["prediction_loss"] = regression_mse(student["logits"], teacher["logits"][..., 0], example_mask)
    else:
        num_classes = student["logits"].shape[-1]
        terms["prediction_loss"] = soft_cross_entropy(student["logits"], teacher["logits"], 1.0,
                                                      example_mask) / num_classes
    terms["label_loss"] = DMD_LABEL_WEIGHT * label_loss(student["logits"], batch["labels"], example_mask,
                                                        is_regression=is_regression)
    return terms


def kd_losses(student: Mapping, teacher: Optional[Mapping], batch: Mapping, *, objective: str,
              is_regression: bool, temperature: float = 1.0, attention: bool = True,
              ignore_padding: bool = False, span: bool = False) -> dict[str, jax.Array]:
    """The loss terms of one training objective.

    Args:
      student, teacher: model output dicts (``hidden_states``, ``attention_scores``, ``logits``);
        ``teacher`` may be None for ``supervised``.
      batch: needs ``attention_mask``, and ``labels`` for ``supervised``; ``example_mask`` is used
        when present.
      objective: ``intermediate`` (stage 1), ``prediction`` (stage 2), ``joint`` (both summed),
        ``supervised`` (labels only) or ``dmd`` (BiBERT: needs ``qkv`` in both output dicts and
        ``labels`` in the batch).
      is_regression: MSE instead of cross-entropy on predictions.
      span: a span head (``(B, T, 2)`` logits, ``(B, 2)`` labels): start and end losses averaged.
      attention: include the attention-score term in stage 1.
      ignore_padding: MSE over real tokens only.
    Returns:
      dict of scalar terms and ``total``.
    """
    token_mask = batch["attention_mask"].astype(bool) if ignore_padding else None
    example_mask = batch.get("example_mask")
    terms = {}
    if objective == "supervised":
        terms["label_loss"] = label_loss(student["logits"], batch["labels"], example_mask,
                                         is_regression=is_regression, span=span)
    else:
        if teacher is None:
            raise ValueError(f"objective {objective!r} needs a teacher")
        if objective == "dmd":
            terms.update(_bibert_terms(student, teacher, batch, is_regression, token_mask, example_mask))
        if objective in ("intermediate", "joint"):
            terms["hidden_loss"] = hidden_mse(student["hidden_states"], teacher["hidden_states"], token_mask)
            if attention:
                terms["attention_loss"] = attention_mse(student["attention_scores"],
                                                        teacher["attention_scores"], token_mask)
        if objective in ("prediction", "joint"):
            if span:
                terms["prediction_loss"] = span_soft_cross_entropy(student["logits"], teacher["logits"],
                                                                   temperature, example_mask)
            elif is_regression:
                terms["prediction_loss"] = regression_mse(student["logits"], teacher["logits"][..., 0],
                                                          example_mask)
            else:
                terms["prediction_loss"] = soft_cross_entropy(student["logits"], teacher["logits"],
                                                              temperature, example_mask)
        if not terms:
            raise ValueError(f"unknown objective {objective!r}; allowed: intermediate, prediction, "
                             f"joint, supervised, dmd")
    terms["total"] = sum(terms.values())
    return terms
