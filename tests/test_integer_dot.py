"""Integer-domain products (``integer_dot``): exact integer sums, scalings that round once, the
float path where exactness cannot hold, straight-through gradients, and the real model's forward."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from binarybert_jax import integer_dot, quant
from binarybert_jax.integer_dot import quantized_dot_general

DENSE = (((2,), (0,)), ((), ()))          # (B, T, K) · (K, N)
SCORES = (((3,), (3,)), ((0, 1), (0, 1)))  # "bhqd,bhkd->bhqk"
CONTEXT = (((3,), (2,)), ((0, 1), (0, 1)))  # "bhqk,bhkd->bhqd"


def _f64(q: quant.QuantizedCodes) -> np.ndarray:
    out = np.asarray(q.codes, np.float64) * np.asarray(q.scale, np.float64)
    return out if q.zero is None else out + np.asarray(q.zero, np.float64)


def _dot64(a, b, dims):
    with jax.enable_x64(True):
        return np.asarray(lax.dot_general(jnp.asarray(a, jnp.float64), jnp.asarray(b, jnp.float64), dims))


def _act(x, bits, symmetric, method="uniform", axes=None):
    param = jnp.array([-2.5, 2.5]) if method == "uniform" else jnp.asarray(0.05)
    return (quant.quantize_act(x, param, method, bits, symmetric, axes),
            quant.act_quant_codes(x, param, method, bits, symmetric, axes))


@pytest.mark.parametrize("bits,symmetric,method", [(8, True, "uniform"), (8, False, "uniform"),
                                                   (4, True, "lsq"), (4, False, "lsq")])
@pytest.mark.parametrize("weight", ["twn", "bwn-split", "uniform8"])
def test_dense_product_is_exact_integer_and_closer_than_float32(bits, symmetric, method, weight):
    x = 1.3 * jax.random.normal(jax.random.key(bits + symmetric), (3, 24, 384))
    w = 0.05 * jax.random.normal(jax.random.key(7), (2, 384, 96) if weight == "bwn-split" else (384, 96))
    xv, xc = _act(x, bits, symmetric, method, axes=(2,))  # one range per token
    if weight == "bwn-split":
        wv = quant.quantize_weight(w, "bwn", 1, (-2,))
        wc, groups, w_sum = quant.weight_codes_for_product(w, "bwn", 1, (-2,)), True, wv[0] + wv[1]
    else:
        method_w, wbits = ("twn", 2) if weight == "twn" else ("uniform", 8)
        w_sum = quant.quantize_weight(w, method_w, wbits)
        wc, groups = quant.weight_codes_for_product(w, method_w, wbits), False
    assert integer_dot.is_exact(integer_dot.centred(xc), wc, DENSE, groups)
    # The product of the codes: an exact integer, whatever the order of summation.
    a, b = integer_dot.centred(xc), wc
    codes_b = np.moveaxis(np.asarray(b.codes), 0, -2).reshape(384, -1) if groups else np.asarray(b.codes)
    product = lax.dot_general(a.codes.astype(jnp.bfloat16), jnp.asarray(codes_b, jnp.bfloat16), DENSE,
                              preferred_element_type=jnp.float32)
    np.testing.assert_array_equal(np.asarray(product, np.float64),
                                  _dot64(np.asarray(a.codes), codes_b, DENSE))
    # The whole product against float64 of the same quantized values: closer than float32's.
    reference = _dot64(_f64(xc), _f64(wc).sum(0) if groups else _f64(wc), DENSE)
    got = np.asarray(quantized_dot_general(xv, xc, w_sum, wc, DENSE, groups=groups), np.float64)
    old = np.asarray(lax.dot_general(xv, w_sum, DENSE), np.float64)
    err, old_err = np.abs(got - reference), np.abs(old - reference)
    assert np.sqrt(np.mean(err ** 2)) < np.sqrt(np.mean(old_err ** 2))
    # A few roundings of the scalings: within a handful of float32 ulps of the output's scale.
    assert err.max() <= 8 * np.finfo(np.float32).eps * np.abs(reference).max()


@pytest.mark.parametrize("symmetric", [True, False])
def test_attention_products_are_exact(symmetric):
    q, k = (jax.random.normal(jax.random.key(i), (2, 3, 16, 32)) for i in (1, 2))
    qv, qc = _act(q, 8, symmetric, axes=(1, 3))  # one range per (example, token)
    kv, kc = _act(k, 8, symmetric, axes=(1, 3))
    scores = np.asarray(quantized_dot_general(qv, qc, kv, kc, SCORES), np.float64)
    reference = _dot64(_f64(qc), _f64(kc), SCORES)
    np.testing.assert_allclose(scores, reference, rtol=0, atol=8 * np.finfo(np.float32).eps * np.abs(reference).max())
    probs = jax.nn.softmax(jnp.asarray(scores, jnp.float32), axis=-1)
    pv, pc = _act(probs, 8, False, axes=(1, 3))  # asymmetric, one range per query row
    v = jax.random.normal(jax.random.key(3), (2, 3, 16, 32))
    vv, vc = _act(v, 8, True)  # one range for the tensor
    context = np.asarray(quantized_dot_general(pv, pc, vv, vc, CONTEXT), np.float64)
    reference = _dot64(_f64(pc), _f64(vc), CONTEXT)
    np.testing.assert_allclose(context, reference, rtol=0,
                               atol=8 * np.finfo(np.float32).eps * np.abs(reference).max())


def test_float_path_where_exactness_cannot_hold():
    # V with one range per token: its scale varies along the keys, the contracted axis.
    probs = jax.nn.softmax(jax.random.normal(jax.random.key(0), (2, 3, 16, 16)), axis=-1)
    pv, pc = _act(probs, 8, False)
    vv, vc = _act(jax.random.normal(jax.random.key(1), (2, 3, 16, 32)), 8, True, axes=(1, 3))
    assert not integer_dot.is_exact(integer_dot.centred(pc), vc, CONTEXT)
    np.testing.assert_array_equal(quantized_dot_general(pv, pc, vv, vc, CONTEXT),
                                  lax.dot_general(pv, vv, CONTEXT))
    # 8-bit weights against 8-bit asymmetric activations over 1536 inputs: 128·127·1536 ≥ 2^24.
    xv, xc = _act(jax.random.normal(jax.random.key(2), (2, 4, 1536)), 8, False)
    w = 0.05 * jax.random.normal(jax.random.key(3), (1536, 8))
    wv, wc = quant.quantize_weight(w, "uniform", 8), quant.weight_codes_for_product(w, "uniform", 8)
    assert not integer_dot.is_exact(integer_dot.centred(xc), wc, DENSE)
    np.testing.assert_array_equal(quantized_dot_general(xv, xc, wv, wc, DENSE), lax.dot_general(xv, wv, DENSE))
    # Nothing quantized on one side: the float product.
    np.testing.assert_array_equal(quantized_dot_general(xv, None, wv, wc, DENSE), lax.dot_general(xv, wv, DENSE))


@pytest.mark.parametrize("grad_dtype,tol", [(jnp.float32, 1e-5), (jnp.bfloat16, 2e-2)])
def test_gradients_are_the_straight_through_ones(grad_dtype, tol):
    x = jax.random.normal(jax.random.key(0), (2, 8, 64))
    w = 0.05 * jax.random.normal(jax.random.key(1), (64, 16))
    clip = jnp.array([-2.5, 2.5])

    def loss(x, w, integer):
        xv = quant.quantize_act(x, clip, "uniform", 8, False)
        wv = quant.quantize_weight(w, "twn", 2)
        if not integer:
            return jnp.sum(jnp.dot(xv, wv) ** 2)
        y = quantized_dot_general(xv, quant.act_quant_codes(x, clip, "uniform", 8, False), wv,
                                  quant.weight_codes_for_product(w, "twn", 2), DENSE, grad_dtype=grad_dtype)
        return jnp.sum(y ** 2)

    got = jax.jit(jax.grad(loss, (0, 1)), static_argnums=2)(x, w, True)
    want = jax.grad(loss, (0, 1))(x, w, False)
    for g, h in zip(got, want):
        assert g.dtype == h.dtype == jnp.float32
        np.testing.assert_allclose(g, h, rtol=0, atol=tol * float(jnp.abs(h).max()))
    assert float(jnp.abs(got[0]).sum()) > 0 and float(jnp.abs(got[1]).sum()) > 0


def test_dense_products_of_the_real_model_are_closer_to_float64(tokenizer, glue_dir):
    """Every quantized dense product of the real MiniLM forward (W2A8, split W1A8, W2A4; its first
    two layers, the benchmark runs all six) against the float64 product of its own quantized
    operands: the integer path's RMS error below the float32 path's (figures: BENCHMARKS.md,
    'Integer-domain products')."""
    from benchmarks import integer_products as ip

    batch = ip.mrpc_batch(tokenizer, 2, glue_dir, max_length=48)
    for name, q in ip.SETTINGS.items():
        spec, params = ip.pretrained_model(q, "split" in name, batch, layers=2)
        integer = ip.dense_product_errors(spec, params, batch, integer=True)
        float32 = ip.dense_product_errors(spec, params, batch, integer=False)
        assert integer["layers"] == float32["layers"] == 2 * 6 + 1, name
        assert integer["rms"] < 0.5 * float32["rms"], (name, integer, float32)
        assert integer["max"] < float32["max"], (name, integer, float32)


def _split_weight(scales, seed=5, k=384, n=96):
    """A split weight's two halves as codes ±1 (independent signs) with per-half scales
    ``scales`` (shaped (2, 1, 1) or (2, 1, n)): ``(codes, values of the sum)``."""
    codes = jnp.where(jax.random.bernoulli(jax.random.key(seed), 0.5, (2, k, n)), 1.0, -1.0)
    wc = quant.QuantizedCodes(codes, jnp.asarray(scales, jnp.float32), None, 1)
    halves = wc.scale * wc.codes
    return wc, halves[0] + halves[1]


@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("granularity", ["layer", "row"])
def test_summed_halves_are_the_same_bits_where_the_scales_are_equal(symmetric, granularity):
    """After TWS the halves' scales are equal: one product of the summed codes (−2, 0, 2) is an
    exact integer, scaled as the two halves' products are, so the result is the same bits."""
    xv, xc = _act(1.3 * jax.random.normal(jax.random.key(1), (3, 24, 384)), 8, symmetric, axes=(2,))
    shape = (1, 1) if granularity == "layer" else (1, 96)
    s = 0.03 + 0.01 * jax.random.uniform(jax.random.key(2), shape)
    wc, w_sum = _split_weight(jnp.stack([s, s]))
    exact = quantized_dot_general(xv, xc, w_sum, wc, DENSE, groups=True)
    summed = quantized_dot_general(xv, xc, w_sum, wc, DENSE, groups=True, summed=True)
    np.testing.assert_array_equal(summed, exact)


