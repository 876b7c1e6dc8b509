"""Adaptive splitting: the knapsack against brute force, costs against size.py, sensitivities
against explicitly split models, and a plan end to end on a tiny ternary model."""

import dataclasses
import itertools

import jax
import numpy as np
import pytest

from binarybert_jax import adaptive, sharding, size, trees, tws
from binarybert_jax.model import BertConfig, ModelSpec, QuantConfig

CONFIG = BertConfig(vocab_size=100, hidden_size=32, num_layers=1, num_heads=2, head_dim=8,
                    intermediate_size=32, max_position=32, hidden_dropout=0.0, attention_dropout=0.0)
SPEC = ModelSpec(CONFIG, QuantConfig(2, 2, 8), num_labels=3)


# ---- knapsack ---------------------------------------------------------------------------------

def _brute_force(values, costs, capacity):
    best = 0.0
    for r in range(len(values) + 1):
        for subset in itertools.combinations(range(len(values)), r):
            if sum(costs[i] for i in subset) <= capacity:
                best = max(best, sum(values[i] for i in subset))
    return best


def test_knapsack_is_exact_on_random_instances():
    rng = np.random.default_rng(0)
    for trial in range(60):
        n = int(rng.integers(1, 10))
        # Shared factors (like matrices of one shape) and some non-positive values.
        costs = [int(c) for c in rng.choice([3, 6, 9, 12, 21, 48], n) * int(rng.integers(1, 4))]
        values = rng.normal(1.0, 1.0, n).round(3).tolist()
        capacity = int(rng.integers(0, sum(costs) + 5))
        chosen = adaptive.knapsack(values, costs, capacity)
        assert sum(costs[i] for i in chosen) <= capacity
        assert sum(values[i] for i in chosen) == pytest.approx(_brute_force(values, costs, capacity)), trial
        assert all(values[i] > 0 for i in chosen)


def test_knapsack_edge_cases_and_coarse_fallback():
    assert adaptive.knapsack([1.0, 2.0], [5, 7], 12) == (0, 1)
    assert adaptive.knapsack([1.0, 2.0], [5, 7], 4) == ()
    assert adaptive.knapsack([1.0, -2.0, 0.5], [5, 7, 0], 100) == (0, 2)
    assert adaptive.knapsack([3.0, 2.0, 2.0], [10, 6, 6], 12) == (1, 2)
    with pytest.raises(ValueError, match="non-negative"):
        adaptive.knapsack([1.0], [-1], 3)
    # A table too large for max_cells: coarser units stay within the budget and near the optimum.
    rng = np.random.default_rng(1)
    costs = rng.integers(1000, 5000, 12).tolist()
    values = rng.random(12).tolist()
    capacity = sum(costs) // 2
    coarse = adaptive.knapsack(values, costs, capacity, max_cells=12 * 50)
    assert sum(costs[i] for i in coarse) <= capacity
    assert sum(values[i] for i in coarse) >= 0.8 * _brute_force(values, costs, capacity)


def test_greedy_takes_what_fits_in_order():
    assert adaptive.greedy([2, 0, 1], [4, 4, 7], 12) == (0, 2)


# ---- costs --------------------------------------------------------------------------------------

def test_costs_are_additive_and_match_size_accounting():
    costs, base, full = adaptive.split_costs(SPEC)
    assert list(costs) == tws.candidate_paths(SPEC)
    # Without scales, splitting a matrix adds its second 1-bit plane: numel bits.
    assert costs["encoder/layer_0/ffn/intermediate"] == 32 * 32
    assert costs[tws.EMBEDDING_PATH] == 100 * 32
    assert base + sum(costs.values()) == full
    rng = np.random.default_rng(0)
    for include_scales in (False, True):
        costs, base, _ = adaptive.split_costs(SPEC, include_scales=include_scales)
        subset = [p for p in costs if rng.random() < 0.5]
        bits = size.model_size_bits(tws.split_spec(SPEC, only=subset),
                                    include_scales=include_scales).total_bits
        assert bits == base + sum(costs[p] for p in subset)


