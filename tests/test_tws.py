"""Ternary weight splitting: exactness properties, agreement with the released code, model-level
equivalence of the split binary model with the ternary one, errors, and the ``launch.split`` main."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from binarybert_jax import quant, checkpoints, errors, tws
from binarybert_jax.model import BertConfig, ModelSpec, QuantConfig
from binarybert_jax.trees import flatten
from launch import split as split_main

CONFIG = BertConfig(vocab_size=100, hidden_size=32, num_layers=2, num_heads=4, head_dim=8,
                    intermediate_size=64, max_position=32)


def _random(seed, shape, heavy=False, dtype=np.float32):
    rng = np.random.default_rng(seed)
    w = rng.standard_t(3, shape) if heavy else rng.normal(size=shape)
    return (0.05 * w).astype(dtype)


@functools.partial(jax.jit, static_argnums=3)
def _ternary_and_split_binary(w, w1, w2, axes):
    """TWN(w) and BWN(w1) + BWN(w2), from quant's formulas (jitted: one compile per case instead
    of one per operation)."""
    return (quant.ternary_values(w, axes),
            quant.binary_values(w1, axes) + quant.binary_values(w2, axes))


def _check_split(w, axes, atol_quant):
    w1, w2 = tws.split_ternary_weight(w, axes)
    assert w1.dtype == w2.dtype == w.dtype and w1.shape == w2.shape == w.shape
    # Each half is rounded once to w's dtype, and neither exceeds max|w| by much (b < Δ).
    atol_sum = 4 * np.finfo(w.dtype).eps * max(float(np.abs(w).max()), 1e-30)
    np.testing.assert_allclose(w1.astype(np.float64) + w2, w, rtol=0, atol=atol_sum)
    with jax.enable_x64(True):  # keep float64 inputs float64 inside the jnp quantizers
        ternary, binary = _ternary_and_split_binary(w, w1, w2, tuple(axes))
    np.testing.assert_allclose(np.asarray(binary), np.asarray(ternary), rtol=0, atol=atol_quant)
    return w1, w2


# ---- the split of one weight --------------------------------------------------------------------

@pytest.mark.parametrize("dtype,atol", [(np.float32, 1e-6), (np.float64, 1e-12)])
@pytest.mark.parametrize("shape,axes", [((48, 64), quant.LAYERWISE), ((7, 33, 5), quant.LAYERWISE),
                                        ((101, 24), (-1,)), ((40, 16), (-2,))])
def test_split_is_exact(dtype, atol, shape, axes):
    """w1 + w2 = w and BWN(w1) + BWN(w2) = TWN(w) per scale group (matrix, row, output unit)."""
    # Scales are ~0.05 (up to ~0.1 for the heavy tails); ``atol`` is ~1e2 float32 / 1e4 float64
    # units of rounding at that size.
    for seed in range(4):
        _check_split(_random(seed, shape, heavy=seed % 2 == 1, dtype=dtype), axes, atol)


def test_split_edge_cases():
    # All-zero groups (Σ_I|w| = 0): both halves are zero, no NaN.
    w1, w2 = _check_split(np.zeros((4, 6), np.float32), quant.LAYERWISE, 0)
    assert not w1.any() and not w2.any()
    # Every entry kept by TWN (|J| + |K| = 0): b is irrelevant, the halves are w/2.
    signs = np.sign(_random(0, (5, 8))).astype(np.float32)
    w1, w2 = _check_split(0.3 * signs, quant.LAYERWISE, 1e-7)
    np.testing.assert_array_equal(w1, 0.3 * signs / 2)
    np.testing.assert_array_equal(w2, w1)
    # Row-wise with one zero row and one row of equal magnitudes among ordinary rows.
    e = _random(3, (6, 10))
    e[1], e[4] = 0.0, 0.2 * np.sign(e[4])
    w1, w2 = _check_split(e, (-1,), 1e-6)
    assert np.isfinite(w1).all() and np.isfinite(w2).all() and not w1[1].any()
    # Integer input splits in float32.
    w1, _ = tws.split_ternary_weight(np.arange(-6, 6).reshape(3, 4))
    assert w1.dtype == np.float32


def test_split_matches_released_code(fixtures_dir):
    ref = np.load(fixtures_dir / "reference_quant_seed0.npz")
    # The released code's split of a float32 (out, in) matrix (layer-wise: layout is irrelevant)
    # and of an embedding per row: bit-identical.
    w1, w2 = tws.split_ternary_weight(ref["W_f32"], quant.LAYERWISE)
    np.testing.assert_array_equal(w1, ref["tws_W1"])
    np.testing.assert_array_equal(w2, ref["tws_W2"])
    e1, e2 = tws.split_ternary_weight(ref["E_f32"], (-1,))
    np.testing.assert_array_equal(e1, ref["tws_E1"])
    np.testing.assert_array_equal(e2, ref["tws_E2"])
    # The reference bias is linspace(-1, 1, 64) made in float32 by torch (not bit-identical to
    # numpy's): halving is exact, so compare the halves of its sum exactly and to numpy's at 3e-8.
    b = tws.split_bias(ref["tws_b1"] + ref["tws_b2"])
    np.testing.assert_array_equal(b, np.stack([ref["tws_b1"], ref["tws_b2"]]))
    np.testing.assert_allclose(tws.split_bias(np.linspace(-1, 1, 64))[0], ref["tws_b1"], atol=3e-8)


# ---- model-level equivalence ---------------------------------------------------------------------

def _ternary_spec(**quant_kwargs):
    q = dict(weight_bits=2, embed_bits=2, act_bits=32)
    q.update(quant_kwargs)
    return ModelSpec(CONFIG, QuantConfig(**q), num_labels=3)


def _inputs():
    rng = np.random.default_rng(0)
    ids = jnp.asarray(rng.integers(1, CONFIG.vocab_size, (3, 12)))
    mask = jnp.asarray((np.arange(12)[None] < np.array([12, 9, 5])[:, None]).astype(np.int32))
    types = jnp.asarray((np.arange(12)[None] >= 6).astype(np.int32).repeat(3, 0))
    return ids, types, mask


def _trained_like_params(spec, seed):
    """Random parameters shaped like ``spec``'s model, with the spread of a trained one.

    Shapes come from tracing ``init`` (no compilation). Biases, LayerNorm and activation clip
    ranges are random rather than at their init values: at init every bias is 0, so a dense
    layer's output lies on a lattice (activation step × weight scale × integer) and the next 8-bit
    quantizer meets exact rounding ties (x·s = k + ½), which the last-bit difference between
    Ŵ1 + Ŵ2 and the ternary Ŵ then resolves either way. Trained models have no such lattice.
    """
    shapes = jax.eval_shape(lambda: spec.build().init(jax.random.PRNGKey(0), *_inputs()))["params"]
    rng = np.random.default_rng(seed)

    def draw(path, leaf):
        name = jax.tree_util.keystr(path)
        if name.endswith("_clip']"):
            value = np.array([-2.5, 2.5]) * rng.uniform(0.6, 1.2, size=leaf.shape)
        elif "LayerNorm" in name and name.endswith("['scale']"):
            value = 1.0 + 0.1 * rng.normal(size=leaf.shape)
        else:
            value = 0.02 * rng.normal(size=leaf.shape)
        return value.astype(np.float32)

    return jax.tree_util.tree_map_with_path(draw, shapes)


def _max_errors(a, b):
    out = {}
    for key in ("logits", "pooled", "hidden_states", "attention_scores"):
        xs, ys = jax.tree_util.tree_leaves(a[key]), jax.tree_util.tree_leaves(b[key])
        out[key] = max(float(np.max(np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64))))
                       for x, y in zip(xs, ys))
    return out


def _assert_equivalent(spec, params, new_spec, new_params, atol, dtype=jnp.float32):
    """Both models' logits, pooled output, every hidden state and every pre-softmax attention score
    agree within ``atol``.

    float32 runs eagerly: the tests' models share their operations, whose compiled kernels JAX
    caches, so each further model costs well under a second. float64 (under ``enable_x64``) runs
    both models in one jitted function: compiling it is cheaper than recompiling every operation
    for float64 eagerly.
    """
    inputs = _inputs()

    def both(p, q):
        return (spec.build(dtype).apply({"params": p}, *inputs),
                new_spec.build(dtype).apply({"params": q}, *inputs))

    ref, out = (both if dtype == jnp.float32 else jax.jit(both))(params, new_params)
    errors = _max_errors(ref, out)
    assert max(errors.values()) <= atol, errors


# Tolerances, from the maximum error over all outputs measured on 8 seeds per configuration:
# * Activations full precision, float32: ≤ 9.5e-7 (Ŵ1 + Ŵ2 = Ŵ up to float32 rounding).
# * 8-bit activations, float64: ≤ 2.4e-15 (8 seeds × shared/separate quantizers × layer/row
#   granularity × with/without padding); the test runs it for separate quantizers.
# * 8-bit activations, float32: ≤ 1.2e-6 in 55 of 64 runs. In the other 9 the last-bit difference
#   between Ŵ1 + Ŵ2 and Ŵ (relative ~1e-7, ~1e-6 after a layer's arithmetic) flipped a rounding
#   decision lying that close to a tie (x·s within ~1e-5 of k + ½): one activation moves one step
#   and the outputs after it by up to 2e-4 (the largest seen). The float32
#   check is therefore only flip-tolerant (1e-3); exactness with quantized activations is checked
#   in float64, where such near-ties do not occur.
F32_ATOL = 1e-5
F32_ACT8_ATOL = 1e-3
F64_ATOL = 1e-12


def _assert_layout(spec, params):
    """``params`` has exactly the tree and shapes that ``spec``'s model creates."""
    expected = jax.eval_shape(lambda: spec.build().init(jax.random.PRNGKey(0), *_inputs()))["params"]
    assert jax.tree_util.tree_map(np.shape, params) == jax.tree_util.tree_map(np.shape, expected)


