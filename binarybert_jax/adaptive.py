"""Adaptive splitting: which matrices of a ternary model to split, under a model-size budget.

BinaryBERT (§3.3) splits only the most important matrices of the half-width ternary model and
binarizes the rest directly, trading accuracy for size: choose ``s ∈ {0, 1}^n`` to

    maximise  Σ u_i·s_i    subject to    Σ c_i·s_i ≤ C − C0,

with ``u_i`` the sensitivity of matrix ``i`` (what splitting it preserves), ``c_i`` the extra size
of splitting it, ``C`` the budget and ``C0`` the size with nothing split. The released code has no
implementation; this module is ours.

Candidates
  ``tws.candidate_paths(spec)`` of a trained, unsplit TWN ternary model: every quantized Transformer
  kernel, the pooler's when it is quantized, and the word embedding when it is quantized.

Sensitivity
  ``u_i = L(matrix i binary, every other matrix split) − L(every matrix split)`` on held-out batches,
  with ``L`` the distillation objective of the split model's fine-tuning without its attention term:
  Σ over the embedding output and every layer of the hidden-state MSE (real tokens only) plus the
  prediction loss (soft cross-entropy on the logits; MSE for a regression head).
  * By the TWS identity the fully split model computes exactly what the ternary model computes, and a
    matrix left unsplit computes BWN of its latent weight (``tws.split_params(only=…)``). So the
    model with only matrix ``i`` binary is the ternary model whose kernel ``i`` is BWN(w_i) — and it
    can be run as the ternary model itself with ``w_i`` replaced by ``BWN(w_i)``: every entry of
    ``BWN(w_i)`` has magnitude α (or is 0 where ``w_i`` is), so TWN keeps them all (the threshold is
    0.7·mean ≤ 0.7·α) with scale α, i.e. ``TWN(BWN(w)) = BWN(w)`` per scale group. All ``n + 1``
    models then share one compiled forward pass instead of ``n + 1`` split architectures (the tests
    check this against ``tws.split_params`` models).
  * Reference outputs: by default the ternary model's own (``teacher=None``). Then ``L(all split)``
    is just the entropy of its predictions, the soft cross-entropy difference is
    ``KL(p_ternary ‖ p_i)``, and ``u_i ≥ 0`` is the distortion that binarizing matrix ``i`` alone
    adds: what splitting it saves, which is what the knapsack should buy. This needs no teacher and
    no labels, and has low variance. With ``teacher=(spec, params)`` (e.g. the half-width
    full-precision model the split model is then distilled from) ``u_i`` is the increase of the
    actual training objective; it can come out negative for a matrix whose binarization happens to
    move the model toward the teacher, and such a matrix is never worth bits.
Cost
  ``c_i`` = size(split model with ``i`` split) − size(with ``i`` binary), from ``size.py``'s
  counting: the second 1-bit plane, ``numel(i)`` bits (plus its scales when scales are counted).
  Size is additive over tensors and splitting ``i`` changes only ``i``'s tensors, so the costs are
  read off two size reports (nothing split, everything split) and ``C0 + Σ_S c_i`` is the exact
  size of the plan ``S`` (the final size is recomputed from its spec all the same).
Knapsack
  Exact 0/1 dynamic programming over the capacity in units of ``g = gcd(c_i)``. Matrices of one
  shape cost the same, so ``g`` is large: for half-width BERT-base ``g`` = 4608 bits and the table
  has ~74 × 14,400 cells. When the table would exceed ``max_cells`` (e.g. with scales counted,
  ``g`` drops to 32), costs are rounded *up* to a coarser unit ``s`` and the capacity down, which
  keeps every answer within budget and loses at most the value that fits in the last ``n·s`` bits.
Baselines at the same budget (the paper's comparison)
  greedy in three orders, adding each matrix that still fits: ``min`` (least sensitive first),
  ``random`` (a seeded permutation), ``max`` (most sensitive first).
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import math
from typing import Any, Iterable, Mapping, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from binarybert_jax import evaluate, kd, quant, size, tws
from binarybert_jax.model import ModelSpec
from binarybert_jax.sharding import device_batch
from binarybert_jax.trees import flatten, unflatten

UNIT_BITS = {"MiB": 8 * size.MIB, "MB": 8 * size.MB, "bits": 1}
DEFAULT_MAX_CELLS = 20_000_000
BASELINES = ("min", "random", "max")


# ---------------------------------------------------------------------------------------------
# Costs.
# ---------------------------------------------------------------------------------------------
def _module_bits(report: size.SizeReport, path: str) -> int:
    """Bits of the tensors of one candidate (its kernel and everything beside it, or the table)."""
    return report.bits_where(lambda t: t.path == path or t.path.startswith(path + "/"))


def split_costs(spec: ModelSpec, shared_act: bool = True, include_scales: bool = False
                ) -> tuple[dict[str, int], int, int]:
    """The extra bits of splitting each candidate matrix, and the sizes at both extremes.

    Args:
      spec: an unsplit TWN ternary model (``tws.check_ternary_spec``).
      shared_act: as for ``tws.split_params`` (separate quantizers only add activation parameters,
        which the counting leaves out).
      include_scales: count the float32 scales in the sizes (the papers do not).
    Returns:
      ``(costs, base_bits, full_bits)``: ``{path: c_i}`` in model order, the size with nothing split
      (``C0``) and with everything split, in bits (``size.model_size_bits``, task head included).
    """
    none = size.model_size_bits(tws.split_spec(spec, only=(), shared_act=shared_act),
                                include_scales=include_scales)
    full = size.model_size_bits(tws.split_spec(spec, only=None, shared_act=shared_act),
                                include_scales=include_scales)
    costs = {p: _module_bits(full, p) - _module_bits(none, p) for p in tws.candidate_paths(spec)}
    return costs, none.total_bits, full.total_bits


# ---------------------------------------------------------------------------------------------
# Sensitivities.
# ---------------------------------------------------------------------------------------------
def outputs_fn(spec: ModelSpec):
    """Jitted ``(params, batch) -> {"hidden_states", "logits"}`` of ``spec``'s model (eval mode).

    One compiled forward serves the reference and every binarized variant (same tree, same shapes).
    """
    return evaluate.forward_fn(spec, ("hidden_states", "logits"))


@functools.partial(jax.jit, static_argnames=("is_regression", "span"))
def kd_loss(outputs, reference, batch, is_regression: bool = False, span: bool = False) -> jax.Array:
    """Hidden-state MSE over real tokens plus the prediction loss of ``outputs`` against
    ``reference`` (both from ``outputs_fn``). Kept apart from the forward pass, so the forward is
    compiled once per model and this small function once per output shape."""
    # Padding rows of a short last batch are copies; leave their tokens out of the MSE too.
    real = batch["example_mask"][:, None].astype(batch["attention_mask"].dtype)
    loss_batch = {"attention_mask": batch["attention_mask"] * real, "example_mask": batch["example_mask"]}
    return kd.kd_losses(outputs, reference, loss_batch, objective="joint", is_regression=is_regression,
                        attention=False, ignore_padding=True, span=span)["total"]


def _binarized_leaf(spec: ModelSpec, flat: Mapping[str, jax.Array], path: str) -> tuple[str, jax.Array]:
    """Candidate ``path``'s leaf key in the flat tree, and BWN of its weight."""
    q = spec.quant
    if path == tws.EMBEDDING_PATH:
        key, axes = path, tws.EMBED_AXES[q.embed_granularity]
    else:
        key, axes = f"{path}/kernel", tws.KERNEL_AXES[q.weight_granularity]
    return key, quant.binary_values(flat[key], axes)


