"""Bit-packed export: exact round trips (values and logits), file size against the accounting,
the real MiniLM checkpoint, and clear refusals of corrupt files."""

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors import safe_open
from safetensors.numpy import save_file

from binarybert_jax import hf_import, export, quant, size
from binarybert_jax.model import BertConfig, ModelSpec, QuantConfig
from launch import export as export_main
from launch import size as size_main

TINY = BertConfig(vocab_size=100, hidden_size=32, num_layers=2, num_heads=2, head_dim=16,
                  intermediate_size=64, max_position=16)
BWN_118 = QuantConfig(1, 1, 8, "bwn", "bwn")
SPLIT_118 = QuantConfig(weight_bits=1, embed_bits=1, weight_method="bwn", embed_method="bwn",
                        split=True, act_bits=8)

# Logits through the model: one config per quantizer family (each costs a model compile).
FORWARD_CONFIGS = {
    "twn-2-2-8": QuantConfig(2, 2, 8, "twn", "twn"),
    "bwn-1-1-8": BWN_118,
    "split-1-1-8": SPLIT_118,
    "lat-2-2-4-lsq": QuantConfig(2, 2, 4, "lat", "lat", act_method="lsq"),
    "uniform-8-8-8-row": QuantConfig(8, 8, 8, "uniform", "uniform", weight_granularity="row"),
}
# Values only (no compile of the model): the remaining layouts and bit widths.
VALUE_CONFIGS = {
    "lat-3-3-32": QuantConfig(3, 3, 32, "lat", "lat"),
    "uniform-4-4-8-row": QuantConfig(4, 4, 8, "uniform", "uniform", weight_granularity="row"),
    "twn-row-kernels-layer-embedding": QuantConfig(2, 2, 8, "twn", "twn", weight_granularity="row",
                                                   embed_granularity="layer"),
    "split-own-act-unsplit-fp-pooler": QuantConfig(
        weight_bits=1, embed_bits=1, weight_method="bwn", embed_method="bwn", split=True,
        split_shared_act=False, unsplit=("encoder/layer_1/ffn/output",), act_bits=8,
        quantize_pooler=False),
}

# quant.weight_quant_values under jit, as the model computes it.
_values = jax.jit(quant.weight_quant_values, static_argnums=(1, 2, 3))


def random_params(spec, seed=0):
    """Random latent weights for every parameter of ``spec`` (shapes from eval_shape, no init)."""
    rng = np.random.default_rng(seed)
    flat = {}
    for path, shape in size.param_shapes(spec).items():
        if path.endswith("_clip"):
            flat[path] = np.broadcast_to(np.array([-2.5, 2.5], np.float32), shape).copy()
        elif path.endswith("_step"):
            flat[path] = np.full(shape, 0.25, np.float32)
        else:
            flat[path] = rng.normal(0.0, 0.05, shape).astype(np.float32)
    return hf_import.unflatten(flat)


def both_logits(spec, params, loaded_spec, loaded, *inputs):
    """The quantized source model's and the loaded model's logits, compiled together."""
    src, dst = spec.build(), loaded_spec.build()
    fn = jax.jit(lambda p, q: (src.apply({"params": p}, *inputs)["logits"],
                               dst.apply({"params": q}, *inputs)["logits"]))
    a, b = fn(params, loaded)
    return np.asarray(a), np.asarray(b)


def assert_size_matches_accounting(summary):
    """Payload = accounting (weights, float32 params, scales, act params) + stated overhead."""
    manifest = export.read_manifest(summary.path)
    bound = sum(7 + 32 * e["levels"] + 32 * e["zeros"] for e in manifest["tensors"].values()
                if e["kind"] == "quantized")
    assert 0 <= summary.overhead_bits <= bound
    assert summary.payload_bytes * 8 == summary.accounting.total_bits + summary.overhead_bits
    assert summary.file_bytes == summary.payload_bytes + summary.header_bytes
    assert summary.header_bytes < 64 * 1024


