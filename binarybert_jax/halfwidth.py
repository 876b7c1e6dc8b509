"""A half-width model from any fine-tuned full-precision BERT (workflow step 2).

BinaryBERT starts from DynaBERT's width-0.5 sub-network: half the attention heads and half the FFN
neurons of every layer, hidden size unchanged. Users do not have DynaBERT checkpoints, so this
module makes one from the task's own fine-tuned model, the way DynaBERT builds its sub-networks:
rank every head and FFN neuron by importance on task data, keep the most important fraction of each
layer, and slice the weights (the "rewiring"). The sliced model is then distilled from the
full-width teacher (hidden states + logits; no attention-score term, since the head counts differ)
by the training loop, starting from the checkpoint written here.

Importance (Michel et al. 2019, "Are Sixteen Heads Really Better than One?"; DynaBERT §3.1)
  Put a mask ``m_h`` on the context of head ``h`` and a mask ``m_j`` on the activation of FFN neuron
  ``j``; the importance is the first-order estimate of the loss change when the unit is removed,
  ``I = Σ_batches |∂L/∂m|`` at ``m = 1``. The masks need no change to the model. For the attention
  output ``y = c·W_o + b`` with ``c = [m_1·c_1, …, m_H·c_H]`` (head ``h`` owns the rows
  ``R_h = h·d … (h+1)·d − 1`` of the Flax kernel ``W_o`` of shape ``(heads·d, hidden)``)::

      ∂L/∂m_h = Σ_{b,t} Σ_{i∈R_h} c[b,t,i] · ∂L/∂c[b,t,i]              (chain rule at m = 1)
              = Σ_{b,t} Σ_{i∈R_h} c[b,t,i] · Σ_k ∂L/∂y[b,t,k] · W_o[i,k]
              = Σ_{i∈R_h} Σ_k W_o[i,k] · (Σ_{b,t} c[b,t,i] · ∂L/∂y[b,t,k])
              = Σ_{i∈R_h} Σ_k W_o[i,k] · ∂L/∂W_o[i,k],

  i.e. the sum of ``W_o ⊙ ∂L/∂W_o`` over the head's rows; the same argument on the FFN output
  kernel ``(intermediate, hidden)`` gives ``∂L/∂m_j = Σ_k W_2[j,k] · ∂L/∂W_2[j,k]``. So one ordinary
  parameter gradient per batch yields every mask gradient. (Masking the context of a head is what
  Hugging Face's ``head_mask`` on the attention probabilities does, since the context is linear in
  them.) DynaBERT's code adds, for neurons, the same product over the FFN *input* kernel and bias
  (the gradient of a mask on the pre-activation); we keep to the mask on the activation, which is
  the loss change of removing the neuron.

  The loss is the task loss against the labels (cross-entropy, or MSE for a regression head), as in
  DynaBERT. Distillation against the model's own logits is no alternative: the soft cross-entropy
  −softmax(t)·log_softmax(s) has zero gradient at ``s = t``, so every prediction-layer importance
  would be 0.

Pruning keeps the top ``round(H·width)`` heads and ``round(I·width)`` neurons of every layer (the
model has one head count for all layers), in their original order, and slices Q/K/V output
columns and biases, the attention output kernel's input rows, the FFN input kernel's columns and
bias, and the FFN output kernel's rows. Only full-precision, unsplit models can be pruned or
scored: the identity above needs the weight the forward pass uses to be the parameter itself.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import os
from typing import Any, Iterable, Mapping, Optional

import jax
import jax.numpy as jnp
import numpy as np

from binarybert_jax import checkpoints, kd, quant, workdirs
from binarybert_jax.model import ModelSpec
from binarybert_jax.sharding import device_batch, model_inputs
from binarybert_jax.trees import flatten, unflatten

def check_full_precision(spec: ModelSpec) -> None:
    """Raises ValueError unless ``spec`` is an unsplit full-precision model."""
    q = spec.quant
    if q.split or any(b < quant.FULL_PRECISION_BITS for b in (q.weight_bits, q.embed_bits, q.act_bits)):
        raise ValueError(
            f"half-width pruning needs a full-precision, unsplit model (the fine-tuned teacher); this "
            f"one has W-E-A bits {q.wea()}, split={q.split}. Prune the full-precision "
            f"model first, then quantize the half-width one")


# ---------------------------------------------------------------------------------------------
# Importance.
# ---------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=8)
def mask_gradient_fn(spec: ModelSpec):
    """The jitted per-batch mask gradients of ``spec``'s model (one function per spec, so scoring
    several times, or several checkpoints of one architecture, compiles once per batch shape).

    Returns:
      ``fn(params, batch) -> {"heads": (L, H), "neurons": (L, I)}``: the *signed* gradients
      ``∂L/∂m`` at ``m = 1`` of the mean task loss over the batch's real examples. ``batch`` needs
      ``input_ids``, ``token_type_ids``, ``attention_mask`` ``(B, T)``, ``labels`` ``(B,)`` and
      optionally ``example_mask`` ``(B,)`` (0 for padding rows).
    """
    check_full_precision(spec)
    if spec.head not in ("classification", "span"):
        raise ValueError(f"importance scoring uses the task loss of a classification, regression or "
                         f"span head; head {spec.head!r} has none")
    model = spec.without_axis().build()
    cfg = spec.config

    def loss_fn(params, batch):
        out = model.apply({"params": params}, *model_inputs(batch), deterministic=True)
        return kd.label_loss(out["logits"], batch["labels"], batch.get("example_mask"),
                             is_regression=spec.num_labels == 1, span=spec.head == "span")

    def fn(params, batch):
        grads = jax.grad(loss_fn)(params, batch)
        heads, neurons = [], []
        for i in range(cfg.num_layers):
            layer, g = params["encoder"][f"layer_{i}"], grads["encoder"][f"layer_{i}"]
            w_o, g_o = layer["attention"]["output"]["kernel"], g["attention"]["output"]["kernel"]
            per_row = jnp.sum(w_o * g_o, axis=1)  # (heads·d,)
            heads.append(per_row.reshape(cfg.num_heads, cfg.head_dim).sum(-1))
            w_2, g_2 = layer["ffn"]["output"]["kernel"], g["ffn"]["output"]["kernel"]
            neurons.append(jnp.sum(w_2 * g_2, axis=1))
        return {"heads": jnp.stack(heads), "neurons": jnp.stack(neurons)}

    return jax.jit(fn)


def score_importance(spec: ModelSpec, params: Any, batches: Iterable[Mapping[str, Any]],
                     num_batches: Optional[int] = None) -> dict[str, np.ndarray]:
    """DynaBERT's head and neuron importance: Σ over batches of |∂L/∂m| at m = 1.

    Args:
      spec: a full-precision, unsplit classification/regression model.
      params: its parameters.
      batches: labelled batches (dicts with ``input_ids``, ``token_type_ids``, ``attention_mask``
        ``(B, T)``, ``labels`` ``(B,)``, optional ``example_mask``), e.g. from
        ``data.batching.iterate_batches``; extra keys are ignored.
      num_batches: use at most this many batches (None: all).
    Returns:
      ``{"heads": (L, H), "neurons": (L, I)}`` float64 numpy arrays, non-negative.
    Raises:
      ValueError: the model is quantized or split, or no batch was given.
    """
    grad_fn = mask_gradient_fn(spec)
    params = jax.tree_util.tree_map(jnp.asarray, params)
    totals = None
    for batch in itertools.islice(batches, num_batches):
        g = grad_fn(params, device_batch(batch, labels=True))
        # |·| per batch, then summed (DynaBERT): opposite-signed batches must not cancel.
        absolute = {k: np.abs(np.asarray(v, np.float64)) for k, v in g.items()}
        totals = absolute if totals is None else {k: totals[k] + absolute[k] for k in totals}
    if totals is None:
        raise ValueError("score_importance got no batches")
    return totals


# ---------------------------------------------------------------------------------------------
# Pruning.
# ---------------------------------------------------------------------------------------------
def kept_indices(scores: Mapping[str, Any], spec: ModelSpec, width: float = 0.5
                 ) -> dict[str, np.ndarray]:
    """The heads and neurons each layer keeps: the top ``round(n·width)`` by score, ascending.

    Args:
      scores: ``{"heads": (L, H), "neurons": (L, I)}`` as from ``score_importance``.
      spec: the full-width model.
      width: fraction kept, in (0, 1]; the counts are those of ``spec.config.with_width(width)``.
    Returns:
      ``{"heads": (L, H') int, "neurons": (L, I') int}``, each row sorted by original index. Ties
      go to the lower index, so equal scores give a deterministic choice.
    """
    cfg = spec.config
    target = cfg.with_width(width)
    out = {}
    for key, full, keep in (("heads", cfg.num_heads, target.num_heads),
                            ("neurons", cfg.intermediate_size, target.intermediate_size)):
        s = np.asarray(scores[key], np.float64)
        if s.shape != (cfg.num_layers, full):
            raise ValueError(f"scores[{key!r}] has shape {s.shape}; this model needs "
                             f"({cfg.num_layers}, {full})")
        order = np.argsort(-s, axis=1, kind="stable")[:, :keep]
        out[key] = np.sort(order, axis=1)
    return out


def prune_params(params: Any, spec: ModelSpec, kept: Mapping[str, Any]) -> tuple[dict, ModelSpec]:
    """Slices a full-precision model down to the given heads and neurons of every layer.

    Args:
      params: the model's parameters (not modified).
      spec: its spec (full precision, unsplit).
      kept: ``{"heads": (L, H') int, "neurons": (L, I') int}``, the same count in every layer.
    Returns:
      ``(params, spec)`` of the narrower model: ``spec.config`` with ``num_heads=H'`` and
      ``intermediate_size=I'`` (head size and hidden size unchanged). Q/K/V kernels ``(hidden,
      H'·d)`` and biases, the attention output kernel ``(H'·d, hidden)``, the FFN input kernel
      ``(hidden, I')`` and bias, the FFN output kernel ``(I', hidden)``; everything else copied.
    """
    check_full_precision(spec)
    cfg = spec.config
    heads = np.asarray(kept["heads"], np.int64)
    neurons = np.asarray(kept["neurons"], np.int64)
    if heads.ndim != 2 or neurons.ndim != 2 or len(heads) != cfg.num_layers or len(neurons) != cfg.num_layers:
        raise ValueError(f"kept heads/neurons must be (layers={cfg.num_layers}, count) arrays, got "
                         f"{heads.shape} and {neurons.shape}")
    for name, idx, n in (("heads", heads, cfg.num_heads), ("neurons", neurons, cfg.intermediate_size)):
        if idx.size and (idx.min() < 0 or idx.max() >= n):
            raise ValueError(f"kept {name} out of range [0, {n})")
        if any(len(set(row.tolist())) != len(row) for row in idx):
            raise ValueError(f"kept {name} repeat an index within a layer")
        if idx.shape[1] == 0:
            raise ValueError(f"every layer must keep at least one of its {name}")
    new_cfg = dataclasses.replace(cfg, num_heads=heads.shape[1], intermediate_size=neurons.shape[1])
    flat = {k: np.asarray(v) for k, v in flatten(params).items()}
    for i in range(cfg.num_layers):
        # Head h owns the columns h·d … (h+1)·d − 1 of Q/K/V and the same rows of the output kernel.
        cols = (heads[i][:, None] * cfg.head_dim + np.arange(cfg.head_dim)[None]).reshape(-1)
        att = f"encoder/layer_{i}/attention"
        for name in ("query", "key", "value"):
            flat[f"{att}/{name}/kernel"] = flat[f"{att}/{name}/kernel"][:, cols]
            flat[f"{att}/{name}/bias"] = flat[f"{att}/{name}/bias"][cols]
        flat[f"{att}/output/kernel"] = flat[f"{att}/output/kernel"][cols, :]
        ffn = f"encoder/layer_{i}/ffn"
        flat[f"{ffn}/intermediate/kernel"] = flat[f"{ffn}/intermediate/kernel"][:, neurons[i]]
        flat[f"{ffn}/intermediate/bias"] = flat[f"{ffn}/intermediate/bias"][neurons[i]]
        flat[f"{ffn}/output/kernel"] = flat[f"{ffn}/output/kernel"][neurons[i], :]
    return unflatten(flat), dataclasses.replace(spec, config=new_cfg)


def prune(params: Any, spec: ModelSpec, scores: Mapping[str, Any], width: float = 0.5
          ) -> tuple[dict, ModelSpec]:
    """Keeps the most important ``width`` of every layer's heads and FFN neurons.

    Args:
      params, spec: a full-precision, unsplit model.
      scores: ``{"heads": (L, H), "neurons": (L, I)}`` (``score_importance``).
      width: fraction kept, in (0, 1]; 1.0 returns the same model.
    Returns:
      ``(params, spec)`` with ``spec.config == old.config.with_width(width)``.
    Raises:
      ValueError: the model is quantized or split, or the scores do not fit it.
    """
    check_full_precision(spec)
    return prune_params(params, spec, kept_indices(scores, spec, width))


def make_half_width_checkpoint(teacher_dir: str | os.PathLike, out_dir: str | os.PathLike,
                               batches: Iterable[Mapping[str, Any]], width: float = 0.5,
                               num_batches: Optional[int] = None) -> dict:
    """Scores, prunes and saves: the fine-tuned teacher checkpoint → a half-width checkpoint.

    Args:
      teacher_dir: a full-precision model checkpoint (``checkpoints.save_model`` layout).
      out_dir: where to write the pruned model (replaced if it exists).
      batches: labelled task batches for the importance (the training split; see
        ``score_importance``).
      width: fraction of heads and neurons kept per layer.
      num_batches: use at most this many batches (None: all of ``batches``).
    Returns:
      A summary: ``out_dir``, ``width``, ``num_heads`` and ``intermediate_size`` before → after,
      ``num_batches`` used, and ``retained_importance`` (the share of the summed importance that
      the kept units hold, heads and neurons, per layer). The checkpoint's ``info`` records
      ``stage='prune'``, the ``source``, ``width``, the kept ``heads`` and ``neurons`` per layer,
      the head scores, that summary, and the source's info as ``source_info``.
    """
    src = workdirs.absolute(teacher_dir)
    params, spec, src_info = checkpoints.load_model(src)
    check_full_precision(spec)
    used = 0

    def counting(it):
        nonlocal used
        for b in it:
            used += 1
            yield b

    scores = score_importance(spec, params, counting(batches), num_batches)
    kept = kept_indices(scores, spec, width)
    new_params, new_spec = prune_params(params, spec, kept)
    retained = {}
    for key in ("heads", "neurons"):
        s = scores[key]
        kept_sum = np.take_along_axis(s, kept[key], axis=1).sum(1)
        retained[key] = [float(k / t) if t > 0 else 1.0 for k, t in zip(kept_sum, s.sum(1))]
    summary = {"width": width, "num_batches": used,
               "num_heads": [spec.config.num_heads, new_spec.config.num_heads],
               "intermediate_size": [spec.config.intermediate_size, new_spec.config.intermediate_size],
               "retained_importance": retained}
    info = {"stage": "prune", "source": str(src), "width": width,
            "kept_heads": kept["heads"].tolist(), "kept_neurons": kept["neurons"].tolist(),
            "head_scores": scores["heads"].tolist(), "summary": summary, "source_info": src_info}
    out = checkpoints.save_model(out_dir, new_params, new_spec, info)
    return {"out_dir": str(out), **summary}
