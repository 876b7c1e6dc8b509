"""Quantizers against the authors' PyTorch code (fixtures) and property tests on random inputs."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from binarybert_jax import quant


@pytest.fixture(scope="module")
def ref(fixtures_dir):
    return dict(np.load(fixtures_dir / "reference_quant_seed0.npz"))


@pytest.fixture(autouse=True)
def x64():
    # The fixtures are float64; compare in float64 so the tolerance tests the formula, not rounding.
    with jax.enable_x64(True):
        yield


def test_weight_quantizers_match_reference(ref):
    w, e = jnp.asarray(ref["W"]), jnp.asarray(ref["E"])
    np.testing.assert_allclose(quant.ternarize(w), ref["twn_layerwise"], atol=1e-12)
    np.testing.assert_allclose(quant.binarize(w), ref["bwn_layerwise"], atol=1e-12)
    np.testing.assert_allclose(quant.ternarize(e, (-1,)), ref["twn_rowwise_E"], atol=1e-12)
    np.testing.assert_allclose(quant.binarize(e, (-1,)), ref["bwn_rowwise_E"], atol=1e-12)
    np.testing.assert_allclose(quant.quantize_weight(w, "lat", 2), ref["laq2_layerwise"], atol=1e-12)


@pytest.mark.parametrize("symmetric,name", [(True, "sym8"), (False, "asym8")])
def test_uniform_act_matches_reference(ref, symmetric, name):
    x, g = jnp.asarray(ref["X"]), jnp.asarray(ref["grad_out"])
    clip = jnp.array([-2.5, 2.5])
    y, vjp = jax.vjp(lambda x, c: quant.uniform_act_quantize(x, c, 8, symmetric), x, clip)
    grad_x, grad_clip = vjp(g)
    np.testing.assert_allclose(y, ref[name], atol=1e-12)
    np.testing.assert_allclose(grad_x, ref[f"{name}_grad_x"], atol=1e-12)
    # The reference sums the clip gradients in float32.
    np.testing.assert_allclose(grad_clip, ref[f"{name}_grad_clip"], atol=2e-6)


@pytest.mark.parametrize("symmetric,name", [(True, "lsq_sym4"), (False, "lsq_asym4")])
def test_lsq_matches_reference(ref, symmetric, name):
    x, g = jnp.asarray(ref["X"]), jnp.asarray(ref["grad_out"])
    step = quant.lsq_init_step(x, 4, symmetric)
    # The reference initialises the step in float32.
    np.testing.assert_allclose(step, ref[f"{name}_step_init"], rtol=1e-6)
    step = jnp.asarray(ref[f"{name}_step_init"])
    y, vjp = jax.vjp(lambda x, s: quant.lsq_act_quantize(x, s, 4, symmetric), x, step)
    grad_x, grad_step = vjp(g)
    np.testing.assert_allclose(y, ref[name], atol=1e-6)
    np.testing.assert_allclose(grad_x, ref[f"{name}_grad_x"], atol=1e-12)
    np.testing.assert_allclose(grad_step, ref[f"{name}_grad_step"], rtol=1e-5)


# ---- properties on random inputs --------------------------------------------------------------

def _random(seed, shape, heavy=False):
    rng = np.random.default_rng(seed)
    w = rng.standard_t(3, shape) if heavy else rng.normal(size=shape)
    return jnp.asarray(0.05 * w)


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("method,bits", [("twn", 2), ("bwn", 1), ("lat", 2), ("lat", 1), ("uniform", 8)])
def test_weight_ste_gradient_is_identity(seed, method, bits):
    w = _random(seed, (17, 9), heavy=seed == 2)
    g = _random(seed + 10, (17, 9))
    _, vjp = jax.vjp(lambda w: quant.quantize_weight(w, method, bits), w)
    np.testing.assert_array_equal(vjp(g)[0], g)


@pytest.mark.parametrize("seed", range(3))
def test_ternary_and_binary_structure(seed):
    w = _random(seed, (2, 31, 12), heavy=True)
    t = np.asarray(quant.ternarize(w))
    for half in range(2):  # a leading stacking axis gets scales of its own
        levels = np.unique(np.abs(t[half]))
        assert len(levels) == 2 and levels[0] == 0
        kept = np.abs(np.asarray(w[half])) > 0.7 * np.abs(np.asarray(w[half])).mean()
        np.testing.assert_allclose(levels[1], np.abs(np.asarray(w[half]))[kept].mean(), rtol=1e-12)
    b = np.asarray(quant.binarize(w, (-1,)))
    np.testing.assert_allclose(np.abs(b), np.broadcast_to(np.abs(np.asarray(w)).mean(-1, keepdims=True), b.shape))


def test_lat_with_diagonal_weights_the_fit():
    w = _random(0, (40, 20))
    v = jnp.asarray(np.random.default_rng(1).uniform(0.01, 4.0, w.shape)) ** 2
    d = np.sqrt(np.asarray(v)) + 1e-8
    q_d = np.asarray(quant.quantize_weight(w, "lat", 2, diag=v))
    q_i = np.asarray(quant.quantize_weight(w, "lat", 2))
    assert not np.allclose(q_d, q_i)
    # With D the fit is better in the D-weighted norm than the identity fit.
    err = lambda q: np.sum(d * (np.asarray(w) - q) ** 2)
    assert err(q_d) <= err(q_i) + 1e-12


@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("seed", range(2))
def test_uniform_act_gradients(symmetric, seed):
    x = 2.0 * _random(seed, (3, 5, 7)) / 0.05
    g = _random(seed + 1, x.shape) / 0.05
    clip = jnp.array([-1.5, 1.8])
    _, vjp = jax.vjp(lambda x, c: quant.uniform_act_quantize(x, c, 8, symmetric), x, clip)
    grad_x, grad_clip = vjp(g)
    lo, hi = np.asarray(x) <= -1.5, np.asarray(x) >= 1.8
    assert lo.any() and hi.any()
    np.testing.assert_array_equal(grad_x, np.where(lo | hi, 0, g))
    np.testing.assert_allclose(grad_clip, [np.asarray(g)[lo].sum(), np.asarray(g)[hi].sum()], rtol=1e-6)


def test_uniform_act_levels_and_error_bound():
    x = 3.0 * _random(0, (4, 64)) / 0.05
    y = np.asarray(quant.uniform_act_quantize(x, jnp.array([-2.5, 2.5]), 4, True))
    xc = np.clip(np.asarray(x), -2.5, 2.5)
    step = np.abs(xc).max() / 7
    assert len(np.unique(y)) <= 15
    assert np.abs(y - xc).max() <= step / 2 + 1e-12


def test_range_scope_and_padding_mask():
    x = _random(0, (2, 6, 8)) / 0.05
    mask = jnp.array([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]], bool)[:, :, None]
    # Padding holds huge values: with the mask they must not change the quantization of real tokens.
    x_pad = jnp.where(mask, x, 50.0)
    clip = jnp.array([-100.0, 100.0])
    for scope_axes in (None, (1, 2)):
        a = quant.uniform_act_quantize(x, clip, 8, True, scope_axes, mask)
        b = quant.uniform_act_quantize(x_pad, clip, 8, True, scope_axes, mask)
        np.testing.assert_array_equal(np.asarray(a)[np.asarray(mask[..., 0])],
                                      np.asarray(b)[np.asarray(mask[..., 0])])
    # Per-example ranges: example 1 is unaffected by example 0's scale.
    big = x.at[0].multiply(100.0)
    per_ex = quant.uniform_act_quantize(big, clip, 8, True, (1, 2))
    np.testing.assert_array_equal(per_ex[1], quant.uniform_act_quantize(x, clip, 8, True, (1, 2))[1])
    whole = quant.uniform_act_quantize(big, clip, 8, True)
    assert not np.array_equal(whole[1], per_ex[1])
    assert quant.scope_axes("token", 4, (2,)) == (1, 3)
    with pytest.raises(ValueError, match="scope"):
        quant.scope_axes("channel", 3, (1,))


@pytest.mark.parametrize("symmetric", [True, False])
def test_lsq_gradients_properties(symmetric):
    x = _random(3, (4, 9, 5)) / 0.05
    g = _random(4, x.shape) / 0.05
    step = jnp.asarray(0.3)
    _, vjp = jax.vjp(lambda x, s: quant.lsq_act_quantize(x, s, 4, symmetric), x, step)
    grad_x, grad_step = vjp(g)
    qn, qp = quant.lsq_levels(4, symmetric)
    shifted = np.asarray(x) - (0 if symmetric else np.asarray(x).min())
    q = shifted / 0.3
    inside = (q >= qn) & (q <= qp)
    np.testing.assert_array_equal(grad_x, np.where(inside, g, 0))
    per = np.where(q < qn, qn, np.where(q > qp, qp, np.round(q) - q))
    np.testing.assert_allclose(grad_step, (per * np.asarray(g)).sum() / np.sqrt(x.size * qp), rtol=1e-9)


def test_quantizers_compose_with_jit_vmap_grad():
    w = _random(0, (3, 8, 4))
    per_matrix = jax.vmap(lambda m: quant.ternarize(m))(w)
    np.testing.assert_allclose(per_matrix, quant.ternarize(w), atol=1e-15)
    f = jax.jit(jax.grad(lambda w, c: jnp.sum(quant.uniform_act_quantize(w, c, 8) ** 2), argnums=(0, 1)))
    gw, gc = f(w / 0.05, jnp.array([-1.0, 1.0]))
    assert gw.shape == w.shape and gc.shape == (2,) and float(jnp.abs(gc).sum()) > 0


def test_cross_device_range_reduction_matches_single_device():
    x = _random(0, (4, 6, 8)) / 0.05
    clip = jnp.array([-2.5, 2.5])
    whole = quant.uniform_act_quantize(x, clip, 8, False)
    shards = jax.vmap(lambda xs: quant.uniform_act_quantize(xs, clip, 8, False, axis_name="data"),
                      axis_name="data")(x.reshape(2, 2, 6, 8))
    np.testing.assert_allclose(shards.reshape(x.shape), whole, atol=1e-12)
    local = jax.vmap(lambda xs: quant.uniform_act_quantize(xs, clip, 8, False))(x.reshape(2, 2, 6, 8))
    assert not np.allclose(local.reshape(x.shape), whole)


def test_bad_method_and_bits_are_clear_errors():
    with pytest.raises(ValueError, match="allowed"):
        quant.quantize_weight(jnp.ones((2, 2)), "xnor", 1)
    with pytest.raises(ValueError, match="twn.*2"):
        quant.quantize_weight(jnp.ones((2, 2)), "twn", 1)
    with pytest.raises(ValueError, match="activation"):
        quant.quantize_act(jnp.ones(3), jnp.ones(2), "pact", 8, True)


# ---- integer codes and scales ----------------------------------------------------------------

CODE_METHODS = [("twn", 2), ("bwn", 1), ("lat", 1), ("lat", 2), ("lat", 3), ("lat", 8),
                ("uniform", 2), ("uniform", 4), ("uniform", 8), ("uniform", 16)]
# (shape, axes): layer-wise, per output unit of an (in, out) kernel, per embedding row, and the
# stacked planes of a split weight (a leading axis of 2, which always gets scales of its own).
CODE_LAYOUTS = [((37, 24), quant.LAYERWISE), ((37, 24), (-2,)), ((50, 16), (-1,)),
                ((2, 37, 24), quant.LAYERWISE), ((2, 37, 24), (-2,))]


@pytest.mark.parametrize("shape,axes", CODE_LAYOUTS)
@pytest.mark.parametrize("method,bits", CODE_METHODS)
def test_codes_and_scales_give_the_values(method, bits, shape, axes):
    w = np.array(_random(bits, shape, heavy=True), np.float32)
    w.reshape(-1)[0] = 0.0  # an exact zero: binary codes it 0 (sign(0) = 0)
    top = quant.max_weight_code(bits)
    allowed = [-1, 0, 1] if bits <= 2 else list(range(-top, top + 1))
    scale_shape = tuple(1 if a in [x % len(shape) for x in axes] else d for a, d in enumerate(shape))
    jit = lambda f: jax.jit(f, static_argnums=(1, 2, 3))
    # Eagerly and under jit (where XLA may sum a scale's mean in another order) alike.
    for codes_fn, values_fn in ((quant.weight_quant_codes, quant.weight_quant_values),
                                (jit(quant.weight_quant_codes), jit(quant.weight_quant_values))):
        codes, scales = codes_fn(jnp.asarray(w), method, bits, axes)
        codes, scales = np.asarray(codes), np.asarray(scales)
        assert np.issubdtype(codes.dtype, np.signedinteger) and codes.shape == shape
        assert np.isin(codes, allowed).all()
        if bits == 1:  # ±1 everywhere but at the exact zero
            assert codes.reshape(-1)[0] == 0 and np.all(np.abs(codes.reshape(-1)[1:]) == 1)
        elif bits > 2:  # the outermost levels are used (the group's largest |w| reaches them)
            assert np.abs(codes).max() == top
        assert scales.dtype == np.float32 and scales.shape == scale_shape and np.all(scales > 0)
        # The values are exactly scales·codes.
        np.testing.assert_array_equal(values_fn(jnp.asarray(w), method, bits, axes),
                                      scales * codes.astype(np.float32))


def test_split_planes_get_their_own_codes_and_scales():
    w = _random(7, (2, 30, 20)).astype(jnp.float32)
    codes, scales = quant.weight_quant_codes(w, "bwn", 1, (-2,))
    for half in range(2):
        c, s = quant.weight_quant_codes(w[half], "bwn", 1, (-2,))
        np.testing.assert_array_equal(codes[half], c)
        np.testing.assert_array_equal(scales[half], s)


def test_lat_codes_take_the_diagonal():
    w = _random(0, (40, 20)).astype(jnp.float32)
    v = (jnp.asarray(np.random.default_rng(1).uniform(0.01, 4.0, w.shape)) ** 2).astype(jnp.float32)
    codes, scales = quant.weight_quant_codes(w, "lat", 3, diag=v)
    np.testing.assert_array_equal(quant.weight_quant_values(w, "lat", 3, diag=v),
                                  np.asarray(scales) * np.asarray(codes, np.float32))
    plain_codes, plain_scales = quant.weight_quant_codes(w, "lat", 3)
    assert not (np.array_equal(codes, plain_codes) and np.array_equal(scales, plain_scales))


def test_full_precision_has_no_codes():
    with pytest.raises(ValueError, match="full precision"):
        quant.weight_quant_codes(jnp.ones((2, 2)), "twn", 32)