@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("granularity", ["layer", "row"])
def test_summed_halves_within_bfloat16_rounding_where_the_scales_differ(symmetric, granularity):
    """Halves whose scales have drifted apart: the summed operand's entries ±2r (r the scales'
    relative difference) are rounded to bfloat16 and the sums are no longer integers, so the
    one-product result differs from the two products' by at most

        |s_a|·m·(2⁻⁹·Σ_k|k_a|·|2r|·[halves differ] + K·2⁻²⁴·Σ_k|k_a|·|entry|) + 8 ulp of the output,

    m the halves' mean scale, k_a the (centred) activation codes. Measured against float64, the
    one product stays within the same order as the two."""
    xv, xc = _act(1.3 * jax.random.normal(jax.random.key(3), (3, 24, 384)), 8, symmetric, axes=(2,))
    shape = (1, 1) if granularity == "layer" else (1, 96)
    s1 = 0.03 + 0.01 * jax.random.uniform(jax.random.key(4), shape)
    s2 = s1 * (1 + 0.2 * jax.random.uniform(jax.random.key(5), shape, minval=-1))
    wc, w_sum = _split_weight(jnp.stack([s1, s2]))
    exact = np.asarray(quantized_dot_general(xv, xc, w_sum, wc, DENSE, groups=True), np.float64)
    summed = np.asarray(quantized_dot_general(xv, xc, w_sum, wc, DENSE, groups=True, summed=True),
                        np.float64)
    a = integer_dot.centred(xc)
    codes, scales = np.asarray(wc.codes, np.float64), np.asarray(wc.scale, np.float64)
    mean, ratio = (scales[0] + scales[1]) / 2, (scales[0] - scales[1]) / (scales[0] + scales[1])
    rounded = np.abs(2 * ratio) * (codes[0] != codes[1])        # the entries bfloat16 rounds
    entries = np.abs((codes[0] + codes[1]) + ratio * (codes[0] - codes[1]))
    abs_a = np.abs(np.asarray(a.codes, np.float64))
    s_a = np.abs(np.asarray(a.scale, np.float64))
    k = abs_a.shape[-1]
    bound = s_a * mean * (2.0 ** -9 * abs_a @ rounded + k * 2.0 ** -24 * abs_a @ entries)
    bound += 8 * np.finfo(np.float32).eps * np.abs(exact).max()
    err = np.abs(summed - exact)
    assert (err <= bound).all(), float((err - bound).max())
    assert err.max() > 0  # the one-product path ran (two products would agree bit for bit)
    reference = _dot64(_f64(xc), _f64(wc).sum(0), DENSE)
    assert np.abs(summed - reference).max() <= 2.0 ** -9 * 0.2 * np.abs(reference).max() * 8