def _check_split_spec(spec, new_spec, shared_act):
    q = new_spec.quant
    assert (q.weight_method, q.weight_bits, q.embed_method, q.embed_bits) == ("bwn", 1, "bwn", 1)
    assert q.split and q.unsplit == () and q.split_shared_act == shared_act
    assert dataclasses.replace(q, weight_method="twn", weight_bits=2, embed_method="twn", embed_bits=2,
                               split=False, split_shared_act=True) == spec.quant


@pytest.mark.parametrize("granularity", ["layer", "row"])
def test_split_model_reproduces_ternary_model(granularity):
    spec = _ternary_spec(weight_granularity=granularity,
                         embed_granularity="layer" if granularity == "row" else "row")
    params = _trained_like_params(spec, seed=0)
    new_params, new_spec = tws.split_params(params, spec)
    _check_split_spec(spec, new_spec, True)
    layer = new_params["encoder"]["layer_1"]["ffn"]["output"]
    assert layer["kernel"].shape == (2, 64, 32) and layer["bias"].shape == (2, 32)
    assert new_params["embeddings"]["word_embeddings"].shape == (2, 100, 32)
    _assert_equivalent(spec, params, new_spec, new_params, F32_ATOL)


@pytest.mark.parametrize("shared_act", [True, False])
def test_split_model_with_8bit_activations(shared_act):
    spec = _ternary_spec(act_bits=8)
    params = _trained_like_params(spec, seed=1)
    new_params, new_spec = tws.split_params(params, spec, shared_act=shared_act)
    _check_split_spec(spec, new_spec, shared_act)
    layer = new_params["encoder"]["layer_1"]["ffn"]["output"]
    clip = params["encoder"]["layer_1"]["ffn"]["output"]["input_clip"]
    np.testing.assert_array_equal(layer["input_clip"], clip if shared_act else np.stack([clip, clip]))
    # Attention-level quantizers are not per half.
    assert new_params["encoder"]["layer_1"]["attention"]["probs_clip"].shape == (2,)
    _assert_layout(new_spec, new_params)
    _assert_equivalent(spec, params, new_spec, new_params, F32_ACT8_ATOL)
    if shared_act:
        return  # one float64 run (seconds to compile) covers the layout with more to get wrong
    with jax.enable_x64(True):
        params64 = jax.tree_util.tree_map(lambda x: np.asarray(x, np.float64), params)
        new_params64, _ = tws.split_params(params64, spec, shared_act=shared_act)
        _assert_equivalent(spec, params64, new_spec, new_params64, F64_ATOL, jnp.float64)


