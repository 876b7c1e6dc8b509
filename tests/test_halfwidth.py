"""Half-width models: the mask-gradient identity, pruning equivalence, and the checkpoint stage."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from binarybert_jax import checkpoints, halfwidth, kd, sharding
from binarybert_jax import model as M
from binarybert_jax.data import batching, encode, tasks
from binarybert_jax.tokenizer import load_tokenizer

# The real vocabulary (the MRPC test tokenizes with MiniLM's tokenizer) and MRPC's batch shape
# everywhere, so that every test shares one compiled mask-gradient function.
CONFIG = M.BertConfig(vocab_size=30522, hidden_size=32, num_layers=2, num_heads=4, head_dim=8,
                      intermediate_size=16, max_position=64, hidden_dropout=0.0, attention_dropout=0.0)
SPEC = M.ModelSpec(CONFIG, num_labels=2)


def _batch(seed=0, batch=8, seq=32):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(4, seq + 1, batch)
    return {"input_ids": rng.integers(1, CONFIG.vocab_size, (batch, seq)).astype(np.int32),
            "token_type_ids": (np.arange(seq)[None] >= seq // 2).astype(np.int32).repeat(batch, 0),
            "attention_mask": (np.arange(seq)[None] < lengths[:, None]).astype(np.int32),
            "labels": rng.integers(0, 2, batch).astype(np.int32),
            "example_mask": np.array([1.0] * (batch - 1) + [0.0], np.float32)}


def _params(seed=0):
    """Random parameters with non-zero biases and LayerNorm spread (as after fine-tuning)."""
    shapes = jax.eval_shape(lambda: SPEC.build().init(jax.random.key(0), jnp.ones((1, 4), jnp.int32)))
    rng = np.random.default_rng(seed)

    def draw(path, leaf):
        scale = 1.0 if jax.tree_util.keystr(path).endswith("['scale']") else 0.0
        return (scale + 0.2 * rng.normal(size=leaf.shape)).astype(np.float32)

    return jax.tree_util.tree_map_with_path(draw, shapes["params"])


def _apply(spec, params, batch):
    # Jitted: one compilation costs less than dispatching (and compiling) every operation eagerly.
    return jax.jit(spec.build().apply)({"params": params},
                                       *[jnp.asarray(batch[k]) for k in sharding.MODEL_INPUTS])


def test_mask_gradients_equal_explicit_masks():
    """The W ⊙ ∂L/∂W identity against masks applied explicitly: scaling the rows of W_o that
    head h owns by m_h multiplies that head's context by m_h (c·diag(m)·W = (c·diag(m))·W)."""
    params, batch = _params(), _batch()
    model, cfg = SPEC.build(), CONFIG

    def masked_loss(masks):
        p = jax.tree_util.tree_map(lambda x: x, params)
        for i in range(cfg.num_layers):
            layer = p["encoder"][f"layer_{i}"]
            rows = jnp.repeat(masks["heads"][i], cfg.head_dim)
            layer["attention"]["output"]["kernel"] = layer["attention"]["output"]["kernel"] * rows[:, None]
            layer["ffn"]["output"]["kernel"] = layer["ffn"]["output"]["kernel"] * masks["neurons"][i][:, None]
        out = model.apply({"params": p}, *[batch[k] for k in sharding.MODEL_INPUTS])
        return kd.label_loss(out["logits"], jnp.asarray(batch["labels"]), jnp.asarray(batch["example_mask"]),
                             is_regression=SPEC.num_labels == 1)

    ones = {"heads": jnp.ones((2, 4)), "neurons": jnp.ones((2, 16))}
    explicit = jax.jit(jax.grad(masked_loss))(ones)
    identity = halfwidth.mask_gradient_fn(SPEC)(params, sharding.device_batch(batch, labels=True))
    for key in ("heads", "neurons"):
        assert np.abs(explicit[key]).max() > 1e-4  # a non-trivial comparison
        np.testing.assert_allclose(identity[key], explicit[key], rtol=1e-4, atol=1e-7, err_msg=key)


def test_importance_ranks_a_dead_head_and_neuron_last():
    params = _params(1)
    params["encoder"]["layer_1"]["attention"]["output"]["kernel"][2 * 8:3 * 8] = 0.0
    params["encoder"]["layer_0"]["ffn"]["output"]["kernel"][5] = 0.0
    scores = halfwidth.score_importance(SPEC, params, (_batch(s) for s in range(5)), num_batches=3)
    assert scores["heads"].shape == (2, 4) and scores["neurons"].shape == (2, 16)
    assert scores["heads"][1, 2] == 0 and np.argmin(scores["heads"][1]) == 2
    assert scores["neurons"][0, 5] == 0 and (np.delete(scores["neurons"][0], 5) > 0).all()
    assert (scores["heads"][0] > 0).all()


def test_full_width_pruning_is_the_identity():
    params = _params(2)
    scores = {"heads": np.random.default_rng(0).random((2, 4)),
              "neurons": np.random.default_rng(1).random((2, 16))}
    pruned, spec = halfwidth.prune(params, SPEC, scores, width=1.0)
    assert spec == SPEC
    jax.tree_util.tree_map(np.testing.assert_array_equal, pruned, params)