def assert_values_exact(spec, params, loaded, diag=None):
    """Every quantized weight loads as exactly quant.weight_quant_values of its latent weight;
    float32 parameters load bitwise (split biases as their exact sum)."""
    flat, got = hf_import.flatten(params), hf_import.flatten(loaded)
    diag = hf_import.flatten(diag) if diag else {}
    for t in size.tensor_plan(spec):
        w = flat[t.path]
        if t.kind == size.QUANTIZED:
            want = np.asarray(_values(w, t.method, t.bits, t.axes, diag.get(t.path)))
            np.testing.assert_array_equal(got[t.path], want, err_msg=t.path)
        elif t.split:
            np.testing.assert_array_equal(got[t.path][0] + got[t.path][1], w[0] + w[1])
        else:
            np.testing.assert_array_equal(got[t.path], w, err_msg=t.path)


@pytest.fixture(scope="module")
def tiny_inputs():
    rng = np.random.default_rng(1)
    ids = jnp.asarray(rng.integers(0, TINY.vocab_size, (3, 10)), jnp.int32)
    types = jnp.zeros_like(ids).at[:, 6:].set(1)
    mask = jnp.ones_like(ids).at[0, 7:].set(0)
    return ids, types, mask


@pytest.mark.parametrize("name", sorted(FORWARD_CONFIGS))
def test_round_trip_logits(name, tmp_path, tiny_inputs):
    spec = ModelSpec(TINY, FORWARD_CONFIGS[name])
    params = random_params(spec)
    summary = export.export_packed(params, spec, tmp_path / "model.safetensors",
                                   info={"task": "unit"})
    loaded, loaded_spec, info = export.load_packed(summary.path)
    assert info["task"] == "unit" and ModelSpec.from_dict(info["quantized_spec"]) == spec
    q = loaded_spec.quant
    assert (q.weight_bits, q.embed_bits, q.split) == (32, 32, False)
    assert (q.act_bits, q.act_method) == (spec.quant.act_bits, spec.quant.act_method)
    assert_size_matches_accounting(summary)
    # requantize=True keeps the quantized spec and its layout (split planes included).
    again, again_spec, _ = export.load_packed(summary.path, requantize=True)
    assert again_spec == spec
    assert_values_exact(spec, params, again)
    source, packed = both_logits(spec, params, loaded_spec, loaded, *tiny_inputs)
    # The loaded weights equal the quantizer's values bitwise (above); inside the larger
    # compiled forward XLA may still round a scale's mean differently by an ulp, hence the
    # tolerance (bitwise in every config here at the time of writing).
    np.testing.assert_allclose(packed, source, rtol=0, atol=1e-6)


@pytest.mark.parametrize("name", sorted(VALUE_CONFIGS))
def test_round_trip_values(name, tmp_path):
    spec = ModelSpec(TINY, VALUE_CONFIGS[name])
    params = random_params(spec, seed=2)
    summary = export.export_packed(params, spec, tmp_path / "model.safetensors")
    assert_size_matches_accounting(summary)
    loaded, loaded_spec, _ = export.load_packed(summary.path, requantize=True)
    assert loaded_spec == spec
    assert_values_exact(spec, params, loaded)
    inference, inference_spec, _ = export.load_packed(summary.path)
    assert size.param_shapes(inference_spec) == {
        k: v.shape for k, v in hf_import.flatten(inference).items()}


@pytest.mark.parametrize("shared", [True, False])
def test_split_planes_load_summed_where_the_model_sums_them(tmp_path, shared):
    spec = ModelSpec(TINY, dataclasses.replace(SPLIT_118, split_shared_act=shared))
    params = random_params(spec, seed=3)
    path = export.export_packed(params, spec, tmp_path / "m.safetensors").path
    planes = hf_import.flatten(export.load_packed(path, requantize=True)[0])
    loaded, loaded_spec, _ = export.load_packed(path)
    summed = hf_import.flatten(loaded)
    assert loaded_spec.quant.split == (not shared)
    words, query = "embeddings/word_embeddings", "encoder/layer_0/attention/query/kernel"
    assert planes[words].shape == (2, 100, 32) and summed[words].shape == (100, 32)
    np.testing.assert_array_equal(summed[words], planes[words][0] + planes[words][1])
    if shared:  # one matmul with the summed kernel, as the source model computes it
        np.testing.assert_array_equal(summed[query], planes[query][0] + planes[query][1])
    else:       # each half keeps its own input quantizer, so its own plane
        np.testing.assert_array_equal(summed[query], planes[query])