def binarized_variants(spec: ModelSpec, params: Any) -> dict[str, Any]:
    """For each candidate ``i``, the ternary model's parameters with ``w_i`` replaced by BWN(w_i):
    run as the ternary model they compute the split model with only ``i`` left binary (see the
    module docstring). Leaves other than ``w_i`` are shared with ``params``.

    Returns:
      ``{path: params tree}`` in model order.
    """
    flat = {k: jnp.asarray(v) for k, v in flatten(params).items()}
    variants = {}
    for path in tws.candidate_paths(spec):
        key, binary = _binarized_leaf(spec, flat, path)
        variants[path] = unflatten({**flat, key: binary})
    return variants


def as_ternary(spec: ModelSpec, params: Any, chosen: Iterable[str]) -> Any:
    """The ternary model's parameters that compute the split model of a plan: every candidate not
    in ``chosen`` replaced by BWN of its weight (module docstring). Run as the ternary model
    (``spec``), they give what ``tws.split_params(params, spec, only=chosen)`` gives, and every
    plan runs the ternary model's one compiled forward where each split model compiles its own."""
    tws.check_ternary_spec(spec)
    candidates = tws.candidate_paths(spec)
    chosen = tws.chosen_paths(candidates, chosen, spec)  # an unknown path is an error, as for a split
    flat = {k: jnp.asarray(v) for k, v in flatten(params).items()}
    swapped = dict(_binarized_leaf(spec, flat, p) for p in candidates if p not in chosen)
    return unflatten({**flat, **swapped})