# ---- sensitivities -------------------------------------------------------------------------------

def _params(seed=0):
    """Random parameters with a trained model's spread: random biases, LayerNorm and clip ranges
    keep the 8-bit activation quantizers off exact rounding ties (see tests/test_tws.py)."""
    shapes = jax.eval_shape(lambda: SPEC.build().init(jax.random.key(0), np.ones((1, 4), np.int32)))
    rng = np.random.default_rng(seed)

    def draw(path, leaf):
        name = jax.tree_util.keystr(path)
        if name.endswith("_clip']"):
            return (np.array([-2.5, 2.5]) * rng.uniform(0.6, 1.2, leaf.shape)).astype(np.float32)
        scale = 1.0 if name.endswith("['scale']") else 0.0
        return (scale + 0.1 * rng.normal(size=leaf.shape)).astype(np.float32)

    return jax.tree_util.tree_map_with_path(draw, shapes["params"])


def _batches(n=2, batch=4, seq=12):
    rng = np.random.default_rng(7)
    out = []
    for _ in range(n):
        lengths = rng.integers(4, seq + 1, batch)
        out.append({"input_ids": rng.integers(1, CONFIG.vocab_size, (batch, seq)).astype(np.int32),
                    "token_type_ids": np.zeros((batch, seq), np.int32),
                    "attention_mask": (np.arange(seq)[None] < lengths[:, None]).astype(np.int32),
                    "example_mask": np.ones(batch, np.float32)})
    return out


@pytest.fixture(scope="module")
def trained():
    params = _params()
    # A matrix whose weights are already binary: TWN(w) = BWN(w) = w, so binarizing it changes nothing.
    layer = params["encoder"]["layer_0"]["attention"]["value"]
    layer["kernel"] = (0.05 * np.sign(np.random.default_rng(3).normal(size=layer["kernel"].shape))
                       ).astype(np.float32)
    u, base = adaptive.sensitivities(SPEC, params, _batches())
    return params, u, base


def _mean_loss(forward, params, ternary_params, batches):
    """L of ``forward``'s model against the ternary model's own outputs (the default reference)."""
    ref_fn = adaptive.outputs_fn(SPEC)
    total = 0.0
    for raw in batches:
        batch = sharding.device_batch(raw)
        total += float(batch["example_mask"].sum()) * float(adaptive.kd_loss(forward(params, batch), ref_fn(ternary_params, batch), batch))
    return total / sum(float(b["example_mask"].sum()) for b in batches)


def test_sensitivities_equal_explicitly_split_models(trained):
    """Left unsplit by tws.split_params = the ternary model with that kernel replaced by its BWN."""
    params, u, base = trained
    batches = _batches()
    variants = adaptive.binarized_variants(SPEC, params)
    forward = adaptive.outputs_fn(SPEC)
    for path in variants:  # each u_i is the swapped model's loss increase
        assert u[path] == pytest.approx(_mean_loss(forward, variants[path], params, batches) - base, abs=1e-6)
    # One split model with a kernel and the (row-wise) embedding left binary, against the
    # ternary model with both swapped (as_ternary, how the pipeline scores split orders): one
    # compilation checks both kinds of swap.
    kernel = "encoder/layer_0/ffn/intermediate"
    only = [p for p in variants if p not in (kernel, tws.EMBEDDING_PATH)]
    split_params, split_spec = tws.split_params(params, SPEC, only=only)
    swapped = adaptive.as_ternary(SPEC, params, only)
    for path in (kernel, tws.EMBEDDING_PATH):  # the two swaps, each as its one-matrix variant has it
        key = path if path == tws.EMBEDDING_PATH else f"{path}/kernel"
        np.testing.assert_array_equal(trees.flatten(swapped)[key], trees.flatten(variants[path])[key])
    assert sum(not np.array_equal(a, b) for a, b in zip(jax.tree_util.tree_leaves(swapped),
                                                        jax.tree_util.tree_leaves(params))) == 2
    explicit = _mean_loss(adaptive.outputs_fn(split_spec), split_params, params, batches) - base
    fast = _mean_loss(forward, swapped, params, batches) - base
    assert min(u[kernel], u[tws.EMBEDDING_PATH]) > 1e-3 and fast > 1e-3
    assert fast == pytest.approx(explicit, rel=1e-3, abs=1e-6)


