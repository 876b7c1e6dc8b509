"""The one evaluation path: compiled forwards, logits for a dataset, and task metrics (GLUE's;
SQuAD's exact match and F1 after post-processing the span logits into answers).

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

from binarybert_jax import metrics, squad_metrics
from binarybert_jax.data import batching, squad, tasks
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


def batched_logits(batch_logits: Callable[[dict], tuple[np.ndarray, np.ndarray]],
                   arrays: Mapping[str, np.ndarray], batch_size: int, *,
                   bucket_lengths: Optional[Sequence[int]] = None, process_index: Optional[int] = None,
                   process_count: Optional[int] = None) -> np.ndarray:
    """Logits for every example of ``arrays`` in file order (padding rows dropped): ``(N, labels)``,
    or ``(N, L, 2)`` for a span head (a batch cut to a shorter bucket leaves zeros beyond it).

    Args:
      batch_logits: ``batch -> (logits, example_index)`` of the evaluation batches
        (``batching.iterate_batches``), both for the rows of the whole global batch.
      process_index, process_count: this host's share of every batch, as ``iterate_batches``
        takes them (default: JAX's processes).
    """
    n, width = arrays["input_ids"].shape
    out = None
    for batch in batching.iterate_batches(arrays, batch_size, shuffle=False, bucket_lengths=bucket_lengths,
                                          process_index=process_index, process_count=process_count):
        logits, index = batch_logits(batch)
        if out is None:
            shape = logits.shape[1:] if logits.ndim == 2 else (width,) + logits.shape[2:]
            out = np.zeros((n,) + shape, np.float32)
        keep = index >= 0
        out[index[keep], :logits.shape[1]] = logits[keep]
    if out is None:
        raise ValueError("no examples to predict (an empty evaluation split?)")
    return out


def predict(predict_step, params, arrays: Mapping[str, np.ndarray], batch_size: int, mesh,
            bucket_lengths: Optional[Sequence[int]] = None, lat_diag=None) -> np.ndarray:
    """``batched_logits`` of the sharded predict step (``make_predict_step``) over ``mesh``.

    Each process feeds its share of every batch; the logits are gathered so that every process
    returns all of them, each example exactly once.
    """
    def batch_logits(batch):
        logits = predict_step(params, shard_batch(model_batch(batch), mesh), lat_diag)
        return gather_to_host(logits), gather_to_host(batch["example_index"])

    return batched_logits(batch_logits, arrays, batch_size, bucket_lengths=bucket_lengths)


def squad_answers(predict_step, params, eval_set: squad.SquadEvalSet, batch_size: int, mesh,
                  bucket_lengths: Optional[Sequence[int]] = None, lat_diag=None) -> tuple[dict, dict]:
    """``(predictions, null_diffs)`` of a SQuAD evaluation set (``squad.postprocess`` of the span
    logits of its windows, with the set's ``answer_options``)."""
    logits = predict(predict_step, params, eval_set.model_arrays, batch_size, mesh, bucket_lengths, lat_diag)
    return squad.postprocess(eval_set.examples, eval_set.features, logits, version=eval_set.version,
                             **eval_set.answer_options)


def evaluate(predict_step, params, task: tasks.TaskSpec, eval_sets: Mapping[str, object], batch_size: int, mesh,
             bucket_lengths: Optional[Sequence[int]] = None, lat_diag=None) -> dict[str, float]:
    """The task's metrics on each evaluation split; keys ``<metric>`` for the first split and
    ``<split>/<metric>`` for the others (MNLI mismatched). GLUE splits are token arrays; a SQuAD
    split is a ``squad.SquadEvalSet``, scored by the official EM/F1 as fractions (its v2.0 answers
    use the set's ``null_threshold``). ``lat_diag``: a LAT model's diagonal (``train.lat_diagonal``),
    replicated, or None."""
    results = {}
    for i, (split, data) in enumerate(eval_sets.items()):
        if task.head == "span":
            answers, _ = squad_answers(predict_step, params, data, batch_size, mesh, bucket_lengths, lat_diag)
            official = squad_metrics.evaluate(data.version, data.data, answers)
            scores = {k: v for k, v in squad_metrics.as_fractions(official).items() if k in task.metric_names}
        else:
            logits = predict(predict_step, params, data, batch_size, mesh, bucket_lengths, lat_diag)
            preds = logits[:, 0] if task.is_regression else logits.argmax(-1)
            scores = metrics.glue_metrics(task, preds, data["labels"])
        results.update({(k if i == 0 else f"{split}/{k}"): float(v) for k, v in scores.items()})
    return results


def evaluate_model(spec: ModelSpec, params, task, eval_sets, batch_size: int, mesh,
                   bucket_lengths: Optional[Sequence[int]] = None, lat_diag=None) -> dict[str, float]:
    """``evaluate`` for a model given by its spec and host parameters (and LAT diagonal),
    replicated here."""
    model = spec.without_axis().build()
    return evaluate(make_predict_step(model, mesh), replicate(params, mesh), task, eval_sets,
                    batch_size, mesh, bucket_lengths,
                    None if lat_diag is None else replicate(lat_diag, mesh))