def test_lat_uses_the_optimizer_diagonal_when_given(tmp_path):
    spec = ModelSpec(TINY, QuantConfig(2, 2, 32, "lat", "lat"))
    params = random_params(spec, seed=4)
    rng = np.random.default_rng(5)
    diag = hf_import.unflatten({t.path: rng.uniform(0, 1e-4, t.shape).astype(np.float32)
                                  for t in size.tensor_plan(spec)
                                  if t.kind == size.QUANTIZED and t.path.endswith("kernel")})
    path = export.export_packed(params, spec, tmp_path / "m.safetensors", lat_diag=diag).path
    loaded = export.load_packed(path, requantize=True)[0]
    assert_values_exact(spec, params, loaded, diag=diag)
    kernel = "encoder/layer_0/ffn/intermediate/kernel"
    plain = np.asarray(_values(hf_import.flatten(params)[kernel], "lat", 2, quant.LAYERWISE,
                               None))
    assert not np.array_equal(hf_import.flatten(loaded)[kernel], plain)


def test_binary_weights_with_exact_zeros_stay_one_bit(tmp_path):
    spec = ModelSpec(TINY, BWN_118)
    flat = hf_import.flatten(random_params(spec, seed=6))
    flat["embeddings/word_embeddings"][3, :5] = 0.0           # BWN maps these to 0
    flat["embeddings/word_embeddings"][4, :] = 0.0            # an all-zero row: scale 0
    flat["encoder/layer_0/attention/query/kernel"][0, 0] = -0.0
    params = hf_import.unflatten(flat)
    summary = export.export_packed(params, spec, tmp_path / "m.safetensors")
    entries = export.read_manifest(summary.path)["tensors"]
    assert entries["embeddings/word_embeddings"]["encoding"] == "binary"
    assert entries["embeddings/word_embeddings"]["zeros"] == 5
    assert entries["encoder/layer_0/attention/query/kernel"]["zeros"] == 1
    assert_size_matches_accounting(summary)
    assert_values_exact(spec, params, export.load_packed(summary.path, requantize=True)[0])


@pytest.mark.parametrize("bits", [1, 2, 3, 4, 7, 8, 9, 16])
def test_pack_codes_round_trip(bits):
    codes = np.random.default_rng(bits).integers(0, 2 ** bits, 1001)
    packed = export.pack_codes(codes, bits)
    assert packed.dtype == np.uint8 and packed.size == export.packed_nbytes(1001, bits)
    np.testing.assert_array_equal(export.unpack_codes(packed, bits, 1001), codes)


def test_bit_order_is_little_endian():
    # Code i's bit b is stream bit i·k + b; stream bit n is bit n % 8 of byte n // 8.
    assert export.pack_codes(np.array([1, 0, 0, 0, 0, 0, 0, 0, 1]), 1).tolist() == [1, 1]
    assert export.pack_codes(np.array([1, 2, 0, 3]), 2).tolist() == [0b11001001]


def test_export_refuses_params_that_do_not_fit(tmp_path):
    spec = ModelSpec(TINY, BWN_118)
    flat = hf_import.flatten(random_params(spec))
    flat["encoder/layer_0/ffn/output/kernel"] = np.zeros((3, 3), np.float32)
    del flat["pooler/dense/bias"]
    with pytest.raises(export.ExportError) as e:
        export.export_packed(hf_import.unflatten(flat), spec, tmp_path / "m.safetensors")
    msg = str(e.value)
    assert "pooler/dense/bias" in msg and "encoder/layer_0/ffn/output/kernel" in msg
    assert "expected (64, 32), got (3, 3)" in msg


def test_export_refuses_a_weight_that_is_not_finite(tmp_path):
    spec = ModelSpec(TINY, BWN_118)
    flat = hf_import.flatten(random_params(spec))
    flat["encoder/layer_1/attention/key/kernel"][2, 3] = np.nan
    with pytest.raises(export.ExportError, match="encoder/layer_1/attention/key/kernel: the "
                                                 "latent weight is not all finite"):
        export.export_packed(hf_import.unflatten(flat), spec, tmp_path / "m.safetensors")
    assert not (tmp_path / "m.safetensors").exists()


