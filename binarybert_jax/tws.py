"""Ternary weight splitting (TWS): turn a trained ternary (TWN) model into an equivalent binary one.

Every ternary weight ``w`` is replaced by two latent halves ``w1``, ``w2`` with

    w1 + w2 = w    and    BWN(w1) + BWN(w2) = TWN(w),

so the split binary model (``x·Ŵ = x·Ŵ1 + x·Ŵ2``) computes exactly what the ternary model computed,
and fine-tuning it starts from the ternary model's accuracy (BinaryBERT, Bai et al. 2021, §3). With
the TWN quantization of ``w`` (one scale per group of entries; a group is a matrix, a row, or an
output unit), ``I = {ŵ ≠ 0}``, ``J = {ŵ = 0, w > 0}``, ``K = {ŵ = 0, w ≤ 0}``, ``n`` entries and
``α`` the TWN scale::

    a = (Σ_I|w| + Σ_K|w| − Σ_J|w|) / (2·Σ_I|w|)       (makes the two binary scales equal)
    b = (n·α − Σ|w|) / (2·(|J| + |K|))                  (makes the two scales sum to α; b ≥ 0)
    w1 = a·w on I,  w + b on J,  b on K
    w2 = (1 − a)·w on I,  −b on J,  w − b on K

This module is a pure transform of parameter pytrees and specs (``split_params``) plus a checkpoint
wrapper (``split_checkpoint``). It returns parameters only: the optimizer state of the ternary run
does not carry over (the kernels change shape and meaning), so the training code builds a fresh
optimizer for the split model.

Adaptive splitting: ``only`` names the matrices to split; the others become single binary matrices
that keep their latent weights (a ternary → binary conversion of those matrices, not an equivalence),
listed in the output spec's ``unsplit``.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from typing import Any, Iterable, Optional

import jax
import jax.numpy as jnp
import numpy as np

from binarybert_jax import checkpoints, quant, workdirs
from binarybert_jax.errors import UserError
from binarybert_jax.model import ModelSpec, splittable_paths

EMBEDDING_PATH = "embeddings/word_embeddings"
# Axes one quantization scale is shared over, for each granularity (see quant's module docstring).
KERNEL_AXES = {"layer": quant.LAYERWISE, "row": (-2,)}
EMBED_AXES = {"layer": quant.LAYERWISE, "row": (-1,)}

# quant's TWN, compiled once per shape: op-by-op dispatch would compile every operation anew for
# each new shape, which costs more than compiling the whole function.
_ternary_codes = jax.jit(quant.ternary_codes, static_argnums=1)


def split_ternary_weight(w: Any, axes: quant.Axes = quant.LAYERWISE) -> tuple[np.ndarray, np.ndarray]:
    """Splits a latent ternary weight into two latent binary halves (the TWS formulas above).

    The support ``I`` is that of ``quant.ternary_codes`` evaluated in ``w``'s own dtype, i.e. what
    the ternary model computed in its forward pass (an entry within rounding of the threshold Δ is
    classified as the model classified it). ``α`` (TWN's mean |w| over ``I``), ``a``, ``b`` and the
    halves are computed in float64 from that support, as the released code does: its splits of a
    float32 matrix and embedding are reproduced bit for bit (taking α from the float32 ternary
    values instead would differ in the last bit).

    Args:
      w: latent weight, any shape, e.g. ``(in, out)`` kernel or ``(V, H)`` embedding.
      axes: the axes one TWN scale is shared over: ``(-2, -1)`` layer-wise (one ``a, b`` per matrix),
        ``(-1,)`` per embedding row, ``(-2,)`` per output unit of an ``(in, out)`` kernel.
    Returns:
      ``(w1, w2)``, each shaped like ``w``, in ``w``'s floating dtype (float32 for integer input).
      ``w1 + w2 == w`` up to that dtype's rounding, and
      ``binary_values(w1, axes) + binary_values(w2, axes) == ternary_values(w, axes)``.
    """
    w = np.asarray(w)
    out_dtype = w.dtype if np.issubdtype(w.dtype, np.floating) else np.dtype(np.float32)
    w = w.astype(out_dtype)
    if w.ndim == 0:
        raise ValueError("split_ternary_weight needs an array with at least one axis, got a scalar")
    axes = tuple(sorted(a % w.ndim for a in (range(w.ndim) if axes is None else axes)))
    with jax.enable_x64(True):  # keep float64 input float64 inside the jnp quantizer
        codes = np.asarray(_ternary_codes(jnp.asarray(w), axes)[0])
    w64 = w.astype(np.float64)
    abs_w = np.abs(w64)
    in_i = codes != 0
    in_j = ~in_i & (w64 > 0)
    in_k = ~in_i & ~in_j

    def total(mask, values=abs_w):
        return np.sum(np.where(mask, values, 0.0), axis=axes, keepdims=True)

    sum_i, sum_j, sum_k = total(in_i), total(in_j), total(in_k)
    count_i, count_jk = total(in_i, 1.0), total(~in_i, 1.0)
    n = np.prod([w.shape[a] for a in axes])
    # TWN's scale for this support: the mean magnitude over I (0 for an all-zero group).
    alpha = sum_i / np.maximum(count_i, 1.0)
    # Σ_I|w| = 0 only for an all-zero group (TWN keeps every entry above 0.7·mean|w|); any a works
    # there since I is empty, and 1/2 keeps the halves symmetric.
    a = np.where(sum_i > 0, (sum_i + sum_k - sum_j) / (2.0 * np.where(sum_i > 0, sum_i, 1.0)), 0.5)
    # No zeroed entries (|J| + |K| = 0): b multiplies nothing, so it is set to 0.
    b = np.where(count_jk > 0, (n * alpha - (sum_i + sum_j + sum_k)) / (2.0 * np.maximum(count_jk, 1.0)),
                 0.0)
    w1 = np.where(in_i, a * w64, np.where(in_j, w64 + b, b))
    w2 = np.where(in_i, (1.0 - a) * w64, np.where(in_j, -b, w64 - b))
    return w1.astype(out_dtype), w2.astype(out_dtype)


def split_bias(bias: Any) -> np.ndarray:
    """Halves a bias for the two halves of a split layer: ``(out,)`` → ``(2, out)``."""
    bias = np.asarray(bias)
    half = bias / 2
    return np.stack([half, half])


def check_ternary_spec(spec: ModelSpec) -> None:
    """Raises ValueError unless ``spec`` describes an unsplit TWN ternary model.

    Accepted: ``weight_method='twn'``, ``weight_bits=2``, and a word embedding that is either TWN
    ternary (``embed_method='twn'``, ``embed_bits=2``) or full precision (``embed_bits=32``).
    """
    q = spec.quant
    if q.split:
        raise ValueError("checkpoint is already split (quant.split=True, weight_method="
                         f"{q.weight_method!r}); ternary weight splitting needs an unsplit ternary model")
    if q.weight_method != "twn" or q.weight_bits != 2:
        raise ValueError(f"ternary weight splitting needs a TWN ternary model (weight_method='twn', "
                         f"weight_bits=2); this one has weight_method={q.weight_method!r}, "
                         f"weight_bits={q.weight_bits}")
    if q.embed_bits == quant.FULL_PRECISION_BITS:
        return
    if q.embed_method != "twn" or q.embed_bits != 2:
        raise ValueError(f"ternary weight splitting needs a TWN ternary (embed_method='twn', "
                         f"embed_bits=2) or full-precision (embed_bits=32) word embedding; this one "
                         f"has embed_method={q.embed_method!r}, embed_bits={q.embed_bits}")


def candidate_paths(spec: ModelSpec) -> list[str]:
    """The matrices of ``spec``'s model that splitting can act on, in model order.

    The quantized Transformer kernels (and the pooler's when ``quantize_pooler``), plus the word
    embedding when it is quantized; a full-precision embedding has nothing to split.
    """
    paths = splittable_paths(spec.config, pooler=spec.quant.quantize_pooler)
    if spec.quant.embed_bits == quant.FULL_PRECISION_BITS:
        paths = [p for p in paths if p != EMBEDDING_PATH]
    return paths


def split_spec(spec: ModelSpec, only: Optional[Iterable[str]] = None,
               shared_act: bool = True) -> ModelSpec:
    """The spec of the split binary model (see ``split_params`` for the arguments).

    Returns:
      ``spec`` with ``quant.weight_method='bwn'``, ``weight_bits=1``, the embedding likewise when it
      was ternary, ``split=True``, ``unsplit`` the candidate matrices not in ``only`` (model order)
      and ``split_shared_act=shared_act``; everything else unchanged.
    """
    check_ternary_spec(spec)
    candidates = candidate_paths(spec)
    chosen = chosen_paths(candidates, only, spec)
    q = spec.quant
    embed_ternary = q.embed_bits != quant.FULL_PRECISION_BITS
    new_quant = dataclasses.replace(
        q, weight_method="bwn", weight_bits=1,
        embed_method="bwn" if embed_ternary else q.embed_method,
        embed_bits=1 if embed_ternary else q.embed_bits,
        split=True, unsplit=tuple(p for p in candidates if p not in chosen),
        split_shared_act=shared_act)
    return dataclasses.replace(spec, quant=new_quant)


def chosen_paths(candidates: list[str], only: Optional[Iterable[str]], spec: ModelSpec) -> set[str]:
    """The matrices of ``candidates`` that ``only`` names (all for None); an unknown one is an error."""
    if only is None:
        return set(candidates)
    if isinstance(only, str):
        raise TypeError(f"only must be a collection of matrix paths, got the string {only!r}")
    only = set(only)
    unknown = sorted(only - set(candidates))
    if unknown:
        why = ""
        if EMBEDDING_PATH in unknown and spec.quant.embed_bits == quant.FULL_PRECISION_BITS:
            why = f" ({EMBEDDING_PATH} is full precision (embed_bits=32) and cannot be split)"
        raise ValueError(f"cannot split {unknown}{why}; splittable matrices of this model: {candidates}")
    return only


def _get(tree: dict, path: str) -> Any:
    node = tree
    for part in path.split("/"):
        if not isinstance(node, Mapping) or part not in node:
            raise KeyError(f"parameter path {path!r} not found (missing {part!r})")
        node = node[part]
    return node


def _copy_tree(tree: Any) -> Any:
    """Copies the mapping structure into plain dicts (leaves shared), so the input tree is never
    modified and frozen mappings become writable."""
    if isinstance(tree, Mapping):
        return {k: _copy_tree(v) for k, v in tree.items()}
    return tree


def _set(tree: dict, path: str, value: Any) -> None:
    *parents, last = path.split("/")
    node = tree
    for part in parents:
        node = node[part]
    node[last] = value


def split_params(params: Any, spec: ModelSpec, only: Optional[Iterable[str]] = None,
                 shared_act: bool = True) -> tuple[dict, ModelSpec]:
    """Splits a ternary model's parameters into those of the equivalent binary (BWN) model.

    Args:
      params: the ternary model's ``params`` tree (jax or numpy leaves; not modified).
      spec: its ``ModelSpec``; must be an unsplit TWN ternary model (``check_ternary_spec``).
      only: paths (as in ``model.splittable_paths``) of the matrices to split; None splits all.
        The rest become single BWN matrices with their latent weights unchanged, and are listed in
        the returned spec's ``quant.unsplit``.
      shared_act: True (default) keeps one input quantizer per split layer (the two halves see the
        same quantized input). False gives each half its own quantizer, as the released code does:
        ``input_clip`` ``(2,)`` → ``(2, 2)``, ``input_step`` ``()`` → ``(2,)``, both copies of the
        ternary model's value.
    Returns:
      ``(new_params, new_spec)``. Split kernels ``(in, out)`` → ``(2, in, out)``, their biases
      ``(out,)`` → ``(2, out)`` (half each); the word embedding ``(V, H)`` → ``(2, V, H)`` (split per
      row for ``embed_granularity='row'``, else per matrix). Everything else (LayerNorm, position
      and segment embeddings, the classifier, attention-level ``*_clip``/``*_step``) is carried
      over. ``new_spec.quant``: ``weight_method='bwn'``, ``weight_bits=1``, the embedding likewise
      when it was ternary, ``split=True``, ``split_shared_act=shared_act``. The result holds
      parameters only; start a fresh optimizer for it.
    Raises:
      ValueError: ``spec`` is not an unsplit TWN ternary model, ``only`` names an unknown matrix, or
        a parameter has an unexpected shape.
    """
    new_spec = split_spec(spec, only, shared_act)
    q = spec.quant
    new = _copy_tree(params)
    for path in candidate_paths(spec):
        if not new_spec.quant.is_split(path):
            continue  # ternary → binary keeps the latent weight; only the spec changes.
        if path == EMBEDDING_PATH:
            table = np.asarray(_get(params, path))
            if table.ndim != 2:
                raise ValueError(f"{path}: expected a (vocab, hidden) table, got shape {table.shape}")
            _set(new, path, np.stack(split_ternary_weight(table, EMBED_AXES[q.embed_granularity])))
            continue
        layer = dict(_get(params, path))
        kernel = np.asarray(layer["kernel"])
        if kernel.ndim != 2:
            raise ValueError(f"{path}/kernel: expected an (in, out) kernel, got shape {kernel.shape}")
        layer["kernel"] = np.stack(split_ternary_weight(kernel, KERNEL_AXES[q.weight_granularity]))
        layer["bias"] = split_bias(layer["bias"])
        if not shared_act:
            for name in ("input_clip", "input_step"):
                if name in layer:
                    value = np.asarray(layer[name])
                    layer[name] = np.stack([value, value])
        _set(new, path, layer)
    return new, new_spec


def count_params(params: Any) -> int:
    """Number of scalars in a parameter tree."""
    return int(sum(np.size(x) for x in jax.tree_util.tree_leaves(params)))


def split_checkpoint(src_dir: str | os.PathLike, out_dir: str | os.PathLike, *,
                     only: Optional[Iterable[str]] = None, shared_act: bool = True) -> dict:
    """Splits a ternary model checkpoint (``checkpoints.save_model`` layout) into a binary one.

    Args:
      src_dir: the ternary model checkpoint.
      out_dir: where to write the split model (replaced if it exists).
      only, shared_act: as for ``split_params``.
    Returns:
      A summary: ``out_dir``, ``split`` and ``unsplit`` (matrix paths), ``params_before`` and
      ``params_after`` (scalar counts). The checkpoint's ``info`` records ``stage='tws'``, the
      ``source`` path, the split/unsplit matrices, and the source's own info as ``source_info``.
    """
    src = workdirs.absolute(src_dir)
    out = workdirs.absolute(out_dir)
    if out == src or src in out.parents or out in src.parents:
        # save_model replaces ``out`` whole: it would destroy the ternary checkpoint.
        raise UserError(f"--out {out} overlaps the source checkpoint {src}: write the split model "
                        "elsewhere (e.g. a sibling directory)")
    params, spec, src_info = checkpoints.load_model(src)
    new_params, new_spec = split_params(params, spec, only=only, shared_act=shared_act)
    candidates = candidate_paths(spec)
    split = [p for p in candidates if new_spec.quant.is_split(p)]
    info = {"stage": "tws", "source": str(src), "split": split,
            "unsplit": list(new_spec.quant.unsplit), "shared_act": shared_act, "source_info": src_info}
    out = checkpoints.save_model(out_dir, new_params, new_spec, info)
    return {"out_dir": str(out), "split": split, "unsplit": list(new_spec.quant.unsplit),
            "params_before": count_params(params), "params_after": count_params(new_params)}
