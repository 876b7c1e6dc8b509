"""BiBERT: its quantizers, Bi-Attention, direction-matching distillation and a tiny training run."""

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from binarybert_jax import checkpoints, kd, quant, train
from binarybert_jax.model import BertConfig, BertModel, ModelSpec, QuantConfig
from configs import bibert as bibert_config

BIBERT = QuantConfig(1, 1, 1, "bibert", "bibert", "sign", weight_granularity="row",
                     embed_granularity="row", attention="bool")
SMALL = BertConfig(vocab_size=40, hidden_size=32, num_layers=2, num_heads=2, head_dim=16,
                   intermediate_size=64, max_position=16, hidden_dropout=0.0, attention_dropout=0.0)


# ----------------------------------------------------------------------------------------------
# Quantizers.
# ----------------------------------------------------------------------------------------------
def test_centred_binary_values_and_clipped_gradient_per_output_unit():
    rng = np.random.default_rng(0)
    w = (1.5 * rng.standard_normal((24, 7)) + 0.3).astype(np.float32)  # some |w − mean| > 1
    g = rng.standard_normal(w.shape).astype(np.float32)
    codes, scales = quant.weight_quant_codes(jnp.asarray(w), "bibert", 1, (-2,))
    centred = w - w.mean(0, keepdims=True)
    np.testing.assert_array_equal(codes, np.sign(centred))
    np.testing.assert_allclose(scales, np.abs(w).mean(0, keepdims=True), rtol=1e-6)
    values, vjp = jax.vjp(lambda x: quant.quantize_weight(x, "bibert", 1, (-2,)), jnp.asarray(w))
    np.testing.assert_array_equal(values, np.asarray(scales) * np.sign(centred))
    # The gradient of clamp(w − mean w, −1, 1): masked outside [−1, 1], and through the mean.
    inside = (np.abs(centred) <= 1) * g
    assert 0 < np.mean(np.abs(centred) > 1) < 1
    np.testing.assert_allclose(vjp(jnp.asarray(g))[0], inside - inside.mean(0, keepdims=True),
                               rtol=1e-5, atol=1e-6)


def test_sign_and_bool_activations_with_clipped_gradients():
    x = jnp.asarray(np.random.default_rng(1).standard_normal((5, 9)).astype(np.float32) * 2)
    x = x.at[0, 0].set(0.0)
    g = jnp.ones_like(x)
    y, vjp = jax.vjp(quant.sign_act, x)
    np.testing.assert_array_equal(y, np.where(np.asarray(x) >= 0, 1.0, -1.0))  # +1 at 0
    np.testing.assert_array_equal(vjp(g)[0], (np.abs(np.asarray(x)) <= 1).astype(np.float32))
    b, vjp_b = jax.vjp(quant.bool_act, x)
    np.testing.assert_array_equal(b, (np.asarray(x) > 0).astype(np.float32))  # 0 at 0
    np.testing.assert_array_equal(vjp_b(g)[0], (np.abs(np.asarray(x)) <= 1).astype(np.float32))
    # Through the generic dispatch, as the model calls it.
    np.testing.assert_array_equal(quant.quantize_act(x, None, "sign", 1, True), y)


def test_bibert_quant_config_validation():
    with pytest.raises(ValueError, match="act_bits must be 1"):
        QuantConfig(act_bits=8, act_method="sign")
    with pytest.raises(ValueError, match="needs act_method 'sign'"):
        QuantConfig(act_bits=8, attention="bool")
    with pytest.raises(ValueError, match="attention must be one of"):
        QuantConfig(attention="linear")
    with pytest.raises(ValueError, match="cannot quantize to 2 bits"):
        QuantConfig(weight_bits=2, weight_method="bibert")


# ----------------------------------------------------------------------------------------------
# Bi-Attention.
# ----------------------------------------------------------------------------------------------
def _numpy_bi_attention(q, k, v, mask):
    """The definition, written directly: A = sign(Q)sign(K)ᵀ/√d + mask bias; context Bool(A)·sign(V)."""
    sign = lambda t: np.where(t >= 0, 1.0, -1.0)
    a = np.einsum("bhqd,bhkd->bhqk", sign(q), sign(k)) / math.sqrt(q.shape[-1])
    a = a + np.where(mask, 0.0, -10000.0)[:, None, None, :]
    weights = (a > 0).astype(np.float64)
    return weights, np.einsum("bhqk,bhkd->bhqd", weights, sign(v))


