"""Packed files run on integer codes: the same logits as the checkpoint forward for every bit width,
weights resident as bit planes (at most a quarter of float32's bytes), and the float32 path kept
behind ``compute="float"``."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from binarybert_jax import evaluate, export, inference, weight_planes
from binarybert_jax.model import BertConfig, ModelSpec, QuantConfig
from test_export import random_params

TINY = BertConfig(vocab_size=100, hidden_size=32, num_layers=2, num_heads=2, head_dim=16,
                  intermediate_size=64, max_position=16)
BIT_WIDTHS = {
    "bwn-1-1-8": QuantConfig(1, 1, 8, "bwn", "bwn"),
    "twn-2-2-8": QuantConfig(2, 2, 8, "twn", "twn"),
    "bwn-1-1-4": QuantConfig(1, 1, 4, "bwn", "bwn"),
    "tws-1-1-8": QuantConfig(weight_bits=1, embed_bits=1, weight_method="bwn", embed_method="bwn",
                             split=True, act_bits=8),
    "tws-own-act-1-1-8": QuantConfig(weight_bits=1, embed_bits=1, weight_method="bwn",
                                     embed_method="bwn", split=True, split_shared_act=False,
                                     act_bits=8),
}
# The largest difference allowed between the logits on codes and the checkpoint forward's. The
# integer products are the same exact integers in both; what may differ is a scale the checkpoint
# computes inside its compiled forward, a float32 mean whose sum XLA may order otherwise there
# than the exporter's (at the time of writing: 1-1-8's row-wise embedding scales, logits 2e-9
# apart; the other configurations bitwise).
LOGIT_BOUND = 1e-6


@pytest.fixture(scope="module")
def batch():
    rng = np.random.default_rng(1)
    ids = rng.integers(0, TINY.vocab_size, (3, 10)).astype(np.int32)
    types = np.zeros_like(ids)
    types[:, 6:] = 1
    mask = np.ones_like(ids)
    mask[0, 7:] = 0
    return {"input_ids": ids, "token_type_ids": types, "attention_mask": mask}


def _saved(name, tmp_path):
    spec = ModelSpec(TINY, BIT_WIDTHS[name])
    params = random_params(spec)
    path = export.export_packed(params, spec, tmp_path / f"{name}.safetensors").path
    return spec, params, path


@pytest.mark.parametrize("name", sorted(BIT_WIDTHS))
def test_codes_give_the_checkpoint_forwards_logits(name, tmp_path, batch):
    spec, params, path = _saved(name, tmp_path)
    predictor = inference.Predictor.load(path)
    assert (predictor.kind, predictor.compute, predictor.spec) == ("packed", "integer", spec)
    # No float32 copy of any quantized weight: only its planes and scales are resident.
    assert predictor.weight_codes is not None
    codes = export.hf_import.flatten(predictor.weight_codes)
    assert all(v.dtype == np.uint8 for k, v in codes.items() if k.endswith("_planes"))
    assert "embeddings/word_embeddings" not in export.hf_import.flatten(predictor.params)

    on_codes = np.asarray(predictor.logits(batch))
    checkpoint = np.asarray(evaluate.forward_fn(spec)(params, batch)["logits"])
    assert np.max(np.abs(on_codes - checkpoint)) <= LOGIT_BOUND
    np.testing.assert_array_equal(on_codes.argmax(-1), checkpoint.argmax(-1))
    # The float32 path (weights unpacked to their values) stays available and agrees too.
    on_floats = inference.load_predictor(path, compute="float")
    assert on_floats.compute == "float" and on_floats.weight_codes is None
    assert on_floats.spec.quant.weight_bits == 32
    np.testing.assert_allclose(np.asarray(on_floats.logits(batch)), checkpoint, rtol=0, atol=1e-5)


@pytest.mark.parametrize("name", ["bwn-1-1-8", "twn-2-2-8"])
def test_resident_parameters_are_a_quarter_of_float32_at_most(name, tmp_path):
    _, _, path = _saved(name, tmp_path)
    on_codes = inference.load_predictor(path)
    on_floats = inference.load_predictor(path, compute="float")
    float32_bytes = on_floats.resident_bytes  # every parameter float32, split planes summed
    assert on_codes.resident_bytes <= float32_bytes / 4, (on_codes.resident_bytes, float32_bytes)


def _dot_operand_types(predictor, batch):
    text = jax.jit(lambda b: predictor.logits(b)).lower(batch).as_text()
    return re.findall(r"stablehlo\.dot_general[^\n]*:\s*\(tensor<[^>]*x(\w+)>", text)


def test_float_path_multiplies_in_float32_where_codes_multiply_in_bfloat16(tmp_path, batch):
    """Why the float path is slower than the checkpoint forward: every product of its unpacked
    float32 weights (the dense layers: 6 a layer, and the pooler) is a float32 one, where the
    checkpoint forward, and the default path on codes, multiplies integer codes in bfloat16 with
    float32 accumulation, at the bfloat16 rate. QKᵀ and probabilities·V are on activation codes
    in both; only the task head's product is float32 on codes."""
    _, _, path = _saved("bwn-1-1-8", tmp_path)
    on_codes = _dot_operand_types(inference.load_predictor(path), batch)
    on_floats = _dot_operand_types(inference.load_predictor(path, compute="float"), batch)
    dense = 6 * TINY.num_layers + 1
    assert len(on_codes) == len(on_floats) == dense + 2 * TINY.num_layers + 1
    assert on_floats.count("f32") == dense + 1
    assert on_codes.count("f32") == 1