def test_pruned_model_equals_masked_original():
    """Removing heads and neurons = zeroing their output rows in the original model."""
    params = _params(3)
    rng = np.random.default_rng(4)
    scores = {"heads": rng.random((2, 4)), "neurons": rng.random((2, 16))}
    kept = halfwidth.kept_indices(scores, SPEC, 0.5)
    assert kept["heads"].shape == (2, 2) and kept["neurons"].shape == (2, 8)
    np.testing.assert_array_equal(kept["heads"], np.sort(np.argsort(-scores["heads"], 1)[:, :2], 1))

    masked = jax.tree_util.tree_map(np.copy, params)
    for i in range(2):
        layer = masked["encoder"][f"layer_{i}"]
        for h in sorted(set(range(4)) - set(kept["heads"][i].tolist())):
            layer["attention"]["output"]["kernel"][h * 8:(h + 1) * 8] = 0.0
        dropped = sorted(set(range(16)) - set(kept["neurons"][i].tolist()))
        layer["ffn"]["output"]["kernel"][dropped] = 0.0
    pruned, spec = halfwidth.prune(params, SPEC, scores, width=0.5)
    assert spec.config == CONFIG.with_width(0.5) and spec.config.head_dim == 8
    assert pruned["encoder"]["layer_0"]["attention"]["query"]["kernel"].shape == (32, 16)
    assert pruned["encoder"]["layer_1"]["ffn"]["output"]["kernel"].shape == (8, 32)

    batch = _batch(5)
    ref, out = _apply(SPEC, masked, batch), _apply(spec, pruned, batch)
    np.testing.assert_allclose(out["logits"], ref["logits"], atol=1e-5)
    for a, b in zip(out["hidden_states"], ref["hidden_states"]):
        np.testing.assert_allclose(a, b, atol=1e-5)
    for i, (a, b) in enumerate(zip(out["attention_scores"], ref["attention_scores"])):
        np.testing.assert_allclose(a, np.asarray(b)[:, kept["heads"][i]], atol=1e-5)


def test_refuses_quantized_models_and_bad_scores():
    params = _params()
    scores = {"heads": np.ones((2, 4)), "neurons": np.ones((2, 16))}
    for q in (M.QuantConfig(2, 2, 8), M.QuantConfig(32, 32, 8),
              M.QuantConfig(1, 1, 32, "bwn", "bwn", split=True)):
        with pytest.raises(ValueError, match="full-precision"):
            halfwidth.prune(params, dataclasses.replace(SPEC, quant=q), scores)
        with pytest.raises(ValueError, match="full-precision"):
            halfwidth.score_importance(dataclasses.replace(SPEC, quant=q), params, [_batch()])
    with pytest.raises(ValueError, match=r"needs \(2, 16\)"):
        halfwidth.prune(params, SPEC, {"heads": np.ones((2, 4)), "neurons": np.ones((2, 8))})
    with pytest.raises(ValueError, match="no batches"):
        halfwidth.score_importance(SPEC, params, [])


def test_half_width_checkpoint_on_real_mrpc(tmp_path, glue_dir, minilm_dir):
    """End to end: a tiny full-precision teacher with the real vocabulary, real MRPC batches."""
    spec, params = SPEC, _params(6)
    checkpoints.save_model(tmp_path / "teacher", params, spec, {"stage": "finetune", "task": "mrpc"})
    arrays = encode.load_encoded_split(load_tokenizer(minilm_dir), tasks.get_task("mrpc"), "train", data_dir=glue_dir,
                                       max_length=32, limit=32)
    batches = batching.iterate_batches(arrays, 8, shuffle=False)

    summary = halfwidth.make_half_width_checkpoint(tmp_path / "teacher", tmp_path / "half", batches,
                                                   width=0.5, num_batches=3)
    assert summary["num_batches"] == 3
    assert summary["num_heads"] == [4, 2] and summary["intermediate_size"] == [16, 8]
    assert all(0.5 <= r <= 1.0 for k in ("heads", "neurons") for r in summary["retained_importance"][k])
    new_params, new_spec, info = checkpoints.load_model(tmp_path / "half")
    assert new_spec.config == CONFIG.with_width(0.5) and new_spec.quant == spec.quant
    assert info["stage"] == "prune" and info["source_info"]["task"] == "mrpc"
    assert np.shape(info["kept_heads"]) == (2, 2) and np.shape(info["kept_neurons"]) == (2, 8)
    # The checkpoint is the model prune_params builds from the recorded choice, which is the top
    # half of the scores of those three batches.
    scores = halfwidth.score_importance(spec, params, batching.iterate_batches(arrays, 8, shuffle=False),
                                        num_batches=3)
    np.testing.assert_allclose(info["head_scores"], scores["heads"])
    kept = {"heads": np.array(info["kept_heads"]), "neurons": np.array(info["kept_neurons"])}
    for key in ("heads", "neurons"):
        np.testing.assert_array_equal(kept[key], halfwidth.kept_indices(scores, spec)[key])
    ref_params, _ = halfwidth.prune_params(params, spec, kept)
    jax.tree_util.tree_map(np.testing.assert_array_equal, new_params, ref_params)