# --------------------------------------------------------------------------------------------
# Corrupt files.
# --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def good_file(tmp_path_factory):
    spec = ModelSpec(TINY, BWN_118)
    return export.export_packed(random_params(spec), spec,
                                tmp_path_factory.mktemp("packed") / "good.safetensors").path


def rewrite(src, dst, tensors_fn=None, manifest_fn=None):
    with safe_open(str(src), framework="numpy") as f:
        manifest = json.loads(f.metadata()[export.MANIFEST_KEY])
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    if tensors_fn:
        tensors_fn(tensors)
    if manifest_fn:
        manifest_fn(manifest)
    save_file(tensors, str(dst), metadata={export.MANIFEST_KEY: json.dumps(manifest)})
    return dst


def test_good_file_loads(good_file):
    params, spec, _ = export.load_packed(good_file)
    assert spec.config == TINY


@pytest.mark.parametrize("edit,message", [
    (dict(manifest_fn=lambda m: m.update(version=2)),
     "binarybert-jax/packed version 2 is not supported (this code reads version 1)"),
    (dict(manifest_fn=lambda m: m.update(format="something/else")),
     "format 'something/else' is not 'binarybert-jax/packed'"),
    (dict(tensors_fn=lambda t: t.pop("encoder/layer_1/attention/key/kernel:scales")),
     "missing tensors ['encoder/layer_1/attention/key/kernel:scales']"),
    (dict(tensors_fn=lambda t: t.update({"embeddings/LayerNorm/scale": np.ones(31, np.float32)})),
     "tensor 'embeddings/LayerNorm/scale': expected shape (32,) float32, got (31,) float32"),
    (dict(tensors_fn=lambda t: t.update({"pooler/dense/kernel:codes": np.zeros(5, np.uint8)})),
     "tensor 'pooler/dense/kernel:codes': expected shape (128,) uint8, got (5,) uint8"),
    (dict(tensors_fn=lambda t: t.update({"classifier/kernel": np.ones((32, 2), np.float64)})),
     "tensor 'classifier/kernel': expected shape (32, 2) float32, got (32, 2) float64"),
    (dict(tensors_fn=lambda t: t.update({"stray": np.ones(1, np.float32)})),
     "unexpected tensors ['stray']"),
    (dict(manifest_fn=lambda m: m["tensors"].pop("pooler/dense/bias")),
     "differing parameters: ['pooler/dense/bias']"),
    (dict(manifest_fn=lambda m: m["tensors"]["pooler/dense/kernel"].update(encoding="int99")),
     "manifest entry 'pooler/dense/kernel': unknown encoding 'int99'"),
])
def test_corrupt_files_are_refused_clearly(good_file, tmp_path, edit, message):
    bad = rewrite(good_file, tmp_path / "bad.safetensors", **edit)
    with pytest.raises(export.PackedFormatError) as e:
        export.load_packed(bad)
    assert message in str(e.value)


def _flip_one_bit(tensors, key="embeddings/LayerNorm/scale"):
    a = tensors[key].copy()
    a.view(np.uint8)[3] ^= 0x10
    tensors[key] = a


def test_a_flipped_byte_is_caught_by_its_checksum(good_file, tmp_path):
    bad = rewrite(good_file, tmp_path / "flipped.safetensors", tensors_fn=_flip_one_bit)
    with pytest.raises(export.PackedFormatError, match=r"the stored tensors of 'embeddings/LayerNorm/scale' "
                                                       r"do not match their checksum: the file is corrupt"):
        export.load_packed(bad)
    codes = rewrite(good_file, tmp_path / "codes.safetensors",
                    tensors_fn=lambda t: _flip_one_bit(t, "pooler/dense/kernel:codes"))
    with pytest.raises(export.PackedFormatError, match="of 'pooler/dense/kernel' do not match"):
        export.load_packed(codes)


def test_files_without_checksums_still_load(good_file, tmp_path, caplog):
    old = rewrite(good_file, tmp_path / "old.safetensors",
                  manifest_fn=lambda m: [e.pop("crc32") for e in m["tensors"].values()])
    with caplog.at_level("INFO", logger="binarybert_jax.export"):
        params, _, _ = export.load_packed(old)
    assert "load unverified" in caplog.text
    jax.tree_util.tree_map(np.testing.assert_array_equal, params, export.load_packed(good_file)[0])


