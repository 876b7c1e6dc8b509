"""The quantizable BERT: structure, split mode, widths, outputs, LSQ calibration."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from binarybert_jax import model as M
from binarybert_jax import quant

TINY = M.BertConfig(vocab_size=120, hidden_size=32, num_layers=2, num_heads=4, head_dim=8,
                    intermediate_size=64, max_position=64)


def _batch(seed=0, batch=3, seq=16, pad_from=11):
    ids = jax.random.randint(jax.random.key(seed), (batch, seq), 1, TINY.vocab_size)
    mask = jnp.ones_like(ids).at[:, pad_from:].set(0)
    types = jnp.zeros_like(ids).at[:, 6:].set(1)
    return ids, types, mask


def _init(model, seed=0):
    ids, types, mask = _batch()
    return model.init(jax.random.key(seed), ids, types, mask)["params"]


def _apply(model, params, *inputs, **kwargs):
    # Eager on purpose: op-by-op dispatch shares its compile cache across tests, which here beats
    # compiling each variant's whole graph.
    rngs = kwargs.pop("rngs", None)
    return model.apply({"params": params}, *inputs, rngs=rngs, **kwargs)


def _kernel_shapes(params):
    return {"/".join(str(getattr(k, "key", k)) for k in path): leaf.shape
            for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]}


def test_full_precision_has_no_quantizer_params_and_standard_shapes():
    shapes = _kernel_shapes(_init(M.BertModel(TINY)))
    assert not any(k.endswith(("_clip", "_step")) for k in shapes)
    assert shapes["encoder/layer_0/attention/query/kernel"] == (32, 32)
    assert shapes["encoder/layer_1/ffn/intermediate/kernel"] == (32, 64)
    assert shapes["embeddings/word_embeddings"] == (120, 32)
    assert shapes["classifier/kernel"] == (32, 2)


def test_outputs_for_distillation():
    model = M.BertModel(TINY, M.QuantConfig(2, 2, 8), num_labels=3)
    ids, types, mask = _batch()
    out = model.apply({"params": _init(model)}, ids, types, mask)
    assert len(out["hidden_states"]) == TINY.num_layers + 1
    assert len(out["attention_scores"]) == TINY.num_layers
    assert out["attention_scores"][0].shape == (3, 4, 16, 16)
    assert out["logits"].shape == (3, 3)
    # Pre-softmax scores have the released code's mask constant added at padded keys.
    assert float(out["attention_scores"][0][:, :, :, 11:].max()) < -9000
    assert float(out["attention_scores"][0][:, :, :, :11].min()) > -100


def test_half_width_keeps_head_size_and_hidden():
    half = TINY.with_width(0.5)
    assert (half.num_heads, half.head_dim, half.intermediate_size, half.hidden_size) == (2, 8, 32, 32)
    shapes = _kernel_shapes(_init(M.BertModel(half)))
    assert shapes["encoder/layer_0/attention/query/kernel"] == (32, 16)
    assert shapes["encoder/layer_0/attention/output/kernel"] == (16, 32)
    assert shapes["encoder/layer_0/ffn/output/kernel"] == (32, 32)


def _halves(params_single, params_split):
    """Fills a split tree from a single one with halves w/2, w/2 (and biases halved)."""
    flat_single = dict(_flat(params_single))

    def fill(path, leaf):
        key = "/".join(str(getattr(k, "key", k)) for k in path)
        src = flat_single[key]
        if leaf.shape == src.shape:
            return src
        if key.endswith(("kernel", "bias", "word_embeddings")):
            return jnp.stack([src / 2, src / 2])
        return jnp.stack([src, src])  # per-half activation quantizers start from the same clip

    return jax.tree_util.tree_map_with_path(fill, params_split)


def _flat(params):
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        yield "/".join(str(getattr(k, "key", k)) for k in path), leaf


@pytest.mark.parametrize("shared", [True, False])
def test_split_model_with_equal_halves_equals_binary_model(shared):
    # BWN(w/2) + BWN(w/2) = BWN(w) exactly (sign and mean scale by 1/2), so a split model whose
    # halves are w/2 computes the plain binary model.
    single_q = M.QuantConfig(1, 1, 8, "bwn", "bwn")
    split_q = dataclasses.replace(single_q, split=True, split_shared_act=shared)
    single, split = M.BertModel(TINY, single_q), M.BertModel(TINY, split_q)
    p_single = _init(single)
    p_split = _halves(p_single, _init(split))
    ids, types, mask = _batch(1)
    a = _apply(single, p_single, ids, types, mask)
    b = _apply(split, p_split, ids, types, mask)
    np.testing.assert_allclose(b["logits"], a["logits"], atol=1e-5)
    for x, y in zip(a["hidden_states"], b["hidden_states"]):
        np.testing.assert_allclose(y, x, atol=1e-5)


def _count_dots(fn, *args):
    jaxpr = jax.make_jaxpr(fn)(*args)
    return str(jaxpr).count("dot_general")


def test_shared_split_is_one_matmul_per_layer():
    ids, types, mask = _batch()
    counts = {}
    for name, q in [("single", M.QuantConfig(1, 1, 8, "bwn", "bwn")),
                    ("split", M.QuantConfig(1, 1, 8, "bwn", "bwn", split=True)),
                    ("separate", M.QuantConfig(1, 1, 8, "bwn", "bwn", split=True, split_shared_act=False))]:
        model = M.BertModel(TINY, q)
        p = _init(model)
        counts[name] = _count_dots(lambda p: _apply(model, p, ids, types, mask)["logits"], p)
    assert counts["split"] == counts["single"]
    assert counts["separate"] > counts["single"]


def test_split_gradient_reaches_both_halves_equally():
    q = M.QuantConfig(1, 1, 8, "bwn", "bwn", split=True)
    model = M.BertModel(TINY, q)
    p = _init(model)
    ids, types, mask = _batch()
    g = jax.grad(lambda p: jnp.sum(_apply(model, p, ids, types, mask)["logits"] ** 2))(p)
    k = g["encoder"]["layer_0"]["ffn"]["output"]["kernel"]
    assert k.shape[0] == 2 and float(jnp.abs(k[0]).sum()) > 0
    np.testing.assert_array_equal(k[0], k[1])


def test_unsplit_paths_stay_single():
    q = M.QuantConfig(1, 1, 8, "bwn", "bwn", split=True,
                      unsplit=("encoder/layer_1/ffn/output", "embeddings/word_embeddings"))
    shapes = _kernel_shapes(_init(M.BertModel(TINY, q)))
    assert shapes["encoder/layer_1/ffn/output/kernel"] == (64, 32)
    assert shapes["encoder/layer_0/ffn/output/kernel"] == (2, 64, 32)
    assert shapes["embeddings/word_embeddings"] == (120, 32)
    assert len(M.splittable_paths(TINY)) == 1 + 6 * TINY.num_layers + 1


def test_quantized_forward_uses_quantized_weights():
    q = M.QuantConfig(2, 2, 32)
    model, fp = M.BertModel(TINY, q), M.BertModel(TINY)
    p = _init(model)
    ids, types, mask = _batch()
    # Ternarize by hand and run the full-precision model: must equal the W2 model.
    def tern(path, leaf):
        key = "/".join(str(getattr(k, "key", k)) for k in path)
        if key.endswith("kernel") and not key.startswith("classifier"):
            return quant.ternary_values(leaf)
        if key == "embeddings/word_embeddings":
            return quant.ternary_values(leaf, (-1,))
        return leaf
    p_hand = jax.tree_util.tree_map_with_path(tern, p)
    np.testing.assert_allclose(_apply(model, p, ids, types, mask)["logits"],
                               _apply(fp, p_hand, ids, types, mask)["logits"], atol=1e-6)


def test_lsq_calibration_sets_steps_from_data():
    q = M.QuantConfig(2, 2, 4, act_method="lsq")
    relu = dataclasses.replace(TINY, hidden_act="relu")
    model = M.BertModel(relu, q)
    p = _init(model)
    ids, types, mask = _batch()
    p2 = M.calibrate_act_quantizers(model, p, ids, types, mask)
    steps = [leaf for key, leaf in _flat(p2) if key.endswith("_step")]
    assert steps and all(float(s) != 1.0 and float(s) > 0 for s in steps)
    # The very first quantizer (query input = embedding output) sees the embedding output.
    emb = _apply(model, p, ids, types, mask)["hidden_states"][0]
    np.testing.assert_allclose(p2["encoder"]["layer_0"]["attention"]["query"]["input_step"],
                               quant.lsq_init_step(emb, 4, True), rtol=1e-6)


def test_percentile_clips_start_from_the_data():
    q = M.QuantConfig(2, 2, 8, clip_percentile=99.0)
    model = M.BertModel(TINY, q)
    p = _init(model)
    ids, types, mask = _batch()
    p2 = M.calibrate_act_quantizers(model, p, ids, types, mask)
    clips = {key: leaf for key, leaf in _flat(p2) if key.endswith("_clip")}
    assert clips and all(not np.array_equal(c, [-2.5, 2.5]) for c in clips.values())
    # The first quantizer (query input, symmetric) sees the embedding output, real tokens only.
    emb = np.asarray(_apply(model, p, ids, types, mask)["hidden_states"][0])
    real = np.broadcast_to(np.asarray(mask, bool)[..., None], emb.shape)
    upper = np.percentile(np.abs(emb[real]), 99.0)
    np.testing.assert_allclose(p2["encoder"]["layer_0"]["attention"]["query"]["input_clip"],
                               [-upper, upper], rtol=1e-5)
    # Asymmetric quantizers (the attention probabilities) get the two tails' percentiles.
    lower, upper = np.asarray(p2["encoder"]["layer_0"]["attention"]["probs_clip"])
    assert 0 <= lower < upper <= 1
    # The released code's fixed clips calibrate nothing.
    fixed = M.BertModel(TINY, M.QuantConfig(2, 2, 8))
    p_fixed = _init(fixed)
    assert M.calibrate_act_quantizers(fixed, p_fixed, ids, types, mask) is p_fixed
    with pytest.raises(ValueError, match="clip_percentile"):
        M.QuantConfig(2, 2, 8, clip_percentile=30.0)


def test_padding_independent_ranges_make_outputs_padding_invariant():
    q = M.QuantConfig(2, 2, 8, act_scope="example", act_ignore_padding=True)
    model = M.BertModel(TINY, q)
    p = _init(model)
    ids, types, mask = _batch(seq=16, pad_from=9)
    short = _apply(model, p, ids[:, :9], types[:, :9], mask[:, :9])
    long = _apply(model, p, ids, types, mask)
    np.testing.assert_allclose(short["logits"], long["logits"], atol=1e-5)
    # The released-code default (whole tensor, padding included) depends on the padding.
    q0 = M.QuantConfig(2, 2, 8, clip_init=100.0)  # a wide clip, so the dynamic range decides
    m0 = M.BertModel(TINY, q0)
    # A padding token whose embedding has one large component: its LayerNorm output has a larger
    # max-abs than any real token, so it sets the whole-tensor range.
    p = jax.tree_util.tree_map(lambda x: x, p)
    p["embeddings"]["word_embeddings"] = p["embeddings"]["word_embeddings"].at[0].set(0.0).at[0, 0].set(100.0)
    ids = jnp.where(mask > 0, ids, 0)
    a = _apply(m0, p, ids[:, :9], types[:, :9], mask[:, :9])["logits"]
    b = _apply(m0, p, ids, types, mask)["logits"]
    assert not np.allclose(a, b, atol=1e-5)


def test_bf16_compute_with_float32_params():
    model = M.BertModel(TINY, M.QuantConfig(2, 2, 8), dtype=jnp.bfloat16)
    p = _init(model)
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree_util.tree_leaves(p))
    ids, types, mask = _batch()
    out = _apply(model, p, ids, types, mask)
    assert out["hidden_states"][-1].dtype == jnp.bfloat16
    ref = M.BertModel(TINY, M.QuantConfig(2, 2, 8)).apply({"params": p}, ids, types, mask)
    np.testing.assert_allclose(np.asarray(out["logits"], np.float32), ref["logits"], atol=0.1)


@pytest.mark.parametrize("quant_cfg", [
    M.QuantConfig(2, 2, 8),
    M.QuantConfig(2, 2, 8, act_scope="example", act_ignore_padding=True),
    M.QuantConfig(1, 1, 8, "bwn", "bwn", split=True),
    M.QuantConfig(2, 2, 4, "twn", "twn", "lsq"),
], ids=["w2a8", "w2a8-masked", "w1a8-split", "w2a4-lsq"])
def test_bfloat16_backward_runs_compiled_and_follows_float32(quant_cfg):
    """The bfloat16 backward of the quantized products, compiled, where XLA:CPU picks each product's
    kernel: every product runs (a bfloat16 product XLA keeps in bfloat16 but cannot lay out for its
    kernels fails with "Unsupported element type for DotThunk") and the gradients are the float32
    backward's to bfloat16 rounding."""
    ids, types, mask = _batch()
    params = _init(M.BertModel(TINY, quant_cfg))

    def grads(grad_dtype):
        model = M.BertModel(TINY, quant_cfg, grad_dtype=grad_dtype)
        loss = lambda p: jnp.sum(model.apply({"params": p}, ids, types, mask)["hidden_states"][-1] ** 2)
        return jax.jit(jax.grad(loss))(params)

    want, got = grads(jnp.float32), grads(jnp.bfloat16)
    for path, g in jax.tree_util.tree_flatten_with_path(got)[0]:
        h = dict(jax.tree_util.tree_flatten_with_path(want)[0])[path]
        assert g.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(g))), path
        np.testing.assert_allclose(g, h, rtol=0, atol=0.05 * float(jnp.abs(h).max()) + 1e-6, err_msg=str(path))


