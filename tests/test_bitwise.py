"""Bitwise inference: bit products against NumPy, and logits equal to the simulated float forward."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from binarybert_jax import bitwise, evaluate, export, hf_import, inference
from binarybert_jax.model import BertConfig, ModelSpec, QuantConfig

BIBERT = QuantConfig(1, 1, 1, "bibert", "bibert", "sign", weight_granularity="row",
                     embed_granularity="row", attention="bool")


@pytest.mark.parametrize("k", [64, 45])  # a multiple of 32, and one padded with zero bits
def test_pack_and_binary_matmul_equal_numpy(k):
    rng = np.random.default_rng(k)
    x = rng.standard_normal((7, k)).astype(np.float32)
    w = rng.choice([-1.0, 1.0], (k, 5)).astype(np.float32)
    xw = bitwise.pack_signs(jnp.asarray(x >= 0))
    np.testing.assert_array_equal(bitwise.unpack_signs(xw, k), x >= 0)
    ww = bitwise.pack_weight_codes((w > 0).astype(np.uint8))
    # The weight packing (NumPy, at load) and the activation packing (jitted) agree bit for bit.
    np.testing.assert_array_equal(ww, np.asarray(bitwise.pack_signs(jnp.asarray(w.T > 0))).T)
    got = np.asarray(jax.jit(bitwise.binary_matmul, static_argnums=2)(xw, jnp.asarray(ww), k))
    np.testing.assert_array_equal(got, np.where(x >= 0, 1, -1) @ w.astype(np.int64))


def test_gelu_sign_from_bounds_equals_gelu_on_every_negative_float32():
    # The bitwise FFN takes GELU's sign from two bounds instead of computing erf; exactness needs
    # the two to agree on every float32. Both of the bounds' regions (x·Φ(x) flushing to −0 just
    # below zero, erf rounding to −1 in the far tail) are among the floats whose sign bit is set,
    # so those 2^31 (−0, negative denormals, −inf and the negative NaNs among them) are checked
    # one by one; of the positive half, where GELU is x·Φ(x) ≥ 0, every 31st float and the 2^26
    # smallest (+0, the denormals) and largest (up to +inf and the NaNs): about half the cost.
    bounds = bitwise.gelu_sign_bounds("cpu")
    assert bounds is not None and bounds[0] < 0 and bounds[1] < -3
    chunk = 1 << 22  # 16 MiB of float32 a call: cache-sized chunks ran twice as fast as 256 MiB ones

    def count_mismatches(start, stride):
        bits = start + stride * jnp.arange(chunk, dtype=jnp.uint32)
        x = jax.lax.bitcast_convert_type(bits, jnp.float32)
        expected = jax.nn.gelu(x, approximate=False) >= 0
        return jnp.sum(bitwise.hidden_act_nonnegative(x, "gelu", bounds) != expected)

    # Compiled with LLVM's optimisation on, as the model is outside the tests (conftest turns it
    # off for the suite's compile-bound tests): this one is 2^31 erf evaluations, 9x faster so, and
    # it checks the code the bitwise forward runs against bounds read at the suite's level.
    mismatches = jax.jit(count_mismatches).lower(np.uint32(0), np.uint32(1)).compile(
        compiler_options={"xla_backend_optimization_level": 3})
    edge = 1 << 26  # the positive floats checked one by one at each end
    negative = [(start, 1) for start in range(1 << 31, 1 << 32, chunk)]
    positive = ([(start, 31) for start in range(0, 31 * edge, 31 * chunk)]
                + [(start, 1) for start in (*range(0, edge, chunk), *range((1 << 31) - edge, 1 << 31, chunk))])
    assert 31 * edge < 1 << 31  # the strided pass stays inside the positive half
    total = sum(int(mismatches(np.uint32(start), np.uint32(stride)))
                for start, stride in negative + positive)
    assert total == 0
    # Without bounds (another backend's GELU of another form) the sign is GELU's own.
    x = jnp.asarray([-20.0, -13.0, -1.0, -1e-39, -0.0, 0.0, 2.0, np.inf, -np.inf, np.nan], jnp.float32)
    np.testing.assert_array_equal(bitwise.hidden_act_nonnegative(x, "gelu"),
                                  jax.nn.gelu(x, approximate=False) >= 0)
    np.testing.assert_array_equal(bitwise.hidden_act_nonnegative(x, "gelu", bounds),
                                  jax.nn.gelu(x, approximate=False) >= 0)


def _batch(vocab, b, t, seed=0):
    rng = np.random.default_rng(seed)
    ids = rng.integers(1, vocab, (b, t)).astype(np.int32)
    mask = np.ones_like(ids)
    mask[1, t // 2:] = 0
    mask[-1, 3:] = 0
    types = np.zeros_like(ids)
    types[:, t // 3:] = 1
    return {"input_ids": ids, "token_type_ids": types, "attention_mask": mask}


def _exported(tmp_path, spec, params):
    path = tmp_path / "model.safetensors"
    export.export_packed(params, spec, path)
    return path


def test_tiny_model_predicts_bitwise_exactly_and_other_files_stay_float(tmp_path):
    # A hidden size that is not a multiple of 32 exercises the zero-bit padding of every product.
    cfg = BertConfig(vocab_size=50, hidden_size=48, num_layers=2, num_heads=2, head_dim=24,
                     intermediate_size=80, max_position=40)
    spec = ModelSpec(cfg, BIBERT)
    params = spec.build().init(jax.random.key(1), jnp.ones((1, 8), jnp.int32))["params"]
    predictor = inference.load_predictor(_exported(tmp_path, spec, params))
    assert predictor.kind == inference.BITWISE
    words = [leaf for path, leaf in jax.tree_util.tree_leaves_with_path(predictor.params)
             if getattr(path[-1], "key", None) == "words"]
    assert words and all(w.dtype == jnp.uint32 for w in words)  # resident as words, no float copy
    batch = _batch(cfg.vocab_size, 3, 40)
    expected = evaluate.forward_fn(spec)(params, batch)["logits"]
    np.testing.assert_array_equal(predictor.logits(batch), expected)
    # A padded row's logits do not depend on what sits in its padding.
    noisy = dict(batch, input_ids=np.where(batch["attention_mask"] > 0, batch["input_ids"], 7))
    np.testing.assert_array_equal(predictor.logits(noisy), expected)
    # Softmax attention (BinaryBERT forced to 1-1-1) has no bitwise path: it runs as before.
    naive = ModelSpec(cfg, QuantConfig(1, 1, 1, "bwn", "bwn", "sign"))
    naive_params = naive.build().init(jax.random.key(1), jnp.ones((1, 8), jnp.int32))["params"]
    path = tmp_path / "naive.safetensors"
    export.export_packed(naive_params, naive, path)
    assert inference.load_predictor(path).kind == inference.PACKED
    with pytest.raises(bitwise.NotBitwise, match="Bi-Attention"):
        bitwise.load_bitwise(path)


def test_minilm_1_1_1_logits_equal_the_simulated_forward(tmp_path, minilm_dir):
    config, imported = hf_import.load_hf_checkpoint(minilm_dir)
    spec = ModelSpec(config, BIBERT)
    params = spec.build().init(jax.random.key(0), jnp.ones((1, 8), jnp.int32))["params"]
    params = hf_import.merge_pretrained(params, imported, "MiniLM")
    predictor = inference.load_predictor(_exported(tmp_path, spec, params))
    assert predictor.kind == inference.BITWISE
    batch = _batch(config.vocab_size, 3, 64, seed=3)
    np.testing.assert_array_equal(predictor.logits(batch),
                                  evaluate.forward_fn(spec)(params, batch)["logits"])
    resident = bitwise.resident_bytes(predictor.params)
    # 6 layers of 4·384² + 2·384·1536 bits, the pooler's 384², the 30522×384 embedding: in words.
    assert resident.packed_words == (6 * (4 * 384 * 384 + 2 * 384 * 1536) + 384 * 384 + 30522 * 384) // 8
    assert resident.total < 5 * 2 ** 20
