"""The released code's optimizer, BertAdam, as optax transformations.

BertAdam is Adam without bias correction, with decoupled weight decay (0.01, none on LayerNorm and
biases) and a linear warmup then linear decay of the learning rate. Activation quantizer
parameters (clip values ``*_clip``, LSQ step sizes ``*_step``) get their own learning rate and no
weight decay. The second moment ``nu`` of the weights is exposed for the LAT quantizer.
"""

from __future__ import annotations

from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax

from binarybert_jax.trees import flatten, unflatten


class BertAdamState(NamedTuple):
    mu: Any
    nu: Any
    count: Any


def scale_by_bert_adam(b1: float = 0.9, b2: float = 0.999, eps: float = 1e-6,
                       bias_correction: bool = False) -> optax.GradientTransformation:
    """m/(√v + ε) with m, v the uncorrected moving moments (BertAdam has no bias correction);
    ``bias_correction=True`` gives standard Adam/AdamW (as Hugging Face's Trainer uses)."""

    def init(params):
        zeros = jax.tree_util.tree_map(jnp.zeros_like, params)
        return BertAdamState(mu=zeros, nu=jax.tree_util.tree_map(jnp.zeros_like, params),
                             count=jnp.zeros((), jnp.int32))

    def update(grads, state, params=None):
        mu = jax.tree_util.tree_map(lambda m, g: b1 * m + (1 - b1) * g, state.mu, grads)
        nu = jax.tree_util.tree_map(lambda v, g: b2 * v + (1 - b2) * g * g, state.nu, grads)
        count = state.count + 1
        c1, c2 = ((1 - b1 ** count.astype(jnp.float32), 1 - b2 ** count.astype(jnp.float32))
                  if bias_correction else (1.0, 1.0))
        updates = jax.tree_util.tree_map(lambda m, v: (m / c1) / (jnp.sqrt(v / c2) + eps), mu, nu)
        return updates, BertAdamState(mu, nu, count)

    return optax.GradientTransformation(init, update)


def warmup_linear_schedule(peak: float, total_steps: int, warmup_proportion: float = 0.1) -> optax.Schedule:
    """Linear warmup over ``warmup_proportion`` of the steps to ``peak``, then linear decay to 0."""
    warmup = max(1, int(round(total_steps * warmup_proportion)))
    return optax.join_schedules(
        [optax.linear_schedule(0.0, peak, warmup),
         optax.linear_schedule(peak, 0.0, max(1, total_steps - warmup))], [warmup])


def param_labels(params) -> Any:
    """``quant`` for activation quantizer parameters, ``no_decay`` for LayerNorm and biases,
    ``decay`` for every other weight."""
    def label(path: str) -> str:
        leaf = path.rsplit("/", 1)[-1]
        if leaf.endswith(("_clip", "_step")):
            return "quant"
        if leaf in ("bias", "scale") or "LayerNorm" in path:
            return "no_decay"
        return "decay"
    return unflatten({k: label(k) for k in flatten(params)})


def bert_adam(learning_rate: optax.ScalarOrSchedule, quant_learning_rate: optax.ScalarOrSchedule,
              weight_decay: float = 0.01, eps: float = 1e-6,
              clip_grad_norm: Optional[float] = None,
              bias_correction: bool = False) -> optax.GradientTransformation:
    """BertAdam for a BERT parameter tree (labels from ``param_labels``)."""
    def group(lr, wd):
        parts = [scale_by_bert_adam(eps=eps, bias_correction=bias_correction)]
        if wd:
            parts.append(optax.add_decayed_weights(wd))
        parts.append(optax.scale_by_learning_rate(lr))
        return optax.chain(*parts)

    tx = optax.multi_transform(
        {"decay": group(learning_rate, weight_decay), "no_decay": group(learning_rate, 0.0),
         "quant": group(quant_learning_rate, 0.0)}, param_labels)
    if clip_grad_norm:
        tx = optax.chain(optax.clip_by_global_norm(clip_grad_norm), tx)
    return tx


def second_moments(opt_state) -> Optional[dict]:
    """The second-moment trees of every BertAdam in ``opt_state``, merged into one nested dict of
    the parameters they cover (masked-out entries dropped), for the LAT quantizer's diagonal."""
    found = [s for s in jax.tree_util.tree_leaves(opt_state, is_leaf=lambda x: isinstance(x, BertAdamState))
             if isinstance(s, BertAdamState)]
    if not found:
        return None
    merged = {}
    for state in found:
        for k, v in flatten(state.nu).items():
            if isinstance(v, jax.Array) or hasattr(v, "shape"):
                merged[k] = v
    return unflatten(merged)