def sensitivities(spec: ModelSpec, params: Any, batches: Iterable[Mapping[str, Any]], *,
                  teacher: Optional[tuple[ModelSpec, Any]] = None,
                  num_batches: Optional[int] = None) -> tuple[dict[str, float], float]:
    """``u_i = L(only i binary) − L(all split)`` for every candidate matrix (module docstring).

    Args:
      spec: an unsplit TWN ternary model.
      params: its trained parameters.
      batches: held-out batches (``input_ids``, ``token_type_ids``, ``attention_mask`` ``(B, T)``,
        optional ``example_mask`` ``(B,)``); labels are not used.
      teacher: ``(spec, params)`` of the model whose outputs are the targets; None uses the ternary
        model's own outputs. Its hidden size and layer count must match ``spec``'s.
      num_batches: use at most this many batches.
    Returns:
      ``({path: u_i}, L(all split))``; losses are means over batches weighted by real examples.
    """
    tws.check_ternary_spec(spec)
    params = jax.tree_util.tree_map(jnp.asarray, params)
    variants = binarized_variants(spec, params)
    forward = outputs_fn(spec)
    regression = spec.num_labels == 1
    ref_spec, ref_params = (spec, params) if teacher is None else teacher
    ref_fn = outputs_fn(ref_spec)
    ref_params = jax.tree_util.tree_map(jnp.asarray, ref_params)
    totals, weight = np.zeros(len(variants) + 1), 0.0
    for raw in itertools.islice(batches, num_batches):
        batch = device_batch(raw)
        reference = ref_fn(ref_params, batch)
        losses = [kd_loss(forward(p, batch), reference, batch, regression, spec.head == "span")
                  for p in (params, *variants.values())]
        losses, w = jax.device_get((losses, jnp.sum(batch["example_mask"])))  # one host sync per batch
        w = float(w)
        totals += w * np.asarray(losses, np.float64)
        weight += w
    if weight == 0:
        raise ValueError("sensitivities got no batches (or only padding rows)")
    mean = totals / weight
    return {p: float(m - mean[0]) for p, m in zip(variants, mean[1:])}, float(mean[0])


