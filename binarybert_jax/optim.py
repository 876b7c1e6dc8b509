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


def warmup_linear(count, peak, total_steps, warmup_steps) -> jax.Array:
    """The learning rate at update ``count``: a linear warmup over ``warmup_steps`` to ``peak``, then
    a linear decay to 0 at ``total_steps``. Any argument may be a traced array."""
    count = jnp.asarray(count, jnp.float32)
    warmup = jnp.maximum(jnp.asarray(warmup_steps, jnp.float32), 1.0)
    decay_steps = jnp.maximum(jnp.asarray(total_steps, jnp.float32) - warmup, 1.0)
    rising = count / warmup
    falling = jnp.clip(1.0 - (count - warmup) / decay_steps, 0.0, 1.0)
    return jnp.asarray(peak, jnp.float32) * jnp.where(count < warmup, rising, falling)


def warmup_steps(total_steps: int, warmup_proportion: float) -> int:
    """The warmup's length in updates: ``warmup_proportion`` of the phase, at least one."""
    return max(1, int(round(total_steps * warmup_proportion)))


def warmup_linear_schedule(peak: float, total_steps: int, warmup_proportion: float = 0.1) -> optax.Schedule:
    """Linear warmup over ``warmup_proportion`` of the steps to ``peak``, then linear decay to 0."""
    warmup = warmup_steps(total_steps, warmup_proportion)
    return lambda count: warmup_linear(count, peak, total_steps, warmup)


class Schedule(NamedTuple):
    """A phase's learning rates as arrays (peaks, length, warmup), so that a compiled train step
    reads them at run time: phases that differ only in their schedules share one program."""

    peak: jax.Array
    quant_peak: jax.Array
    total_steps: jax.Array
    warmup_steps: jax.Array

    @classmethod
    def warmup_linear(cls, peak: float, quant_peak: float, total_steps: int,
                      warmup_proportion: float = 0.1) -> "Schedule":
        """``warmup_linear_schedule``'s shape for the weights (``peak``) and the activation
        quantizers' parameters (``quant_peak``)."""
        return cls(jnp.float32(peak), jnp.float32(quant_peak), jnp.int32(total_steps),
                   jnp.int32(warmup_steps(total_steps, warmup_proportion)))

    def learning_rate(self, count) -> jax.Array:
        return warmup_linear(count, self.peak, self.total_steps, self.warmup_steps)

    def quant_learning_rate(self, count) -> jax.Array:
        return warmup_linear(count, self.quant_peak, self.total_steps, self.warmup_steps)


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


def scheduled_bert_adam(schedule: Schedule, weight_decay: float = 0.01, eps: float = 1e-6,
                        clip_grad_norm: Optional[float] = None,
                        bias_correction: bool = False) -> optax.GradientTransformation:
    """``bert_adam`` on a ``Schedule``'s two learning rates. Its state does not depend on the
    schedule's values, so one built from any schedule initialises the state of every other."""
    return bert_adam(schedule.learning_rate, schedule.quant_learning_rate, weight_decay, eps,
                     clip_grad_norm=clip_grad_norm, bias_correction=bias_correction)


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
