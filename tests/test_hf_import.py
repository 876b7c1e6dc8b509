"""Hugging Face import: parity with transformers' BertModel on the real MiniLM, and clear errors."""

import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from binarybert_jax import hf_import, model as M
from binarybert_jax.tokenizer import load_tokenizer


@pytest.fixture(scope="module")
def parity(fixtures_dir):
    return dict(np.load(fixtures_dir / "minilm_hf_parity.npz"))


@pytest.fixture(scope="module")
def minilm(minilm_dir):
    config, flat = hf_import.load_hf_checkpoint(minilm_dir)
    return config, flat


def test_minilm_matches_transformers(minilm, minilm_dir, fixtures_dir):
    config, _ = minilm
    assert (config.num_layers, config.hidden_size, config.num_heads, config.head_dim) == (6, 384, 12, 32)
    errors = hf_import.parity_errors(minilm_dir, fixtures_dir / "minilm_hf_parity.npz")
    assert len([k for k in errors if k.startswith("hidden_")]) == 1 + config.num_layers + 1  # + max
    assert max(errors.values()) < 1e-4, errors


def test_tokenizer_reproduces_fixture_ids(minilm_dir, parity):
    tok = load_tokenizer(minilm_dir)
    for i, (a, b) in enumerate(zip(parity["texts_a"], parity["texts_b"])):
        enc = tok(str(a), str(b) or None, max_length=48, padding="max_length", truncation=True)
        np.testing.assert_array_equal(enc["input_ids"], parity["input_ids"][i])
        np.testing.assert_array_equal(enc["token_type_ids"], parity["token_type_ids"][i])
        np.testing.assert_array_equal(enc["attention_mask"], parity["attention_mask"][i])


def _small_hf_dir(tmp_path, minilm_dir, prefix="", extra=None, drop=()):
    """A real HF directory: MiniLM's config and tensors, re-saved with edits."""
    d = tmp_path / "hf"
    d.mkdir()
    shutil.copy(minilm_dir / "config.json", d / "config.json")
    tensors = {prefix + k: v for k, v in load_file(str(minilm_dir / "model.safetensors")).items()
               if k not in drop}
    tensors.update(extra or {})
    save_file(tensors, str(d / "model.safetensors"))
    return d


def test_prefixed_classification_checkpoint(tmp_path, minilm_dir, minilm):
    d = _small_hf_dir(tmp_path, minilm_dir, prefix="bert.", extra={
        "classifier.weight": np.ones((3, 384), np.float32), "classifier.bias": np.arange(3, dtype=np.float32)})
    config, flat = hf_import.load_hf_checkpoint(d)
    assert flat["classifier/kernel"].shape == (384, 3)
    np.testing.assert_array_equal(flat["encoder/layer_0/attention/query/kernel"],
                                  minilm[1]["encoder/layer_0/attention/query/kernel"])
    model = M.BertModel(config, num_labels=3)
    init = model.init(jax.random.key(0), jnp.ones((1, 8), jnp.int32))["params"]
    params = hf_import.merge_pretrained(init, flat)
    np.testing.assert_array_equal(params["classifier"]["bias"], [0, 1, 2])


def test_errors_name_keys_and_shapes(tmp_path, minilm_dir, minilm):
    config, flat = minilm
    model = M.BertModel(config)
    init = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.ones((1, 8), jnp.int32)))["params"]
    missing = {k: v for k, v in flat.items() if k != "encoder/layer_3/ffn/output/kernel"}
    with pytest.raises(hf_import.CheckpointError, match=r"missing keys: \['encoder/layer_3/ffn/output/kernel'\]"):
        hf_import.merge_pretrained(init, missing)
    bad = dict(flat, **{"encoder/layer_0/attention/key/kernel": np.zeros((384, 10), np.float32)})
    with pytest.raises(hf_import.CheckpointError,
                       match=r"encoder/layer_0/attention/key/kernel: expected \(384, 384\), got \(384, 10\)"):
        hf_import.merge_pretrained(init, bad)
    half = M.BertModel(config.with_width(0.5))
    half_init = jax.eval_shape(lambda: half.init(jax.random.key(0), jnp.ones((1, 8), jnp.int32)))["params"]
    with pytest.raises(hf_import.CheckpointError, match="shape mismatches"):
        hf_import.merge_pretrained(half_init, flat)
    d = _small_hf_dir(tmp_path, minilm_dir, extra={"encoder.layer.0.crossattention.weight": np.zeros(2, np.float32)})
    with pytest.raises(hf_import.CheckpointError, match="crossattention"):
        hf_import.load_hf_checkpoint(d)


def test_missing_files_and_unsupported_configs(tmp_path, minilm_dir):
    with pytest.raises(FileNotFoundError, match="config.json"):
        hf_import.load_hf_checkpoint(tmp_path)
    d = tmp_path / "cfg"
    d.mkdir()
    cfg = json.loads((minilm_dir / "config.json").read_text())
    (d / "config.json").write_text(json.dumps(dict(cfg, position_embedding_type="relative_key")))
    with pytest.raises(hf_import.CheckpointError, match="relative_key"):
        hf_import.read_hf_config(d)
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        hf_import.load_hf_checkpoint(d)
    (d / "pytorch_model.bin").write_bytes(b"not read")
    with pytest.raises(hf_import.CheckpointError, match="Convert it once"):
        hf_import.load_hf_checkpoint(d)
    (d / "config.json").write_text(json.dumps(dict(cfg, model_type="roberta")))
    with pytest.raises(hf_import.CheckpointError, match="roberta"):
        hf_import.read_hf_config(d)