def test_bi_attention_equals_numpy_and_never_attends_padding():
    model = BertModel(SMALL, BIBERT)
    rng = np.random.default_rng(2)
    ids = jnp.asarray(rng.integers(1, 40, (3, 10)))
    mask = np.ones((3, 10), np.int32)
    mask[1, 6:] = 0
    mask[2, 3:] = 0
    params = model.init(jax.random.key(0), ids, None, jnp.asarray(mask))["params"]
    out = model.apply({"params": params}, ids, None, jnp.asarray(mask), output_qkv=True,
                      output_attention_probs=True)
    for layer in range(SMALL.num_layers):
        q, k, v = (np.asarray(t, np.float64) for t in out["qkv"][layer])
        weights, context = _numpy_bi_attention(q, k, v, mask.astype(bool))
        probs = np.asarray(out["attention_probs"][layer])
        np.testing.assert_array_equal(probs, weights)
        assert probs[np.broadcast_to(~mask.astype(bool)[:, None, None, :], probs.shape)].max() == 0
        # The context reaches the output layer through its sign: check the layer's output by
        # running the attention module's own dense layers on the NumPy context.
        attn = params["encoder"][f"layer_{layer}"]["attention"]["output"]
        ctx = context.transpose(0, 2, 1, 3).reshape(3, 10, -1)
        kernel = np.asarray(attn["kernel"], np.float64)
        centred = kernel - kernel.mean(0, keepdims=True)
        dense = (np.where(ctx >= 0, 1.0, -1.0) @ np.sign(centred)) * np.abs(kernel).mean(0) + np.asarray(attn["bias"])
        x_in = np.asarray(out["hidden_states"][layer], np.float64)
        ln = params["encoder"][f"layer_{layer}"]["attention"]["LayerNorm"]
        y = dense + x_in
        y = (y - y.mean(-1, keepdims=True)) / np.sqrt(y.var(-1, keepdims=True) + SMALL.layer_norm_eps)
        y = y * np.asarray(ln["scale"]) + np.asarray(ln["bias"])
        # The attention block's output feeds the FFN; recompute it to compare with the next hidden state.
        ffn = params["encoder"][f"layer_{layer}"]["ffn"]

        def binary_dense(x, p):
            kern = np.asarray(p["kernel"], np.float64)
            c = np.sign(kern - kern.mean(0, keepdims=True))
            return (np.where(x >= 0, 1.0, -1.0) @ c) * np.abs(kern).mean(0) + np.asarray(p["bias"])
        h = binary_dense(y, ffn["intermediate"])
        h = 0.5 * h * (1 + np.vectorize(math.erf)(h / math.sqrt(2)))
        z = binary_dense(h, ffn["output"]) + y
        z = (z - z.mean(-1, keepdims=True)) / np.sqrt(z.var(-1, keepdims=True) + SMALL.layer_norm_eps)
        z = z * np.asarray(ffn["LayerNorm"]["scale"]) + np.asarray(ffn["LayerNorm"]["bias"])
        np.testing.assert_allclose(np.asarray(out["hidden_states"][layer + 1]), z, atol=2e-4)


def test_qkv_outputs_only_when_asked_and_softmax_models_unchanged():
    ids = jnp.ones((1, 6), jnp.int32)
    model = BertModel(SMALL)
    params = model.init(jax.random.key(0), ids)["params"]
    plain = model.apply({"params": params}, ids)
    assert "qkv" not in plain
    asked = model.apply({"params": params}, ids, output_qkv=True)
    np.testing.assert_array_equal(plain["logits"], asked["logits"])
    assert len(asked["qkv"]) == SMALL.num_layers and asked["qkv"][0][0].shape == (1, 2, 6, 16)


# ----------------------------------------------------------------------------------------------
# Direction-matching distillation.
# ----------------------------------------------------------------------------------------------
def test_direction_loss_and_gram_on_hand_made_tensors():
    s = jnp.array([[3.0, 4.0]])
    t = jnp.array([[0.0, 10.0]])
    # Directions (0.6, 0.8) and (0, 1): distance √(0.36 + 0.04).
    assert float(kd.direction_loss(s, t)) == pytest.approx(math.sqrt(0.4), rel=1e-6)
    assert float(kd.direction_loss(s, 7 * s)) == pytest.approx(0.0, abs=1e-6)  # scale-free
    x = jnp.array([[[[1.0, 0.0, 2.0, 0.0], [0.0, 1.0, 0.0, 0.0]]]])  # (B=1, H=1, T=2, d=4)
    np.testing.assert_allclose(kd.gram(x), [[[[5 / 2, 0], [0, 1 / 2]]]])
    np.testing.assert_allclose(kd.gram(x, jnp.array([[1, 0]])), [[[[5 / 2, 0], [0, 0]]]])