def test_summed_halves_run_half_the_forward_flops_with_the_same_gradients():
    """The per-half gradients (straight-through, reaching both latent halves through their sum)
    are the two-product path's bit for bit; the forward's products are half as many FLOPs."""
    x = jax.random.normal(jax.random.key(0), (2, 16, 256))
    w = 0.05 * jax.random.normal(jax.random.key(1), (2, 256, 64))
    w = w.at[1].multiply(1.3)  # halves with different scales
    clip = jnp.array([-2.5, 2.5])
    cotangent = jax.random.normal(jax.random.key(2), (2, 16, 64))

    def forward(x, w, summed):
        xv = quant.quantize_act(x, clip, "uniform", 8, False)
        wv = quant.quantize_weight(w, "bwn", 1)
        return quantized_dot_general(xv, quant.act_quant_codes(x, clip, "uniform", 8, False),
                                     wv[0] + wv[1], quant.weight_codes_for_product(w, "bwn", 1), DENSE,
                                     groups=True, grad_dtype=jnp.bfloat16, summed=summed)

    def grads(summed):
        return jax.jit(jax.grad(lambda x, w: jnp.sum(forward(x, w, summed) * cotangent), (0, 1)))(x, w)

    for got, want in zip(grads(True), grads(False)):
        np.testing.assert_array_equal(got, want)
    g_w = grads(True)[1]
    assert float(jnp.abs(g_w[0]).sum()) > 0 and float(jnp.abs(g_w[1]).sum()) > 0

    def forward_flops(summed):
        compiled = jax.jit(forward, static_argnums=2).lower(x, w, summed).compile()
        cost = compiled.cost_analysis()
        return (cost[0] if isinstance(cost, list) else cost)["flops"]

    product = 2 * 2 * 16 * 256 * 64  # one (32 × 256)·(256 × 64) product
    assert forward_flops(False) >= 2 * product > forward_flops(True) >= product