def test_separate_act_quantizers_without_act_quantization():
    spec = _ternary_spec(act_bits=32)
    params = _trained_like_params(spec, seed=0)
    new_params, new_spec = tws.split_params(params, spec, shared_act=False)
    _assert_equivalent(spec, params, new_spec, new_params, F32_ATOL)


def test_adaptive_split_mixes_split_and_binary_matrices():
    spec = _ternary_spec(act_bits=8)
    params = _trained_like_params(spec, seed=7)
    only = {"encoder/layer_0/attention/value", "encoder/layer_1/ffn/intermediate", "pooler/dense"}
    new_params, new_spec = tws.split_params(params, spec, only=only, shared_act=False)
    rest = [p for p in tws.candidate_paths(spec) if p not in only]
    assert new_spec.quant.unsplit == tuple(rest) and tws.EMBEDDING_PATH in rest
    _assert_layout(new_spec, new_params)
    for path in rest:  # ternary → binary keeps the latent weights (and the single input quantizer)
        jax.tree_util.tree_map(np.testing.assert_array_equal, tws._get(new_params, path),
                               tws._get(params, path))
    # Reference: split everything, then give each matrix outside ``only`` the halves (w, 0):
    # BWN(0) = 0, so that matrix computes BWN(w), as a single binary matrix does, while the
    # matrices in ``only`` compute the ternary model's TWN(w). The mixed model performs the same
    # arithmetic (a zero product added), so it must match to the last bit.
    ref_params, ref_spec = tws.split_params(params, spec, shared_act=False)
    for path in rest:
        if path == tws.EMBEDDING_PATH:
            table = np.asarray(tws._get(params, path))
            tws._set(ref_params, path, np.stack([table, np.zeros_like(table)]))
            continue
        layer = dict(tws._get(ref_params, path))
        for name in ("kernel", "bias"):
            value = np.asarray(tws._get(params, path)[name])
            layer[name] = np.stack([value, np.zeros_like(value)])
        tws._set(ref_params, path, layer)
    _assert_equivalent(ref_spec, ref_params, new_spec, new_params, 1e-6)