def test_dmd_objective_terms():
    one = jnp.ones((1, 1, 2, 2))
    qkv_s = [(one, one, one)]
    qkv_t = [(one, 2 * one, -one)]  # same, scaled (0 loss), opposite direction (Gram is the same)
    student = {"qkv": qkv_s, "hidden_states": [jnp.array([[[1.0, 0.0]]])],
               "logits": jnp.array([[0.0, 0.0]])}
    teacher = {"qkv": qkv_t, "hidden_states": [jnp.array([[[0.0, 1.0]]])],
               "logits": jnp.array([[0.0, 0.0]])}
    batch = {"attention_mask": jnp.ones((1, 2), jnp.int32), "labels": jnp.array([1])}
    terms = kd.kd_losses(student, teacher, batch, objective="dmd", is_regression=False)
    assert float(terms["query_loss"]) == pytest.approx(0.0, abs=1e-6)
    assert float(terms["key_loss"]) == pytest.approx(0.0, abs=1e-6)
    assert float(terms["value_loss"]) == pytest.approx(0.0, abs=1e-6)
    assert float(terms["hidden_loss"]) == pytest.approx(math.sqrt(2), rel=1e-6)
    # Soft CE of uniform vs uniform over 2 classes, averaged over classes: ln 2 / 2; labels: 0.5 ln 2.
    assert float(terms["prediction_loss"]) == pytest.approx(math.log(2) / 2, rel=1e-6)
    assert float(terms["label_loss"]) == pytest.approx(0.5 * math.log(2), rel=1e-6)
    assert float(terms["total"]) == pytest.approx(math.sqrt(2) + math.log(2), rel=1e-6)


# ----------------------------------------------------------------------------------------------
# Configs and a tiny end-to-end run.
# ----------------------------------------------------------------------------------------------
def test_config_has_the_released_hyperparameters():
    c = bibert_config.get_config("task=sst-2")
    assert (c.kd.mode, c.batch_size, c.stage2.epochs, c.stage2.learning_rate) == ("dmd", 16, 10.0, 1e-4)
    assert c.student.quant.attention == "bool" and c.student.quant.weight_method == "bibert"
    half = bibert_config.get_config("task=mrpc,epochs=0.25")
    assert (half.stage2.epochs, half.stage2.learning_rate) == (5.0, 2e-4)
    naive = bibert_config.get_config("task=mrpc,recipe=binarybert")
    assert naive.kd.mode == "two_stage" and naive.student.quant.attention == "softmax"
    with pytest.raises(ValueError, match="tasks:"):
        bibert_config.get_config("task=wnli")


def test_validate_names_bad_bibert_settings():
    from binarybert_jax import resolve
    from binarybert_jax.errors import ConfigError
    c = bibert_config.get_config("task=mrpc")
    resolve.validate(c)
    c.student.quant.act_method = "uniform"
    with pytest.raises(ConfigError, match=r"--config.student.quant: act_bits must be in 2..16"):
        resolve.validate(c)
    c.student.quant.update(act_method="sign", attention="sparse")
    c.kd.mode = "dmdd"
    with pytest.raises(ConfigError, match=r"kd.mode='dmdd'.*attention must be one of"):
        resolve.validate(c)


def test_tiny_bibert_run_loss_falls(tmp_path, tiny_pretrained, glue_dir):
    from conftest import tiny_config
    spec = ModelSpec(tiny_config(2))
    teacher = spec.build().init(jax.random.key(0), jnp.ones((1, 8), jnp.int32))["params"]
    checkpoints.save_model(tmp_path / "teacher", teacher, spec)
    c = bibert_config.get_config("task=mrpc,tiny")
    c.pretrained, c.data_dir, c.teacher = str(tiny_pretrained), str(glue_dir), str(tmp_path / "teacher")
    c.train_limit, c.eval_limit, c.batch_size, c.eval_batch_size = 16, 8, 4, 8
    c.max_seq_length, c.progress_bar, c.log_every_steps = 32, False, 4
    c.stage2.epochs, c.stage2.learning_rate, c.warmup_proportion = 6.0, 1e-3, 0.0
    result = train.train_and_evaluate(c, tmp_path / "run")
    assert [p["phase"] for p in result["phases"]] == ["dmd"]
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    totals = [r["total"] for r in rows if "total" in r]
    assert len(totals) >= 4 and totals[-1] < 0.92 * totals[0], totals
    assert {"query_loss", "key_loss", "value_loss", "hidden_loss", "label_loss"} <= set(rows[0])
    _, saved, _ = checkpoints.load_model(tmp_path / "run" / result["final_checkpoint"])
    assert saved.quant == BIBERT and saved.quant.attention == "bool"
    # Its record (launch.record) and a README table made from it (launch.tables).
    from launch import record, tables
    record.main([str(tmp_path / "run"), "--name", "bibert/s42", "--setting", "BiBERT",
                 "--results-dir", str(tmp_path / "results"), "--no-test"])
    readme = tmp_path / "README.md"
    readme.write_text("<!-- results:bibert bits which=final -->\n<!-- /results -->\n")
    assert tables.main(["--readme", str(readme), "--results-dir", str(tmp_path / "results")]) == 0
    row = [line for line in readme.read_text().splitlines() if line.startswith("| BiBERT |")][0]
    assert row.startswith("| BiBERT | 1-1-1 | 1 |")
    assert f"| {100 * result['final']['f1']:.1f} |" in row