def test_export_to_a_directory_is_refused_before_any_work(tmp_path):
    spec = ModelSpec(TINY, BWN_118)
    target = tmp_path / "outdir"
    target.mkdir()
    with pytest.raises(export.ExportError, match="outdir is a directory; give a file path"):
        export.export_packed(random_params(spec), spec, target)
    assert list(tmp_path.iterdir()) == [target] and not any(target.iterdir())


def test_not_a_packed_file(tmp_path):
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"definitely not safetensors")
    with pytest.raises(export.PackedFormatError, match="could not be read as safetensors"):
        export.load_packed(junk)
    plain = tmp_path / "plain.safetensors"
    save_file({"x": np.ones(2, np.float32)}, str(plain))
    with pytest.raises(export.PackedFormatError, match="not a binarybert-jax/packed file"):
        export.load_packed(plain)
    with pytest.raises(FileNotFoundError):
        export.load_packed(tmp_path / "absent.safetensors")


# --------------------------------------------------------------------------------------------
# The real MiniLM checkpoint.
# --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def minilm(minilm_dir):
    from binarybert_jax import tokenizer
    config, imported = hf_import.load_hf_checkpoint(minilm_dir)
    tok = tokenizer.load_tokenizer(minilm_dir)
    batch = tok(["The cat sat on the mat.", "Binary weights take one bit each on disk.",
                 "Is the quantized model as good as the full-precision one?"],
                padding=True, return_tensors="np")
    inputs = tuple(jnp.asarray(batch[k], jnp.int32)
                   for k in ("input_ids", "token_type_ids", "attention_mask"))
    return config, imported, inputs


def _minilm_params(spec, imported):
    """Merges the imported weights into the spec's layout; a split weight gets halves w/2, w/2."""
    target = {k: np.zeros(s, np.float32) for k, s in size.param_shapes(spec).items()}
    fitted = {}
    for k, v in imported.items():
        if k in target and target[k].shape == (2,) + v.shape:
            fitted[k] = np.stack([v / 2, v / 2])
        else:
            fitted[k] = v
    return hf_import.merge_pretrained(hf_import.unflatten(target), fitted, "MiniLM")


def test_minilm_packed(minilm, tmp_path):
    config, imported, inputs = minilm
    forward = jax.jit(lambda spec, p: spec.build().apply({"params": p}, *inputs)["logits"],
                      static_argnums=0)
    bwn = ModelSpec(config, BWN_118)
    split = ModelSpec(config, dataclasses.replace(BWN_118, split=True))
    source = forward(bwn, _minilm_params(bwn, imported))
    for spec, min_ratio in ((bwn, 20), (split, 25)):
        params = _minilm_params(spec, imported)
        summary = export.export_packed(params, spec, tmp_path / "minilm.safetensors")
        assert_size_matches_accounting(summary)
        # 1 bit a weight: ~23x smaller than the float32 parameters (~26x with two planes).
        assert summary.fp32_bytes / summary.file_bytes > min_ratio
        loaded, loaded_spec, _ = export.load_packed(summary.path)
        # Halves w/2, w/2 binarize to halves of BWN(w) exactly, and the loaded split model holds
        # their sum: the very model (and compiled forward) the unsplit export loads into.
        assert loaded_spec == export.inference_spec(bwn)
        np.testing.assert_allclose(forward(loaded_spec, loaded), source, rtol=0, atol=1e-5)


# --------------------------------------------------------------------------------------------
# Command lines.
# --------------------------------------------------------------------------------------------
def test_launch_export_and_size(tmp_path, capsys):
    from binarybert_jax import checkpoints
    spec = ModelSpec(TINY, SPLIT_118)
    ckpt = checkpoints.save_model(tmp_path / "ckpt", random_params(spec), spec, info={"stage": "tws"})
    out = tmp_path / "tws.safetensors"
    assert export_main.main(["--ckpt", str(ckpt), "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "file" in text and "float32 checkpoint directory on disk" in text
    assert export.read_manifest(out)["info"]["stage"] == "tws"
    assert size_main.main(["--packed", str(out), "--include-scales"]) == 0
    from_packed = capsys.readouterr().out
    assert size_main.main(["--ckpt", str(ckpt), "--include-scales"]) == 0
    assert capsys.readouterr().out == from_packed