# ---------------------------------------------------------------------------------------------
# Knapsack and baselines.
# ---------------------------------------------------------------------------------------------
def knapsack(values: Sequence[float], costs: Sequence[int], capacity: int,
             max_cells: int = DEFAULT_MAX_CELLS) -> tuple[int, ...]:
    """0/1 knapsack: the item set of maximal total value whose total cost is ≤ ``capacity``.

    Exact DP over costs in units of their gcd; when ``items × (capacity / gcd)`` exceeds
    ``max_cells``, a DP on costs rounded up to a coarser unit (always within capacity, possibly
    short of the optimum by the value of what fits in ``items × unit`` bits). Items of value ≤ 0
    are never chosen (they cannot raise the total); items of cost 0 and positive value always are.
    Among optimal sets, ties go to leaving an item out.

    Args:
      values: ``(n,)`` item values.
      costs: ``(n,)`` non-negative integer costs.
      capacity: non-negative integer capacity.
      max_cells: largest DP table (items × capacity units) built.
    Returns:
      Sorted indices of the chosen items.
    """
    values = np.asarray(values, np.float64)
    costs_arr = np.asarray(costs)
    if values.shape != costs_arr.shape or values.ndim != 1:
        raise ValueError(f"values and costs must be 1-D of equal length, got {values.shape} and "
                         f"{costs_arr.shape}")
    if not np.issubdtype(costs_arr.dtype, np.integer) and not np.all(costs_arr == np.round(costs_arr)):
        raise ValueError("costs must be integers (bits)")
    costs_arr = costs_arr.astype(np.int64)
    if (costs_arr < 0).any() or capacity < 0:
        raise ValueError(f"costs and capacity must be non-negative (capacity {capacity})")
    capacity = int(capacity)
    free = [i for i in range(len(values)) if values[i] > 0 and costs_arr[i] == 0]
    items = [i for i in range(len(values)) if values[i] > 0 and 0 < costs_arr[i] <= capacity]
    if not items:
        return tuple(sorted(free))
    total = int(costs_arr[items].sum())
    if total <= capacity:
        return tuple(sorted(free + items))
    unit = functools.reduce(math.gcd, (int(costs_arr[i]) for i in items))
    max_units = max(1, max_cells // len(items) - 1)
    if capacity // unit > max_units:
        # Coarser unit: ceil-rounded costs against a floor-rounded capacity stay feasible in bits.
        unit = -(-capacity // max_units)
    units = -(-costs_arr[items] // unit)
    cap = capacity // unit
    best = np.zeros(cap + 1)
    take = np.zeros((len(items), cap + 1), bool)
    for k, i in enumerate(items):
        c = int(units[k])
        if c > cap:
            continue
        candidate = best[:cap + 1 - c] + values[i]  # a new array: 0/1, each item used once
        better = candidate > best[c:]
        take[k, c:] = better
        best[c:] = np.where(better, candidate, best[c:])
    chosen, w = [], cap
    for k in range(len(items) - 1, -1, -1):
        if take[k, w]:
            chosen.append(items[k])
            w -= int(units[k])
    return tuple(sorted(free + chosen))


def greedy(order: Sequence[int], costs: Sequence[int], capacity: int) -> tuple[int, ...]:
    """Walks ``order`` and takes every item that still fits; returns the sorted indices."""
    chosen, left = [], int(capacity)
    for i in order:
        if costs[i] <= left:
            chosen.append(i)
            left -= int(costs[i])
    return tuple(sorted(chosen))


# ---------------------------------------------------------------------------------------------
# The plan.
# ---------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class AdaptivePlan:
    """Which matrices to split, and why.

    Attributes:
      chosen: paths of the matrices to split (``tws.split_params(only=chosen)``), model order.
      sensitivities: ``{path: u_i}`` for every candidate.
      costs: ``{path: c_i}`` in bits.
      size_mb: the planned split model's size, in ``unit``.
      baselines: ``{"min" | "random" | "max": chosen paths}`` at the same budget.
      unit: ``MiB`` (2^20 bytes, the papers' "MB"), ``MB`` (10^6 bytes) or ``bits``.
      budget_mb, base_mb, full_mb: the budget, the size with nothing split (C0) and with
        everything split, in ``unit``.
      base_loss: ``L(all split)`` of the sensitivity definition.
      shared_act: passed on to ``tws.split_params`` by ``apply``.
    """

    chosen: tuple[str, ...]
    sensitivities: dict[str, float]
    costs: dict[str, int]
    size_mb: float
    baselines: dict[str, tuple[str, ...]]
    unit: str
    budget_mb: float
    base_mb: float
    full_mb: float
    base_loss: float
    shared_act: bool = True

    def gain(self, paths: Iterable[str]) -> float:
        """Σ u_i over ``paths``: the knapsack objective of a set."""
        return float(sum(self.sensitivities[p] for p in paths))

    def apply(self, params: Any, spec: ModelSpec) -> tuple[dict, ModelSpec]:
        """The adaptively split binary model: ``tws.split_params(params, spec, only=chosen)``."""
        return tws.split_params(params, spec, only=self.chosen, shared_act=self.shared_act)

    def to_dict(self) -> dict:
        """JSON-ready summary, with each set's gain."""
        d = dataclasses.asdict(self)
        d["chosen"] = list(self.chosen)
        d["baselines"] = {k: list(v) for k, v in self.baselines.items()}
        d["gains"] = {"knapsack": self.gain(self.chosen),
                      **{k: self.gain(v) for k, v in self.baselines.items()}}
        return d


def plan_adaptive_split(spec: ModelSpec, params: Any, batches: Iterable[Mapping[str, Any]],
                        budget_mb: float, *, unit: str = "MiB",
                        teacher: Optional[tuple[ModelSpec, Any]] = None,
                        num_batches: Optional[int] = None, seed: int = 0, shared_act: bool = True,
                        include_scales: bool = False, max_cells: int = DEFAULT_MAX_CELLS
                        ) -> AdaptivePlan:
    """Plans adaptive splitting of a trained ternary model under a size budget.

    Args:
      spec, params: the trained half-width ternary model (unsplit TWN).
      batches: held-out batches for the sensitivities (see ``sensitivities``).
      budget_mb: the largest allowed size of the split model, in ``unit``, counted as
        ``size.model_size_bits`` does (task head included; scales only with ``include_scales``).
      unit: ``MiB`` (the papers' "MB", as the size tables print), ``MB`` (10^6 bytes) or ``bits``.
      teacher: reference model for the sensitivities; None uses the ternary model itself.
      num_batches: use at most this many batches.
      seed: the ``random`` baseline's permutation.
      shared_act, include_scales: see ``split_costs``.
      max_cells: the knapsack's exact-DP table limit.
    Returns:
      The ``AdaptivePlan``. A budget that holds the fully split model chooses every matrix (plain
      TWS, the ternary model's function exactly), whatever the sensitivities.
    Raises:
      ValueError: unknown unit, or a budget below the size with nothing split.
    """
    if unit not in UNIT_BITS:
        raise ValueError(f"unit {unit!r}; allowed: {sorted(UNIT_BITS)}")
    tws.check_ternary_spec(spec)
    per_unit = UNIT_BITS[unit]
    costs, base_bits, full_bits = split_costs(spec, shared_act, include_scales)
    budget_bits = int(math.floor(budget_mb * per_unit))
    if budget_bits < base_bits:
        raise ValueError(f"budget {budget_mb} {unit} is below {base_bits / per_unit:.4f} {unit}, the "
                         f"size of this model with nothing split (every matrix binary); the fully "
                         f"split model is {full_bits / per_unit:.4f} {unit}")
    u, base_loss = sensitivities(spec, params, batches, teacher=teacher, num_batches=num_batches)
    paths = list(costs)
    cost_list = [costs[p] for p in paths]
    values = [u[p] for p in paths]
    capacity = budget_bits - base_bits
    if budget_bits >= full_bits:
        chosen_idx = tuple(range(len(paths)))
    else:
        chosen_idx = knapsack(values, cost_list, capacity, max_cells)
    ascending = sorted(range(len(paths)), key=lambda i: (values[i], i))
    orders = {"min": ascending, "random": list(np.random.default_rng(seed).permutation(len(paths))),
              "max": ascending[::-1]}
    baselines = {name: tuple(paths[i] for i in greedy(orders[name], cost_list, capacity))
                 for name in BASELINES}
    chosen = tuple(paths[i] for i in chosen_idx)
    planned = size.model_size_bits(tws.split_spec(spec, only=chosen, shared_act=shared_act),
                                   include_scales=include_scales).total_bits
    if planned > budget_bits:  # additivity of the size counting is what makes this impossible
        raise AssertionError(f"planned size {planned} bits exceeds the budget {budget_bits} bits")
    return AdaptivePlan(chosen=chosen, sensitivities=u, costs=costs, size_mb=planned / per_unit,
                        baselines=baselines, unit=unit, budget_mb=float(budget_mb),
                        base_mb=base_bits / per_unit, full_mb=full_bits / per_unit,
                        base_loss=base_loss, shared_act=shared_act)