@pytest.mark.parametrize("planes", [1, 2, 3, 4, 8])
def test_planes_round_trip(planes):
    rng = np.random.default_rng(planes)
    top = weight_planes.code_offset(planes)
    codes = (rng.choice([-1, 1], (2, 5, 13)) if planes == 1
             else rng.integers(-top, top + 1, (2, 5, 13)))
    packed = weight_planes.to_planes(codes, planes)
    assert packed.shape == (planes, 2, 5, 2) and packed.dtype == np.uint8
    np.testing.assert_array_equal(np.asarray(weight_planes.expand(jnp.asarray(packed), 13)), codes)


def test_planes_refuse_codes_they_cannot_hold():
    with pytest.raises(ValueError, match="one plane"):
        weight_planes.to_planes(np.array([-1, 0, 1]), 1)
    with pytest.raises(ValueError, match="do not fit 2 planes"):
        weight_planes.to_planes(np.array([-2, 1]), 2)
    assert weight_planes.planes_for(np.array([-1, 0, 1]), 1) == 2


def test_unknown_compute_is_refused(tmp_path):
    with pytest.raises(ValueError, match="compute 'fast'; allowed: integer, float"):
        inference.load_predictor(tmp_path / "x.safetensors", compute="fast")


def test_levels_that_are_not_integer_codes_run_on_floats(tmp_path, batch, caplog):
    """A file whose level table is not the quantizer's integer codes (LAT files written before the
    codes came from ``quant``) cannot run on codes: the default falls back to the float path,
    saying so. Here one weight's levels are halved and its scales doubled: the same values."""
    from test_export import rewrite

    _, _, path = _saved("twn-2-2-8", tmp_path)
    name = "encoder/layer_0/attention/query/kernel"

    def halve_levels(tensors):
        tensors[f"{name}:levels"] = tensors[f"{name}:levels"] * np.float32(0.5)
        tensors[f"{name}:scales"] = tensors[f"{name}:scales"] * np.float32(2)

    def drop_checksum(manifest):  # the bytes changed; such a file loads unverified
        del manifest["tensors"][name]["crc32"]

    old = rewrite(path, tmp_path / "old.safetensors", halve_levels, drop_checksum)
    with pytest.raises(export.NotOnCodes, match="not integer codes"):
        export.load_packed_codes(old)
    with caplog.at_level("WARNING"):
        predictor = inference.load_predictor(old)
    assert predictor.compute == "float" and "compute='float'" in caplog.text
    want = inference.load_predictor(path, compute="float").logits(batch)
    np.testing.assert_array_equal(np.asarray(predictor.logits(batch)), np.asarray(want))


def test_split_halves_with_equal_scales_run_as_one_product_with_the_same_bits(tmp_path, batch):
    """A model just split from a ternary one (its halves' scales equal) runs each split layer as
    one product of the summed codes, bitwise the checkpoint's two-product forward; halves whose
    scales differ (random latent halves) keep the two products."""
    from binarybert_jax import tws
    twn = ModelSpec(TINY, BIT_WIDTHS["twn-2-2-8"])
    params, spec = tws.split_params(random_params(twn), twn)
    path = export.export_packed(params, spec, tmp_path / "split.safetensors").path
    predictor = inference.load_predictor(path)
    assert predictor.spec == spec
    codes = export.hf_import.flatten(predictor.weight_codes)
    marked = {k.removesuffix("_one_product") for k in codes if k.endswith("_one_product")}
    # Exactly the split dense weights whose halves' scales are equal (splitting halves a weight
    # and its scale, which rounds in some of them).
    equal = {k.removesuffix("_scale") for k, v in codes.items() if k.endswith("_scale")
             and not k.startswith("embeddings") and np.array_equal(v[0], v[1])}
    assert marked == equal and len(marked) >= 2 * TINY.num_layers
    checkpoint = np.asarray(evaluate.forward_fn(spec)(params, batch)["logits"])
    np.testing.assert_array_equal(np.asarray(predictor.logits(batch)), checkpoint)

    # One product of the summed codes per marked layer: fewer operations than the halves' two.
    def flops(codes):
        args = (predictor.params, batch, None, codes)
        return predictor._apply.lower(*args).compile().cost_analysis()["flops"]

    unmarked = {k: v for k, v in export.hf_import.flatten(predictor.weight_codes).items()
                if not k.endswith("_one_product")}
    assert flops(predictor.weight_codes) < flops(export.hf_import.unflatten(unmarked))

    _, _, apart = _saved("tws-1-1-8", tmp_path)  # random latent halves: scales apart
    assert not any(k.endswith("_one_product") for k in
                   export.hf_import.flatten(inference.load_predictor(apart).weight_codes))