def test_full_precision_embedding_and_pooler_stay_unsplit():
    spec = _ternary_spec(embed_bits=32, quantize_pooler=False)
    params = _trained_like_params(spec, seed=5)
    new_params, new_spec = tws.split_params(params, spec)
    assert (new_spec.quant.embed_bits, new_spec.quant.unsplit) == (32, ())
    assert tws.EMBEDDING_PATH not in tws.candidate_paths(spec)
    assert new_params["embeddings"]["word_embeddings"].shape == (100, 32)
    assert new_params["pooler"]["dense"]["kernel"].shape == (32, 32)
    _assert_layout(new_spec, new_params)
    _assert_equivalent(spec, params, new_spec, new_params, F32_ATOL)
    with pytest.raises(ValueError, match="full precision"):
        tws.split_params(params, spec, only={tws.EMBEDDING_PATH})


def test_input_tree_is_not_modified_and_lsq_steps_are_duplicated():
    spec = _ternary_spec(act_bits=4, act_method="lsq")
    params = _trained_like_params(spec, seed=1)
    before = jax.tree_util.tree_map(np.copy, params)
    new_params, new_spec = tws.split_params(params, spec, shared_act=False)
    jax.tree_util.tree_map(np.testing.assert_array_equal, params, before)
    dense = params["encoder"]["layer_0"]["attention"]["query"]
    split = new_params["encoder"]["layer_0"]["attention"]["query"]
    assert dense["input_step"].shape == () and split["input_step"].shape == (2,)
    np.testing.assert_array_equal(split["input_step"], [dense["input_step"]] * 2)
    _assert_layout(new_spec, new_params)


