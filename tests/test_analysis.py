"""binarybert_jax.analysis: eigen-solvers on known spectra, HVPs against finite differences, the
quantized-weight model, and the loss landscape grid on tiny models."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from binarybert_jax import analysis, quant, sharding
from binarybert_jax.model import ModelSpec, QuantConfig
from binarybert_jax.trees import flatten, unflatten
from conftest import tiny_config
from figures import assert_readable_png

# The loss, compiled (eager op-by-op dispatch of a whole model is slow); spec is static.
_loss = jax.jit(analysis.task_loss, static_argnums=0)


# ---------------------------------------------------------------------------------------------
# Eigen-solvers on quadratics with known spectra.
# ---------------------------------------------------------------------------------------------
def _dense_symmetric(eigenvalues, seed=0):
    q, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((len(eigenvalues),) * 2))
    return q @ np.diag(eigenvalues) @ q.T


@pytest.mark.parametrize("solver", [analysis.lanczos_top_eigenvalue, analysis.power_iteration])
def test_solvers_find_the_top_of_a_diagonal_spectrum(solver):
    eigenvalues = np.concatenate([[10.0], np.linspace(0.0, 5.0, 299)])
    calls = []

    def matvec(v):
        calls.append(1)
        return eigenvalues * v

    result = solver(matvec, len(eigenvalues), iterations=60, tol=1e-9)
    assert result.value == pytest.approx(10.0, rel=1e-4)
    assert result.converged and result.iterations == len(calls) == len(result.history)


def test_lanczos_on_a_dense_spectrum_with_negative_eigenvalues():
    rng = np.random.default_rng(1)
    eigenvalues = np.concatenate([[7.5, 6.9], rng.uniform(-6.0, 6.5, 198)])
    a = _dense_symmetric(eigenvalues)
    result = analysis.lanczos_top_eigenvalue(lambda v: a @ v, 200, iterations=80, tol=1e-10)
    assert result.value == pytest.approx(7.5, rel=1e-4)
    # Lanczos needs far fewer products than power iteration for a gap this small (7.5 vs 6.9).
    power = analysis.power_iteration(lambda v: a @ v, 200, iterations=80, tol=1e-10)
    assert result.iterations < 60 and abs(power.value - 7.5) > abs(result.value - 7.5)


def test_power_iteration_finds_largest_magnitude_lanczos_largest_value():
    a = _dense_symmetric(np.concatenate([[-12.0, 10.0], np.linspace(-3, 3, 48)]), seed=2)
    lanczos = analysis.lanczos_top_eigenvalue(lambda v: a @ v, 50, iterations=50, tol=1e-10)
    power = analysis.power_iteration(lambda v: a @ v, 50, iterations=300, tol=1e-10)
    assert lanczos.value == pytest.approx(10.0, rel=1e-4)
    assert power.value == pytest.approx(-12.0, rel=1e-4)


def test_lanczos_stops_on_an_invariant_subspace_and_at_the_iteration_cap():
    # Rank-2 operator: the Krylov space is exhausted after two products.
    u = np.zeros(30)
    u[:2] = [3.0, 1.0]
    result = analysis.lanczos_top_eigenvalue(lambda v: u * v, 30, iterations=20, tol=0.0)
    assert result.converged and result.iterations <= 3 and result.value == pytest.approx(3.0)
    capped = analysis.lanczos_top_eigenvalue(lambda v: np.arange(100.0) * v, 100, iterations=3,
                                             tol=0.0)
    assert capped.iterations == 3 and not capped.converged and capped.value < 99.0


# ---------------------------------------------------------------------------------------------
# Tiny models.
# ---------------------------------------------------------------------------------------------
def _tiny(quant_cfg=QuantConfig(), seed=0):
    spec = ModelSpec(tiny_config(2), quant_cfg, "classification", 2)
    params = jax.jit(spec.build().init)(jax.random.key(seed), jnp.ones((1, 8), jnp.int32))["params"]
    return spec, params


def _batches(num=2, batch=4, length=12, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for b in range(num):
        ids = rng.integers(1000, 3000, (batch, length)).astype(np.int32)
        mask = np.ones((batch, length), np.int32)
        mask[0, length - 3:] = 0
        out.append({"input_ids": ids, "token_type_ids": np.zeros_like(ids), "attention_mask": mask,
                    "labels": rng.integers(0, 2, batch).astype(np.int32),
                    "example_mask": np.array([1, 1, 1, 0 if b else 1], np.float32)})
    return out


def test_quantize_without_training_keeps_latent_weights_and_adds_act_quantizers():
    spec, params = _tiny()
    new_spec, new_params = analysis.quantize_without_training(spec, params, "bwn", act_bits=8)
    q = new_spec.quant
    assert (q.weight_method, q.weight_bits, q.embed_method, q.embed_bits, q.act_bits) == (
        "bwn", 1, "bwn", 1, 8)
    flat, new_flat = flatten(params), flatten(new_params)
    for k, v in flat.items():
        np.testing.assert_array_equal(new_flat[k], v)
    clips = [k for k in new_flat if k.endswith("_clip")]
    assert clips and all(np.allclose(new_flat[k], [-2.5, 2.5]) for k in clips)
    # Back to full precision: the clips are dropped, the model's act bits kept unless asked.
    fp_spec, fp_params = analysis.quantize_without_training(new_spec, new_params, "fp", act_bits=32)
    assert fp_spec.quant.weight_bits == 32 and not any(k.endswith("_clip") for k in flatten(fp_params))
    with pytest.raises(ValueError, match="allowed"):
        analysis.quantize_without_training(spec, params, "ternary")


def test_quantized_weights_model_has_the_quantized_models_loss():
    spec, params = _tiny()
    spec, params = analysis.quantize_without_training(spec, params, "twn", act_bits=8)
    batches = analysis.device_batches(_batches())
    spec_hat, params_hat = analysis.quantized_weights(spec, params)
    assert spec_hat.quant.weight_bits == 32 and spec_hat.quant.act_bits == 8
    kernel = "encoder/layer_1/ffn/intermediate/kernel"
    w, w_hat = flatten(params)[kernel], flatten(params_hat)[kernel]
    assert len(np.unique(np.abs(np.asarray(w_hat)))) == 2  # 0 and α: ternary
    np.testing.assert_allclose(_loss(spec_hat, params_hat, batches),
                               _loss(spec, params, batches), rtol=1e-6)
    err = analysis.quantization_error(spec, params, [kernel])
    assert err == pytest.approx(float(jnp.sum((w - quant.ternary_values(w)) ** 2)), rel=1e-6)
    assert err > 0
    fp_spec, fp_params = _tiny()
    assert analysis.quantization_error(fp_spec, fp_params, [kernel]) == 0.0


def test_task_loss_is_the_mean_over_real_examples():
    spec, params = _tiny()
    raw = _batches()
    batches = analysis.device_batches(raw)
    model = spec.build()
    per_example = []
    for b in raw:
        logits = model.apply({"params": params}, b["input_ids"], b["token_type_ids"],
                             b["attention_mask"])["logits"]
        logp = jax.nn.log_softmax(logits)
        ce = -np.asarray(logp)[np.arange(len(b["labels"])), b["labels"]]
        per_example += list(ce[b["example_mask"] > 0])
    assert float(_loss(spec, params, batches)) == pytest.approx(np.mean(per_example),
                                                                             rel=1e-5)


def test_hvp_matches_finite_differences_of_gradients():
    # Ternary weights (the ŵ path), activations in full precision: the gradient is smooth in ŵ.
    spec, params = _tiny()
    # Kernels 8× the init scale (std 0.16): attention is far from uniform, curvature visible.
    params = unflatten({k: v * 8 if k.endswith("kernel") else v for k, v in flatten(params).items()})
    spec, params = analysis.quantize_without_training(spec, params, "twn", act_bits=32)
    spec_hat, params_hat = analysis.quantized_weights(spec, params)
    batches = analysis.device_batches(_batches())
    paths = analysis.part_paths(spec.config.num_layers)
    hvp = analysis.hvp_fn(spec_hat, paths)
    flat = flatten(params_hat)
    rng = np.random.default_rng(0)
    v = {k: jnp.zeros_like(flat[k]) for k in paths}
    part = analysis.part_kernels("MHA-QK", 1)
    for k in part:
        v[k] = jnp.asarray(rng.standard_normal(flat[k].shape) * 0.02, jnp.float32)
    hv = hvp(params_hat, v, batches)

    @jax.jit
    def grads(eps):
        moved = {k: flat[k] + eps * v[k] if k in v else flat[k] for k in flat}
        return flatten(jax.grad(lambda p: analysis.task_loss(spec_hat, p, batches))(unflatten(moved)))

    eps = 1e-2
    plus, minus = grads(eps), grads(-eps)
    for k in paths:  # every kernel's row of H v, not only the part's own block
        fd = (np.asarray(plus[k], np.float64) - np.asarray(minus[k], np.float64)) / (2 * eps)
        scale = max(np.abs(fd).max(), 1e-6)
        np.testing.assert_allclose(np.asarray(hv[k]), fd, atol=2e-2 * scale)
    assert np.abs(np.asarray(hv[part[0]])).max() > 1e-3  # a non-trivial product


def test_top_eigenvalue_of_a_part_matches_the_dense_hessian():
    spec, params = _tiny()
    batches = _batches()
    (block, result), = analysis.top_eigenvalues(spec, params, batches, layers=[0], parts=["MHA-V"],
                                                iterations=80, tol=1e-9).items()
    assert block == ("MHA-V", 0)
    key = analysis.part_kernels("MHA-V", 0)[0]
    flat = flatten(params)
    dev = analysis.device_batches(batches)

    def loss(w):
        return analysis.task_loss(spec, unflatten({**flat, key: w}), dev)

    w = flat[key]
    h = np.asarray(jax.jit(jax.hessian(loss))(w), np.float64).reshape(w.size, w.size)
    top = np.linalg.eigvalsh((h + h.T) / 2)[-1]
    assert result.value == pytest.approx(top, rel=1e-3)


def test_top_eigenvalues_through_activation_quantizers():
    # act_bits=8: the custom_vjp quantizers have no forward mode; reverse-over-reverse works.
    spec, params = _tiny()
    spec, params = analysis.quantize_without_training(spec, params, "bwn", act_bits=8)
    results = analysis.top_eigenvalues(spec, params, _batches(num=1), iterations=4, tol=0.0)
    assert list(results) == [(p, layer) for layer in range(2) for p in analysis.PARTS]
    # Four iterations, or fewer where two successive estimates agreed exactly (converged at tol 0).
    assert all(np.isfinite(r.value) and r.value != 0 and (r.iterations == 4 or r.converged)
               for r in results.values())
    with pytest.raises(ValueError, match="out of range"):
        analysis.top_eigenvalues(spec, params, _batches(num=1), layers=[2])
    with pytest.raises(ValueError, match="unknown Transformer part"):
        analysis.top_eigenvalues(spec, params, _batches(num=1), parts=["FFN"])


# ---------------------------------------------------------------------------------------------
# Loss landscape.
# ---------------------------------------------------------------------------------------------
def test_landscape_centre_is_the_models_loss_and_points_are_perturbed_losses():
    spec, params = _tiny()
    spec, params = analysis.quantize_without_training(spec, params, "twn", act_bits=8)
    batches = _batches()
    coords = analysis.grid_coords(2, 0.5)
    np.testing.assert_allclose(coords, [-1.0, -0.5, 0.0, 0.5, 1.0])
    land = analysis.landscape_grid(spec, params, batches, coords=coords)
    dev = analysis.device_batches(batches)
    assert land.losses.shape == (5, 5)
    assert land.centre == pytest.approx(float(_loss(spec, params, dev)), rel=1e-6)
    flat = flatten(params)
    x_key, y_key = (f"{m}/kernel" for m in analysis.DEFAULT_LANDSCAPE_MATRICES)
    assert land.scales[0] == pytest.approx(float(jnp.mean(jnp.abs(flat[x_key]))))
    moved = dict(flat)
    moved[x_key] = flat[x_key] + 1.0 * land.scales[0]
    moved[y_key] = flat[y_key] - 0.5 * land.scales[1]
    assert land.losses[4, 1] == pytest.approx(
        float(_loss(spec, unflatten(moved), dev)), rel=1e-5)
    assert land.losses[4, 1] != pytest.approx(land.centre)
    # The whole grid is one compilation: the perturbation is an input.
    fn = analysis.perturbed_loss_fn(spec.without_axis(), analysis.DEFAULT_LANDSCAPE_MATRICES)
    assert fn._cache_size() == 1
    with pytest.raises(ValueError, match="no kernel at"):
        analysis.landscape_grid(spec, params, batches, matrices=["encoder/layer_9/attention/value",
                                                                 "pooler/dense"])


def test_split_models_are_refused():
    spec, params = _tiny()
    split = dataclasses.replace(spec, quant=dataclasses.replace(spec.quant, split=True,
                                                                weight_bits=1, weight_method="bwn"))
    with pytest.raises(ValueError, match="unsplit"):
        analysis.quantized_weights(split, params)


# ---------------------------------------------------------------------------------------------
# Activation clipping.
# ---------------------------------------------------------------------------------------------
def test_clip_statistics_on_hand_made_values():
    x = jnp.array([[-3.0, -1.0, 0.0, 2.0, 4.0], [9.0, 9.0, 9.0, 9.0, 9.0]])
    mask = jnp.array([[True], [False]])  # the second row is padding: never counted
    stats = quant.clip_statistics(x, jnp.array([-2.5, 2.5]), mask)
    assert float(stats["count"]) == 5 and float(stats["clipped"]) == 2
    assert float(stats["energy"]) == pytest.approx(9 + 1 + 0 + 4 + 16)
    assert float(stats["clipped_energy"]) == pytest.approx(9 + 16)
    assert float(stats["clip_error"]) == pytest.approx(0.5 ** 2 + 1.5 ** 2)
    assert float(stats["absmax"]) == 4.0
    # An asymmetric clip [0, 1] cuts the negatives too.
    stats = quant.clip_statistics(x[:1], jnp.array([0.0, 1.0]))
    assert float(stats["clipped"]) == 4 and float(stats["clip_error"]) == pytest.approx(9 + 1 + 1 + 9)


def test_activation_clipping_counts_what_the_quantizer_sees():
    spec, params = _tiny()
    spec8, params8 = analysis.quantize_without_training(spec, params, "fp", act_bits=8)
    # Narrow the first layer's query-input clip so that it cuts a visible share.
    flat = flatten(params8)
    flat["encoder/layer_0/attention/query/input_clip"] = jnp.array([-0.5, 0.5])
    params8 = unflatten(flat)
    batches = _batches(2)
    totals = analysis.activation_clipping(spec8, params8, batches)
    # Dense inputs, attention Q/K/V and probabilities, FFN inputs and the pooler: every quantizer.
    assert len(totals) == 2 * 10 + 1
    # The first query input is the embedding output (hidden state 0) at the real tokens.
    model = spec8.build(integer_products=False)
    embedded, real = [], []
    for b in batches:
        out = model.apply({"params": params8}, *[jnp.asarray(b[k]) for k in sharding.MODEL_INPUTS],
                          deterministic=True)
        embedded.append(np.asarray(out["hidden_states"][0]).reshape(-1, spec.config.hidden_size))
        real.append(np.asarray(b["attention_mask"]).reshape(-1).astype(bool))
    h = np.concatenate(embedded)[np.concatenate(real)]
    first = totals["encoder/layer_0/attention/query/input_clip"]
    outside = np.abs(h) > 0.5
    assert first["count"] == h.size and first["clipped"] == outside.sum() > 0
    assert first["energy"] == pytest.approx(np.sum(h ** 2), rel=1e-5)
    assert first["clipped_energy"] == pytest.approx(np.sum(h[outside] ** 2), rel=1e-5)
    assert first["clip_error"] == pytest.approx(np.sum((h - np.clip(h, -0.5, 0.5)) ** 2), rel=1e-5)
    # Pooled per site: layer 0's narrow clip and layer 1's ±2.5 add up.
    site = analysis.clipping_by_site(totals)["encoder/attention/query/input"]
    second = totals["encoder/layer_1/attention/query/input_clip"]
    assert site["quantizers"] == 2
    assert site["values"] == pytest.approx((first["clipped"] + second["clipped"])
                                           / (first["count"] + second["count"]))
    assert 0 <= site["removed"] <= site["energy"] <= 1


def test_activation_clipping_needs_uniform_quantizers():
    spec, params = _tiny()
    with pytest.raises(ValueError, match="uniform activation quantizers"):
        analysis.activation_clipping(spec, params, _batches(1))


def test_landscape_panels_share_one_loss_scale(tmp_path):
    """A 0.014 range must look flatter than a 0.23 one: one scale for every surface and contour."""
    coords = np.linspace(-1, 1, 5)
    bowl = np.add.outer(coords ** 2, coords ** 2)
    lands = {"rugged": analysis.Landscape(("a", "b"), coords, (1.0, 1.0), 0.5 + 0.23 * bowl / bowl.max()),
             "flat": analysis.Landscape(("a", "b"), coords, (1.0, 1.0), 0.6 + 0.014 * bowl / bowl.max())}
    fig = analysis.plot_landscapes(tmp_path / "l.png", lands)
    surfaces, contours, bar = fig.axes[0:4:2], fig.axes[1:4:2], fig.axes[4]
    assert [ax.get_zlim() for ax in surfaces] == [pytest.approx((0.5, 0.73))] * 2
    assert [ax.collections[0].get_clim() for ax in contours] == [pytest.approx((0.5, 0.73))] * 2
    assert all(ax.get_xlabel() and ax.get_ylabel() for ax in surfaces) and bar.get_ylabel()
    assert all("mean|W_x|" in ax.get_xlabel() for ax in contours)
    assert_readable_png(tmp_path / "l.png")


# ---------------------------------------------------------------------------------------------
# The command.
# ---------------------------------------------------------------------------------------------
def test_analyze_command_on_a_tiny_checkpoint(tmp_path, tiny_pretrained, glue_dir):
    import json
    import os
    import pathlib
    import subprocess
    import sys

    from binarybert_jax import checkpoints
    spec, params = _tiny()
    ckpt = checkpoints.save_model(tmp_path / "fp", params, spec, {"tokenizer": str(tiny_pretrained)})
    out = tmp_path / "analysis"
    repo = pathlib.Path(__file__).resolve().parents[1]
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    run = subprocess.run([sys.executable, "-m", "launch.analyze", "--config",
                          "configs/analyze.py:task=mrpc,tiny", f"--config.checkpoint={ckpt}",
                          f"--config.data_dir={glue_dir}", "--config.act_bits=8",
                          "--config.hessian.parts=('MHA-O','FFN-Out')",
                          "--config.analyses=('landscape','hessian','clipping')", f"--out={out}"],
                         cwd=repo, env=env, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]
    for name in ("analysis.md", "analysis.json", "landscape.json", "landscape.png", "config.json",
                 "landscape_twn.csv", "landscape_bwn.csv"):
        assert (out / name).is_file(), name
    assert not list(out.glob("landscape_*.png"))  # one figure, all models on one scale
    assert_readable_png(out / "landscape.png")
    # Its panels: a surface and a contour plot per model, one colour bar, one loss scale.
    grids = json.loads((out / "landscape.json").read_text())
    fig = analysis.plot_landscapes(tmp_path / "again.png", {
        n: analysis.Landscape(tuple(g["matrices"]), np.asarray(g["coords"]), tuple(g["scales"]),
                              np.asarray(g["losses"])) for n, g in grids.items()})
    assert len(fig.axes) == 2 * 3 + 1
    every = np.concatenate([np.ravel(g["losses"]) for g in grids.values()])
    for ax in fig.axes[1:6:2]:
        assert ax.collections[0].get_clim() == pytest.approx((every.min(), every.max()))
    report = json.loads((out / "analysis.json").read_text())
    assert [m["label"] for m in report["models"]] == ["FP W32-E32-A8", "TWN W2-E2-A8", "BWN W1-E1-A8"]
    assert [(r["part"], r["layer"]) for r in report["eigenvalues"]] == [
        ("MHA-O", 0), ("FFN-Out", 0), ("MHA-O", 1), ("FFN-Out", 1)]
    row = report["eigenvalues"][0]
    assert row["fp"]["quant_error"] == 0.0 and row["bwn"]["quant_error"] > row["twn"]["quant_error"] > 0
    assert all(r[m]["iterations"] == 2 for r in report["eigenvalues"] for m in ("fp", "twn", "bwn"))
    grid = json.loads((out / "landscape.json").read_text())["bwn"]
    assert grid["coords"] == [-0.5, 0.0, 0.5] and np.shape(grid["losses"]) == (3, 3)
    assert len((out / "landscape_bwn.csv").read_text().splitlines()) == 1 + 9
    md = (out / "analysis.md").read_text()
    assert "| FFN-Out | 1 |" in md and "![loss landscapes](landscape.png)" in md
    assert "without training" in md and "activations at 8 bits" in md
    clipping = report["clipping"]
    assert sorted(clipping) == ["bwn", "fp", "twn"]
    for model in clipping.values():
        assert all(0 <= r["removed"] <= r["energy"] <= 1 and 0 <= r["values"] <= 1
                   for r in model["by_site"].values())
    assert "## Activation clipping" in md and "| `encoder/attention/query/input` |" in md
    # README's sections render it from the record directory (launch.tables).
    from launch import tables
    readme = tmp_path / "README.md"
    readme.write_text("<!-- results:analysis -->\nold\n<!-- /results -->\n")
    assert tables.main(["--readme", str(readme), "--results-dir", str(tmp_path)]) == 0
    rendered = readme.read_text()
    assert "old" not in rendered and "| `encoder/ffn/intermediate/input` |" in rendered
    assert rendered.count("\n| ") == 1 + len(report["clipping"]["fp"]["by_site"])  # header, rows