def test_span_head_and_dropout():
    model = M.BertModel(TINY, head="span")
    p = _init(model)
    ids, types, mask = _batch()
    out = _apply(model, p, ids, types, mask)
    assert out["logits"].shape == (3, 16, 2)
    a = _apply(model, p, ids, types, mask, deterministic=False, rngs={"dropout": jax.random.key(1)})
    assert not np.allclose(a["logits"], out["logits"])


@pytest.mark.parametrize("kwargs,match", [
    (dict(weight_bits=2, weight_method="bwn"), "bwn"),
    (dict(act_bits=1), "act_bits"),
    (dict(act_method="pact", act_bits=8), "act_method"),
    (dict(weight_granularity="channel"), "granularity"),
    (dict(act_scope="head"), "act_scope"),
])
def test_bad_quant_config_is_clear(kwargs, match):
    with pytest.raises(ValueError, match=match):
        M.QuantConfig(**kwargs)


def test_spec_roundtrip_and_unknown_keys():
    spec = M.ModelSpec(TINY.with_width(0.5), M.QuantConfig(1, 1, 4, "bwn", "bwn", act_method="lsq",
                                                            split=True, unsplit=("pooler/dense",)), num_labels=3)
    assert M.ModelSpec.from_dict(spec.to_dict()) == spec
    with pytest.raises(ValueError, match="unknown BertConfig keys"):
        M.BertConfig.from_dict({"hidden": 3})