# ---- errors ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("quant_cfg,match", [
    (QuantConfig(weight_bits=1, weight_method="bwn", embed_bits=1, embed_method="bwn"),
     "weight_method='bwn'"),
    (QuantConfig(), "weight_method='twn', weight_bits=32"),
    (QuantConfig(weight_bits=2, weight_method="lat"), "weight_method='lat'"),
    (QuantConfig(weight_bits=2, embed_bits=1, embed_method="bwn"), "embed_method='bwn'"),
    (QuantConfig(weight_bits=1, weight_method="bwn", embed_bits=1, embed_method="bwn", split=True),
     "already split"),
])
def test_refuses_what_is_not_an_unsplit_ternary_model(quant_cfg, match):
    with pytest.raises(ValueError, match=match):
        tws.split_params({}, ModelSpec(CONFIG, quant_cfg))


def test_unknown_only_path_is_an_error():
    with pytest.raises(ValueError, match="encoder/layer_9/ffn/output"):
        tws.split_spec(_ternary_spec(), only={"encoder/layer_9/ffn/output"})


# ---- launch.split --------------------------------------------------------------------------------

def test_launch_split_round_trip(tmp_path, capsys):
    spec = _ternary_spec(act_bits=8)
    params = _trained_like_params(spec, seed=2)
    checkpoints.save_model(tmp_path / "ternary", params, spec, {"stage": "ternary", "task": "mrpc"})
    only_file = tmp_path / "only.txt"
    only_file.write_text("# matrices to split\nencoder/layer_0/ffn/output\npooler/dense, "
                         "embeddings/word_embeddings\n")
    summary = split_main.main(["--ternary", str(tmp_path / "ternary"), "--out", str(tmp_path / "tws"),
                               "--only", str(only_file), "--separate-act-quantizers"])
    line = capsys.readouterr().out.strip()
    assert "split 3/14 matrices" in line and f"{summary['params_after']:,}" in line
    new_params, new_spec, info = checkpoints.load_model(tmp_path / "tws")
    expected_params, expected_spec = tws.split_params(
        params, spec, only={"encoder/layer_0/ffn/output", "pooler/dense", tws.EMBEDDING_PATH},
        shared_act=False)
    assert new_spec == expected_spec
    jax.tree_util.tree_map(np.testing.assert_array_equal, new_params, expected_params)
    assert info["stage"] == "tws" and info["source"] == str(tmp_path / "ternary")
    assert info["source_info"]["task"] == "mrpc"
    assert summary["params_after"] - summary["params_before"] == tws.count_params(
        [tws._get(params, p)["kernel"] for p in ("encoder/layer_0/ffn/output", "pooler/dense")]
        + [tws._get(params, p)["bias"] for p in ("encoder/layer_0/ffn/output", "pooler/dense")]
        + [params["embeddings"]["word_embeddings"]]
        + [tws._get(params, p)["input_clip"] for p in ("encoder/layer_0/ffn/output", "pooler/dense")])

    # Splitting everything (comma list not given): all 14 matrices.
    split_main.main(["--ternary", str(tmp_path / "ternary"), "--out", str(tmp_path / "tws_all")])
    assert "split 14/14 matrices (0 kept" in capsys.readouterr().out

    # The split model is not ternary: a clear error naming the field.
    with pytest.raises(errors.UserError, match="weight_method='bwn'"):
        split_main.main(["--ternary", str(tmp_path / "tws"), "--out", str(tmp_path / "again")])
    with pytest.raises(errors.UserError, match="not a binarybert-jax model checkpoint"):
        split_main.main(["--ternary", str(tmp_path / "missing"), "--out", str(tmp_path / "x")])
    assert not (tmp_path / "again").exists()


