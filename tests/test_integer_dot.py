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
    """Every quantized dense product of the real MiniLM forward (W2A8, split W1A8, W2A4) against the
    float64 product of its own quantized operands: the integer path's RMS error below the float32
    path's (figures: BENCHMARKS.md, 'Integer-domain products')."""
    from benchmarks import integer_products as ip

    batch = ip.mrpc_batch(tokenizer, 2, glue_dir, max_length=48)
    for name, q in ip.SETTINGS.items():
        spec, params = ip.pretrained_model(q, "split" in name, batch)
        integer = ip.dense_product_errors(spec, params, batch, integer=True)
        float32 = ip.dense_product_errors(spec, params, batch, integer=False)
        assert integer["layers"] == float32["layers"] == 6 * 6 + 1, name
        assert integer["rms"] < 0.5 * float32["rms"], (name, integer, float32)
        assert integer["max"] < float32["max"], (name, integer, float32)