def test_sensitivity_is_zero_where_binarizing_changes_nothing(trained):
    _, u, base = trained
    assert set(u) == set(tws.candidate_paths(SPEC)) and base > 0
    assert abs(u["encoder/layer_0/attention/value"]) < 1e-6  # float32 noise on a loss of ~1
    others = [v for p, v in u.items() if p != "encoder/layer_0/attention/value"]
    # Self-referenced sensitivities are distortions, positive; the random model's Q and K matter
    # least (near-uniform attention), at ~2e-5.
    assert min(others) > 5e-6


# ---- the plan -----------------------------------------------------------------------------------

def test_plan_within_budget_with_baselines(trained):
    params, u, _ = trained
    costs, base, full = adaptive.split_costs(SPEC)
    budget_bits = base + (full - base) // 3
    plan = adaptive.plan_adaptive_split(SPEC, params, _batches(), budget_bits, unit="bits")
    assert plan.size_mb <= budget_bits and plan.base_mb == base and plan.full_mb == full
    assert 0 < len(plan.chosen) < len(costs)
    assert list(plan.chosen) == [p for p in costs if p in plan.chosen]  # model order
    assert plan.sensitivities == pytest.approx(u)  # the same compiled functions, the same batches
    paths = list(costs)
    optimum = _brute_force_fast([u[p] for p in paths], [costs[p] for p in paths], budget_bits - base)
    assert plan.gain(plan.chosen) == pytest.approx(optimum)
    for name in adaptive.BASELINES:
        chosen = plan.baselines[name]
        assert base + sum(costs[p] for p in chosen) <= budget_bits
        assert plan.gain(chosen) <= plan.gain(plan.chosen) + 1e-9
    assert plan.gain(plan.baselines["max"]) >= plan.gain(plan.baselines["min"])
    new_params, new_spec = plan.apply(params, SPEC)
    assert size.model_size_bits(new_spec).total_bits == plan.size_mb
    assert set(new_spec.quant.unsplit) == set(paths) - set(plan.chosen)
    assert plan.to_dict()["gains"]["knapsack"] == pytest.approx(optimum)

    # MiB budgets, the extremes.
    mib = 8 * size.MIB
    everything = adaptive.plan_adaptive_split(SPEC, params, _batches(), full / mib, unit="MiB")
    assert everything.chosen == tuple(paths) and everything.size_mb == pytest.approx(full / mib)
    with pytest.raises(ValueError, match=r"budget 0.001 MiB is below 0\.\d+ MiB.*nothing split"):
        adaptive.plan_adaptive_split(SPEC, params, _batches(), 0.001, unit="MiB")


def _brute_force_fast(values, costs, capacity):
    """Exhaustive optimum via the (few) distinct costs: items of equal cost are interchangeable,
    so the best k of each cost class are the only candidates."""
    classes = {}
    for v, c in zip(values, costs):
        classes.setdefault(c, []).append(v)
    prefix = {c: np.concatenate([[0.0], np.cumsum(sorted(vs, reverse=True))]) for c, vs in classes.items()}
    best = 0.0
    for counts in itertools.product(*[range(len(vs) + 1) for vs in classes.values()]):
        if sum(k * c for k, c in zip(counts, classes)) <= capacity:
            best = max(best, sum(prefix[c][k] for k, c in zip(counts, classes)))
    return best


def test_plan_refuses_what_is_not_ternary():
    split = dataclasses.replace(SPEC, quant=QuantConfig(1, 1, 8, "bwn", "bwn", split=True))
    with pytest.raises(ValueError, match="already split"):
        adaptive.plan_adaptive_split(split, {}, [], 1.0)
    with pytest.raises(ValueError, match="unit"):
        adaptive.plan_adaptive_split(SPEC, {}, [], 1.0, unit="GB")