def test_parse_only_formats(tmp_path):
    assert split_main.parse_only(None) is None
    assert split_main.parse_only("a/b, c/d") == {"a/b", "c/d"}
    assert split_main.parse_only("") == set()
    (tmp_path / "only.json").write_text('["a/b", "c/d"]')
    assert split_main.parse_only(str(tmp_path / "only.json")) == {"a/b", "c/d"}


def _with_halves(params, second_half):
    """``params`` with every split kernel's second half replaced by ``second_half(first, second)``."""
    def replace(path, leaf):
        if np.ndim(leaf) == 3 and jax.tree_util.keystr(path).endswith("['kernel']"):
            return np.stack([leaf[0], second_half(leaf[0], leaf[1])])
        return leaf
    return jax.tree_util.tree_map_with_path(replace, params)


def _forward_and_grads(spec, params):
    model, inputs = spec.build(), _inputs()

    def loss(p):
        out = model.apply({"params": p}, *inputs)
        hidden = sum(jnp.sum(h ** 2) for h in out["hidden_states"])
        return jnp.sum(out["logits"] * jnp.arange(3.0)) + 1e-3 * hidden, out

    (_, out), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(params)
    return out, grads


@pytest.mark.parametrize("halves", ["equal scales", "drifted scales"])
def test_summed_split_forward_against_the_exact_one(halves):
    """``split_forward='summed'`` (one product of the summed halves) against the exact two-product
    forward on a split W1A8 model. Halves with equal scales (as TWS leaves them; here the second
    half is the first with random signs, so its mean |w| is the same bits): the same bits,
    outputs and every gradient. Halves whose scales drifted 10% apart: the one product rounds the
    ±2r entries to bfloat16 (r ≈ 0.05), which moves outputs by ~1e-4 and a few 8-bit activation
    codes; the per-half kernel gradients stay within 1% of each kernel's largest (measured
    ≤ 0.4% over 3 seeds)."""
    spec = _ternary_spec(act_bits=8)
    params, split_spec_ = tws.split_params(_trained_like_params(spec, seed=2), spec)
    if halves == "equal scales":
        signs = np.random.default_rng(0)
        params = _with_halves(params, lambda w1, _: w1 * signs.choice([-1.0, 1.0], w1.shape).astype(w1.dtype))
    else:
        params = _with_halves(params, lambda _, w2: w2 * np.float32(1.1))
    summed_spec = dataclasses.replace(split_spec_, quant=dataclasses.replace(split_spec_.quant,
                                                                            split_forward="summed"))
    assert summed_spec.for_evaluation() == split_spec_
    exact_out, exact_grads = _forward_and_grads(split_spec_, params)
    summed_out, summed_grads = _forward_and_grads(summed_spec, params)
    if halves == "equal scales":
        jax.tree_util.tree_map(np.testing.assert_array_equal, summed_out, exact_out)
        jax.tree_util.tree_map(np.testing.assert_array_equal, summed_grads, exact_grads)
        return
    errors = _max_errors(exact_out, summed_out)
    assert 0 < max(errors.values()) <= 2e-3, errors
    flat_exact, flat_summed = flatten(exact_grads), flatten(summed_grads)
    kernels = [k for k in flat_exact if k.endswith("kernel") and np.ndim(flat_exact[k]) == 3]
    assert len(kernels) == 2 * 6 + 1  # Q, K, V, attention output, FFN in and out of 2 layers; pooler
    for k in kernels:
        want, got = np.asarray(flat_exact[k]), np.asarray(flat_summed[k])
        assert np.abs(got - want).max() <= 0.01 * np.abs(want).max(), k
        assert np.abs(want[0]).max() > 0 and np.abs(want[1]).max() > 0
