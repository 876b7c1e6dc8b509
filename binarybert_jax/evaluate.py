"""The one evaluation path: compiled forwards, logits for a dataset, and GLUE metrics.

Training evaluates its student with ``make_predict_step`` + ``evaluate`` (sharded over the
``data`` mesh like the train step); the pipeline's comparisons, adaptive splitting and the
predictor of ``inference.py`` run a model on one device through ``forward_fn``. Both apply the model
in eval mode (no dropout) and never close over parameters (closed-over arrays would be baked into
the compiled program as constants: slow to compile, and a second copy of the weights).
"""

from __future__ import annotations

import functools
from typing import Callable, Mapping, Optional, Sequence

import jax
import numpy as np
from jax.sharding import PartitionSpec as P

from binarybert_jax import metrics
from binarybert_jax.data import batching, glue
from binarybert_jax.model import BertModel, ModelSpec, model_variables
from binarybert_jax.sharding import (DATA_AXIS, gather_to_host, model_batch, model_inputs, replicate,
                                     shard_batch)

FORWARD_OUTPUTS = ("logits", "hidden_states", "attention_scores", "pooled")


@functools.lru_cache(maxsize=16)
def forward_fn(spec: ModelSpec, outputs: Sequence[str] = ("logits",)) -> Callable:
    """Jitted ``(params, batch, lat_diag=None) -> {name: array}`` of ``spec``'s model on one
    device, eval mode (``lat_diag``: a LAT model's diagonal, ``model.model_variables``).

    Cached per (spec, outputs): scoring several checkpoints of one architecture, or one model's
    variants (same tree, same shapes), compiles once per batch shape.

    Args:
      spec: the model; a cross-device activation axis is dropped (one device, no mesh).
      outputs: which of the model's outputs to return (e.g. ``("hidden_states", "logits")``).
    """
    unknown = [o for o in outputs if o not in FORWARD_OUTPUTS]
    if unknown:
        raise ValueError(f"unknown model outputs {unknown}; allowed: {FORWARD_OUTPUTS}")
    model = spec.without_axis().build()
    outputs = tuple(outputs)

    def fn(params, batch, lat_diag=None):
        out = model.apply(model_variables(params, lat_diag), *model_inputs(batch), deterministic=True)
        return {k: out[k] for k in outputs}

    return jax.jit(fn)


def make_predict_step(model: BertModel, mesh) -> Callable:
    """``(params, sharded batch, lat_diag) -> logits``: the per-device forward over ``data``, eval
    mode; ``lat_diag`` is a LAT model's diagonal (replicated) or None."""

    def per_device(params, batch, lat_diag):
        return model.apply(model_variables(params, lat_diag), *model_inputs(batch))["logits"]

    return jax.jit(jax.shard_map(per_device, mesh=mesh, in_specs=(P(), P(DATA_AXIS), P()),
                                 out_specs=P(DATA_AXIS), check_vma=False))


def predict(predict_step, params, arrays: Mapping[str, np.ndarray], batch_size: int, mesh,
            bucket_lengths: Optional[Sequence[int]] = None, lat_diag=None) -> np.ndarray:
    """Logits for every example of ``arrays`` in file order (padding rows dropped).

    Each process feeds its share of every batch; the logits are gathered so that every process
    returns all of them, each example exactly once.
    """
    n = len(arrays["input_ids"])
    out = None
    for batch in batching.iterate_batches(arrays, batch_size, shuffle=False,
                                          bucket_lengths=bucket_lengths):
        logits = gather_to_host(predict_step(params, shard_batch(model_batch(batch), mesh), lat_diag))
        index = gather_to_host(batch["example_index"])
        if out is None:
            out = np.zeros((n,) + logits.shape[1:], np.float32)
        keep = index >= 0
        out[index[keep]] = logits[keep]
    if out is None:
        raise ValueError("no examples to predict (an empty evaluation split?)")
    return out


def evaluate(predict_step, params, task: glue.TaskSpec, eval_sets: Mapping[str, Mapping[str, np.ndarray]],
             batch_size: int, mesh, bucket_lengths: Optional[Sequence[int]] = None,
             lat_diag=None) -> dict[str, float]:
    """GLUE metrics on each evaluation split; keys ``<metric>`` for the first split and
    ``<split>/<metric>`` for the others (MNLI mismatched). ``lat_diag``: a LAT model's diagonal
    (``train.lat_diagonal``), replicated, or None."""
    results = {}
    for i, (split, arrays) in enumerate(eval_sets.items()):
        logits = predict(predict_step, params, arrays, batch_size, mesh, bucket_lengths, lat_diag)
        preds = logits[:, 0] if task.is_regression else logits.argmax(-1)
        scores = metrics.glue_metrics(task, preds, arrays["labels"])
        results.update({(k if i == 0 else f"{split}/{k}"): float(v) for k, v in scores.items()})
    return results


def evaluate_model(spec: ModelSpec, params, task: glue.TaskSpec, eval_sets, batch_size: int, mesh,
                   bucket_lengths: Optional[Sequence[int]] = None, lat_diag=None) -> dict[str, float]:
    """``evaluate`` for a model given by its spec and host parameters (and LAT diagonal),
    replicated here."""
    model = spec.without_axis().build()
    return evaluate(make_predict_step(model, mesh), replicate(params, mesh), task, eval_sets,
                    batch_size, mesh, bucket_lengths,
                    None if lat_diag is None else replicate(lat_diag, mesh))
