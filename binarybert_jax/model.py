"""A quantizable BERT in Flax Linen, with the outputs distillation needs.

What is quantized follows the papers and the released code: the word embedding; the Q, K, V,
attention-output, FFN and pooler weights and their inputs; Q and K before QKᵀ; the attention
probabilities and V before the weighted sum. Position and segment embeddings, LayerNorm, biases,
softmax, residuals and the task head stay full precision. Attention probabilities and the second
FFN input are quantized asymmetrically by default, everything else symmetrically.

BiBERT (1-1-1): ``act_method='sign'`` binarizes every one of those inputs to ±1 (no scale), and
``attention='bool'`` is Bi-Attention: A = sign(Q)·sign(K)ᵀ/√d + mask, weights Bool(A) (1 where
A > 0, so padding keys, which carry the additive mask, are never attended), context
Bool(A)·sign(V); no softmax. With ±1 inputs and binary weights a dense layer is computed as
(sign(x)·codes)·scales + bias (the integer-domain product below): the product of ±1 matrices is
an exact integer, so the bitwise inference path (``bitwise.py``: XNOR and popcount on packed
words) gets the same numbers.

Quantized products (dense layers, QKᵀ, probabilities·V) are computed on the integer codes of
their operands (``integer_dot.py``): exact integer sums in bfloat16 with float32 accumulation,
then the scales; where that cannot be exact, the float product of the quantized values. ``output_qkv`` returns Q, K and V before binarization (direction-matching distillation).

Parameter tree (Flax names; a *split* weight has a leading axis of 2, its two binary halves)::

    embeddings/{word_embeddings (V,H) | (2,V,H), position_embeddings (P,H),
                token_type_embeddings (T,H), LayerNorm/{scale,bias}}
    encoder/layer_<i>/attention/{query,key,value,output}/{kernel (in,out) | (2,in,out),
                                                         bias (out,) | (2,out), input_clip|input_step}
    encoder/layer_<i>/attention/{query_clip,key_clip,value_clip,probs_clip} (or *_step for LSQ)
    encoder/layer_<i>/attention/LayerNorm, encoder/layer_<i>/ffn/{intermediate,output}/..., ffn/LayerNorm
    pooler/dense/...,  classifier/{kernel,bias} or span/{kernel,bias}

A packed file run on its codes (``export.load_packed_codes``) holds each quantized weight in the
``weight_codes`` collection instead of ``params`` (``WEIGHT_CODES``: bit planes and scales, expanded
a layer at a time in the forward); the rest of the tree is as above.

Activation quantizer parameters are ``input_clip`` (a ``[lower, upper]`` pair, uniform) or
``input_step`` (a scalar, LSQ), named ``*_clip`` / ``*_step`` so the optimizer can find them.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from binarybert_jax import integer_dot, quant, weight_planes
from binarybert_jax.dropout import Dropout
from binarybert_jax.trees import flatten, unflatten

# The variable collection that holds LAT's diagonal (the optimizer's second moments) per kernel.
LAT_DIAG = "lat_diag"
CALIBRATION = "calibration"  # the collection the calibration pass sows into
# The collection of a packed model's quantized weights kept as codes (``export.load_packed_codes``):
# per weight ``<name>_planes`` (``weight_planes``' resident bit planes) and ``<name>_scale`` in
# place of the latent float32 parameter ``<name>``.
WEIGHT_CODES = "weight_codes"
# A split weight's mark in ``WEIGHT_CODES`` (``<name>_one_product``): its halves' scales are equal,
# so one product of their summed codes gives their two products' bits (``export.load_packed_codes``).
ONE_PRODUCT = "one_product"

# The released code's additive mask constant (Hugging Face uses the dtype's minimum instead).
MASK_VALUE = -10000.0
ACTIVATIONS = ("gelu", "gelu_tanh", "relu")
ATTENTIONS = ("softmax", "bool")


@dataclasses.dataclass(frozen=True)
class BertConfig:
    """Architecture. ``num_heads`` and ``intermediate_size`` are those actually present (after a
    width multiplier); ``head_dim`` is kept, so a half-width model has half the heads of its
    parent, each as wide as before, and the same hidden size."""

    vocab_size: int = 30522
    hidden_size: int = 768
    num_layers: int = 12
    num_heads: int = 12
    head_dim: int = 64
    intermediate_size: int = 3072
    max_position: int = 512
    type_vocab_size: int = 2
    hidden_act: str = "gelu"
    layer_norm_eps: float = 1e-12
    hidden_dropout: float = 0.1
    attention_dropout: float = 0.1
    pad_token_id: int = 0

    def __post_init__(self):
        if self.hidden_act not in ACTIVATIONS:
            raise ValueError(f"hidden_act {self.hidden_act!r} not supported; allowed: {ACTIVATIONS}")
        for field in ("vocab_size", "hidden_size", "num_layers", "num_heads", "head_dim",
                      "intermediate_size", "max_position", "type_vocab_size"):
            if getattr(self, field) <= 0:
                raise ValueError(f"BertConfig.{field} must be positive, got {getattr(self, field)}")

    @property
    def attention_size(self) -> int:
        """Width of Q, K, V (all heads together)."""
        return self.num_heads * self.head_dim

    def with_width(self, multiplier: float) -> "BertConfig":
        """The config of a width-``multiplier`` sub-network: heads and FFN neurons scaled."""
        if not 0 < multiplier <= 1:
            raise ValueError(f"width multiplier must be in (0, 1], got {multiplier}")
        heads = max(1, round(self.num_heads * multiplier))
        inter = max(1, round(self.intermediate_size * multiplier))
        return dataclasses.replace(self, num_heads=heads, intermediate_size=inter)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "BertConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown BertConfig keys {unknown}; known: {sorted(names)}")
        return cls(**d)


def wea_label(weight_bits: int, embed_bits: int, act_bits: int, *, letters: bool = False) -> str:
    """The bits of Transformer weights, word embedding and activations as the papers write them:
    ``1-1-8``, or ``W1-E1-A8`` with ``letters``."""
    if letters:
        return f"W{weight_bits}-E{embed_bits}-A{act_bits}"
    return f"{weight_bits}-{embed_bits}-{act_bits}"


# How training computes a split layer's forward (``QuantConfig.split_forward``).
SPLIT_FORWARDS = ("exact", "summed")


@dataclasses.dataclass(frozen=True)
class QuantConfig:
    """Quantization, "W-E-A" bits as the papers write them: Transformer weights, word embedding,
    activations. 32 bits means full precision.

    Attributes:
      weight_method / embed_method: ``twn`` | ``bwn`` | ``lat`` | ``uniform`` | ``bibert``
        (mean-centred sign, BiBERT).
      act_method: ``uniform`` (clip + dynamic range) | ``lsq`` (learned step size) | ``sign``
        (1 bit, ``act_bits=1``: ±1, no scale; the attention probabilities of a softmax model
        become Bool(p), 1 where p > 0).
      attention: ``softmax`` | ``bool`` (Bi-Attention, BiBERT; needs ``act_method='sign'``).
      weight_granularity / embed_granularity: ``layer`` (one scale per matrix) | ``row`` (one per
        output unit of a kernel, per token of the embedding).
      act_scope: ``tensor`` (released code: whole tensor, batch and padding included) | ``example`` |
        ``token``. ``act_ignore_padding`` leaves padding out of the ranges.
      act_axis_name: mapped axis (e.g. ``data``) over which dynamic ranges are reduced, so several
        devices agree; None keeps each device's own ranges (the released code's behaviour on DDP).
      clip_init: the uniform quantizers' clips start at ±clip_init (the released code: 2.5; a
        value no activation reaches, e.g. 1e4, leaves min-max ranges, TernaryBERT's choice).
      clip_percentile: 0 keeps ``clip_init``; p in (50, 100] starts every clip from the data
        instead, at the p-th percentile of the quantizer's input on the first training batch
        (``quant.percentile_clip``; calibrated as LSQ steps are, ``calibrate_act_quantizers``).
      sym_qkvo / sym_ffn_attn: symmetric quantization for Q/K/V/dense inputs, and for the attention
        probabilities and second FFN input (asymmetric by default).
      split: ternary-weight-split model: each quantized matrix (and the word embedding) holds two
        latent halves whose quantized sum is the weight; ``unsplit`` names matrices kept single
        (adaptive splitting), e.g. ``encoder/layer_0/ffn/output``.
      split_shared_act: both halves share one input quantizer, so the float path is one matmul with
        the summed quantized kernel (the integer path still multiplies each half's codes, as their
        scales differ). False gives each half its own quantizer, as the released code.
      split_forward: how training computes a split layer's integer-domain forward (both halves
        sharing their input quantizer): ``exact``, each half's integer product (exact sums, twice
        the FLOPs), or ``summed``, one product of the summed halves, as the released code runs
        (``integer_dot.summed_halves_operand``: the same bits while the halves' scales are equal,
        else within bfloat16 rounding of the small entries; the gradients are the same). What a
        model computes when it is evaluated, saved or exported is the exact forward
        (``ModelSpec.for_evaluation``).
    """

    weight_bits: int = 32
    embed_bits: int = 32
    act_bits: int = 32
    weight_method: str = "twn"
    embed_method: str = "twn"
    act_method: str = "uniform"
    weight_granularity: str = "layer"
    embed_granularity: str = "row"
    act_scope: str = "tensor"
    act_ignore_padding: bool = False
    act_axis_name: Optional[str] = None
    clip_init: float = 2.5
    clip_percentile: float = 0.0
    sym_qkvo: bool = True
    sym_ffn_attn: bool = False
    quantize_pooler: bool = True
    split: bool = False
    unsplit: tuple[str, ...] = ()
    split_shared_act: bool = True
    attention: str = "softmax"
    split_forward: str = "exact"

    def __post_init__(self):
        quant.check_weight_method(self.weight_method, self.weight_bits)
        quant.check_weight_method(self.embed_method, self.embed_bits)
        if self.act_method not in quant.ACT_METHODS:
            raise ValueError(f"act_method {self.act_method!r}; allowed: {quant.ACT_METHODS}")
        if self.act_method == "sign":
            if self.act_bits != 1:
                raise ValueError(f"act_method 'sign' is 1-bit: act_bits must be 1, got {self.act_bits}")
        elif not (2 <= self.act_bits <= 16 or self.act_bits == 32):
            raise ValueError(f"act_bits must be in 2..16 or 32 (1 with act_method 'sign'), got "
                             f"{self.act_bits}")
        if self.attention not in ATTENTIONS:
            raise ValueError(f"attention must be one of {ATTENTIONS}, got {self.attention!r}")
        if self.attention == "bool" and self.act_method != "sign":
            raise ValueError("attention 'bool' (Bi-Attention) binarizes Q, K and V: it needs "
                             f"act_method 'sign' and act_bits 1, got {self.act_method!r}")
        for field in ("weight_granularity", "embed_granularity"):
            if getattr(self, field) not in ("layer", "row"):
                raise ValueError(f"{field} must be 'layer' or 'row', got {getattr(self, field)!r}")
        if not (self.clip_percentile == 0 or 50 < self.clip_percentile <= 100):
            raise ValueError(f"clip_percentile must be 0 (clips start at ±clip_init) or in (50, 100], "
                             f"got {self.clip_percentile}")
        if self.split_forward not in SPLIT_FORWARDS:
            raise ValueError(f"split_forward must be one of {SPLIT_FORWARDS}, got {self.split_forward!r}")
        if self.act_scope not in ("tensor", "example", "token"):
            raise ValueError(f"act_scope must be tensor, example or token, got {self.act_scope!r}")
        object.__setattr__(self, "unsplit", tuple(self.unsplit))

    @property
    def quantizes_acts(self) -> bool:
        return self.act_bits < quant.FULL_PRECISION_BITS

    def wea(self, letters: bool = False) -> str:
        """This config's bits as ``wea_label`` writes them."""
        return wea_label(self.weight_bits, self.embed_bits, self.act_bits, letters=letters)

    @property
    def calibrates_acts(self) -> bool:
        """Whether the activation quantizers start from the data (``calibrate_act_quantizers``):
        LSQ steps, or uniform clips at ``clip_percentile``."""
        return self.quantizes_acts and (self.act_method == "lsq" or (
            self.act_method == "uniform" and self.clip_percentile > 0))

    def is_split(self, path: str) -> bool:
        return self.split and path not in self.unsplit

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["unsplit"] = list(self.unsplit)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "QuantConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown QuantConfig keys {unknown}; known: {sorted(names)}")
        return cls(**{k: tuple(v) if k == "unsplit" else v for k, v in d.items()})


FULL_PRECISION = QuantConfig()


def splittable_paths(config: BertConfig, pooler: bool = True) -> list[str]:
    """Paths of every matrix that is quantized (and so can be split), in model order."""
    paths = ["embeddings/word_embeddings"]
    for i in range(config.num_layers):
        paths += [f"encoder/layer_{i}/attention/{n}" for n in ("query", "key", "value", "output")]
        paths += [f"encoder/layer_{i}/ffn/{n}" for n in ("intermediate", "output")]
    if pooler:
        paths.append("pooler/dense")
    return paths


def _at_least_f32(dtype):
    """float32 for bfloat16/float16 compute (softmax, scores and logits stay float32), the compute
    dtype itself above it (a float64 reference forward stays float64 throughout)."""
    return jnp.promote_types(dtype, jnp.float32)


def resident_codes(module: nn.Module, name: str, n: int, bits: int, take=None):
    """A quantized weight held as codes in the ``WEIGHT_CODES`` collection, as
    ``quant.QuantizedCodes`` (codes expanded from their planes, bfloat16 where exact), or None
    where the module holds the latent weight ``name`` instead. ``take``: row indices of an
    embedding, gathered from the planes and the scales before expanding."""
    if not module.has_variable(WEIGHT_CODES, f"{name}_planes"):
        return None
    planes = module.get_variable(WEIGHT_CODES, f"{name}_planes")
    scale = module.get_variable(WEIGHT_CODES, f"{name}_scale")
    if take is not None:  # (*lead, V, ·) -> (*lead, *take.shape, ·)
        planes = jnp.take(planes, take, axis=-2)
        scale = (jnp.take(scale, take, axis=-2) if scale.shape[-2] > 1
                 else jnp.reshape(scale, scale.shape[:-2] + (1,) * (take.ndim + 1)))
    bound = quant.max_weight_code(bits)
    dtype = jnp.bfloat16 if bound <= integer_dot.BF16_EXACT_INTEGER else jnp.float32
    return quant.QuantizedCodes(weight_planes.expand(planes, n, dtype), scale, None, bound)


def activation(name: str):
    """The FFN's activation function of ``BertConfig.hidden_act`` (one of ``ACTIVATIONS``)."""
    if name == "gelu":
        return lambda x: jax.nn.gelu(x, approximate=False)
    if name == "gelu_tanh":
        return lambda x: jax.nn.gelu(x, approximate=True)
    return jax.nn.relu


class _ActQuantMixin:
    """Creates and applies one activation quantizer inside a compact method.

    Under a mutable ``act_clipping`` collection, a uniform quantizer also records how much of its
    input the clip cuts (``quant.clip_statistics``; ``analysis.activation_clipping`` reads them).
    Under a mutable ``calibration`` collection (the calibration pass), an LSQ quantizer sets its
    step from the data it sees (the released code's first-batch initialisation), a uniform one with
    ``clip_percentile`` its clip, quantizes with it, and records it there;
    ``calibrate_act_quantizers`` then writes those values into the parameters.
    """

    def act_quant(self, name: str, x, quant_cfg: QuantConfig, symmetric: bool, token_axes,
                  mask=None, stacked: int = 0, with_codes: bool = False):
        """The quantized values of ``x`` (a list of ``stacked`` of them for per-half quantizers);
        with ``with_codes``, ``(values, codes)`` pairs: codes (``quant.QuantizedCodes``) for the
        integer-domain products, None where nothing is quantized."""
        def out(pairs):  # one (values, codes) pair, or a list of ``stacked`` of them
            if with_codes:
                return pairs
            return [v for v, _ in pairs] if stacked else pairs[0]

        if not quant_cfg.quantizes_acts:
            return out([(x, None)] * stacked if stacked else (x, None))
        if quant_cfg.act_method == "sign":  # no parameter, no range
            codes = quant.act_quant_codes(x, None, "sign", 1, True) if with_codes else None
            pair = (quant.sign_act(x), codes)
            return out([pair] * stacked if stacked else pair)
        cfg = quant_cfg
        shape = (stacked,) if stacked else ()
        if cfg.act_method == "uniform":
            param = self.param(f"{name}_clip",
                               lambda _: jnp.tile(jnp.array([-cfg.clip_init, cfg.clip_init],
                                                            jnp.float32), shape + (1,)))
        else:
            param = self.param(f"{name}_step", lambda _: jnp.ones(shape, jnp.float32))
        axes = quant.scope_axes(cfg.act_scope, x.ndim, token_axes)
        real_tokens, mask = mask, (mask if cfg.act_ignore_padding else None)

        def apply(p):
            if (cfg.act_method == "uniform" and self.is_mutable_collection("act_clipping")
                    and not self.is_initializing()):
                # Diagnostics (analysis.activation_clipping): how much the clip cuts, real tokens
                # only; named as the clip parameter (a plain ``name`` can be a submodule's).
                self.sow("act_clipping", f"{name}_clip", quant.clip_statistics(x, p, real_tokens))
            if self.is_mutable_collection(CALIBRATION) and not self.is_initializing():
                if cfg.act_method == "lsq":
                    p = quant.lsq_init_step(x, cfg.act_bits, symmetric, mask, cfg.act_axis_name)
                    self.sow(CALIBRATION, f"{name}_step", p)
                elif cfg.clip_percentile:
                    p = quant.percentile_clip(x, cfg.clip_percentile, symmetric, real_tokens,
                                              cfg.act_axis_name)
                    self.sow(CALIBRATION, f"{name}_clip", p)
            values = quant.quantize_act(x, p, cfg.act_method, cfg.act_bits, symmetric, axes, mask,
                                        cfg.act_axis_name)
            codes = None
            if with_codes:
                codes = quant.act_quant_codes(x, p, cfg.act_method, cfg.act_bits, symmetric, axes,
                                              mask, cfg.act_axis_name)
            return values, codes

        return out([apply(param[i]) for i in range(stacked)] if stacked else apply(param))


class QuantDense(nn.Module, _ActQuantMixin):
    """A dense layer with quantized input and weight; optionally split into two binary halves.

    With ``integer_products`` the product of the quantized input and weight is computed on their
    integer codes (``integer_dot``: exact, in bfloat16 with float32 accumulation), the float32
    product of their values where that cannot be exact; ``grad_dtype`` is the dtype of its
    backward products."""

    features: int
    quant_cfg: QuantConfig
    quantized: bool = True
    split: bool = False
    input_symmetric: bool = True
    dtype: Any = jnp.float32
    integer_products: bool = True
    grad_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, mask=None, return_operands: bool = False):
        """``x·Ŵ + b`` for ``x`` ``(..., in)``; ``mask`` marks real tokens for the input's range
        statistics. ``return_operands``: instead of the output, ``(products, bias)`` with
        ``products`` a list of ``(x_values, x_codes, w_values, w_codes, groups)``, the operands of
        the quantized products whose sum plus ``bias`` is the output (for measurements)."""
        cfg = self.quant_cfg
        lead = (2,) if self.split else ()
        resident = (resident_codes(self, "kernel", self.features, cfg.weight_bits)
                    if self.quantized and cfg.weight_bits < quant.FULL_PRECISION_BITS else None)
        # The kernel is created before the bias: the order in which parameters draw their
        # initial values from the rng.
        kernel = None if resident is not None else self.param(
            "kernel", nn.initializers.normal(0.02), lead + (x.shape[-1], self.features), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, lead + (self.features,), jnp.float32)
        summed = cfg.split_forward == "summed"
        if resident is not None:
            # A packed model's weight, resident as codes: its values are scale·codes, the
            # quantizer's own product (the codes and scales the exporter stored).
            w_codes, w = resident, resident.values()
            integer = True
            summed = summed or self.has_variable(WEIGHT_CODES, f"kernel_{ONE_PRODUCT}")
        else:
            if not self.quantized:
                return jnp.dot(x.astype(self.dtype), kernel.astype(self.dtype)) + bias.astype(self.dtype)
            diag = self.get_variable(LAT_DIAG, "kernel") if self.has_variable(LAT_DIAG, "kernel") else None
            axes = quant.LAYERWISE if cfg.weight_granularity == "layer" else (-2,)
            w = quant.quantize_weight(kernel, cfg.weight_method, cfg.weight_bits, axes, diag)
            integer = ((self.integer_products or return_operands)
                       and cfg.weight_bits < quant.FULL_PRECISION_BITS)
            w_codes = (quant.weight_codes_for_product(kernel, cfg.weight_method, cfg.weight_bits, axes,
                                                      diag) if integer else None)
        token_axes = tuple(range(1, x.ndim - 1))
        dims = (((x.ndim - 1,), (0,)), ((), ()))

        def product(xq, x_codes, wq, wq_codes, groups=False):
            if return_operands:
                return [(xq, x_codes, wq, wq_codes, groups)]
            y = integer_dot.quantized_dot_general(
                xq.astype(self.dtype), x_codes if integer else None, wq.astype(self.dtype), wq_codes,
                dims, groups=groups, grad_dtype=self.grad_dtype,
                summed=summed)
            return y.astype(self.dtype)

        if self.split and not cfg.split_shared_act:
            xs = self.act_quant("input", x, cfg, self.input_symmetric, token_axes, mask, stacked=2,
                                with_codes=True)
            halves = [None, None] if w_codes is None else [
                quant.QuantizedCodes(w_codes.codes[i], w_codes.scale[i], None, w_codes.bound)
                for i in range(2)]
            parts = [product(xs[i][0], xs[i][1], w[i], halves[i]) for i in range(2)]
            if return_operands:
                return parts[0] + parts[1], jnp.sum(bias, 0)
            return sum(parts) + jnp.sum(bias, 0).astype(self.dtype)
        xq, x_codes = self.act_quant("input", x, cfg, self.input_symmetric, token_axes, mask,
                                     with_codes=True)
        if self.split:
            # Both halves see the same quantized input: x·Ŵ1 + x·Ŵ2 = x·(Ŵ1 + Ŵ2). The values'
            # product (the float path, and the gradient, which reaches both latent halves through
            # the sum) is one matmul with the summed kernel; the integer path multiplies each
            # half's codes (their scales differ) in one product of twice the width.
            w, bias, groups = w[0] + w[1], bias[0] + bias[1], True
        else:
            groups = False
        if return_operands:
            return product(xq, x_codes, w, w_codes, groups), bias
        return product(xq, x_codes, w, w_codes, groups) + bias.astype(self.dtype)


class Embeddings(nn.Module):
    config: BertConfig
    quant_cfg: QuantConfig
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, input_ids, token_type_ids, deterministic: bool):
        cfg, qcfg = self.config, self.quant_cfg
        split = qcfg.is_split("embeddings/word_embeddings") and qcfg.embed_bits < 32
        lead = (2,) if split else ()
        resident = (resident_codes(self, "word_embeddings", cfg.hidden_size, qcfg.embed_bits,
                                   take=input_ids) if qcfg.embed_bits < 32 else None)
        if resident is not None:  # a packed model's table, its gathered rows' codes
            words = resident.values()
        else:
            table = self.param("word_embeddings", nn.initializers.normal(0.02),
                               lead + (cfg.vocab_size, cfg.hidden_size), jnp.float32)
            if qcfg.embed_granularity == "row":
                # Row-wise scales depend on the row alone, so quantizing the gathered rows equals
                # gathering from the quantized table, at a fraction of the work.
                words = quant.quantize_weight(jnp.take(table, input_ids, axis=-2), qcfg.embed_method,
                                              qcfg.embed_bits, (-1,))
            else:
                words = jnp.take(quant.quantize_weight(table, qcfg.embed_method, qcfg.embed_bits,
                                                       quant.LAYERWISE), input_ids, axis=-2)
        if split:
            words = words[0] + words[1]
        positions = self.param("position_embeddings", nn.initializers.normal(0.02),
                               (cfg.max_position, cfg.hidden_size), jnp.float32)
        types = self.param("token_type_embeddings", nn.initializers.normal(0.02),
                           (cfg.type_vocab_size, cfg.hidden_size), jnp.float32)
        seq = input_ids.shape[-1]
        if seq > cfg.max_position:
            raise ValueError(f"sequence length {seq} exceeds max_position {cfg.max_position}")
        x = words + positions[None, :seq] + jnp.take(types, token_type_ids, axis=0)
        x = nn.LayerNorm(cfg.layer_norm_eps, dtype=self.dtype, name="LayerNorm")(x.astype(self.dtype))
        return Dropout(cfg.hidden_dropout)(x, deterministic=deterministic)


class SelfAttention(nn.Module, _ActQuantMixin):
    config: BertConfig
    quant_cfg: QuantConfig
    where: str
    dtype: Any = jnp.float32
    integer_products: bool = True
    grad_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, mask_bias, token_mask, deterministic: bool):
        """Returns ``(output, scores, probs, (q, k, v))``: Q, K, V ``(B, heads, T, d)`` as the dense
        layers give them, before any activation quantizer (unused outputs cost nothing under jit)."""
        cfg, qcfg = self.config, self.quant_cfg
        batch, seq = x.shape[:2]
        tok = token_mask[:, :, None] if token_mask is not None else None

        def dense(name, features, sym=True):
            return QuantDense(features, qcfg, split=qcfg.is_split(f"{self.where}/{name}"),
                              input_symmetric=sym, dtype=self.dtype,
                              integer_products=self.integer_products, grad_dtype=self.grad_dtype,
                              name=name)

        def product(a, b, dims):  # (values, codes) pairs; integer-domain where exact
            codes = (a[1], b[1]) if self.integer_products else (None, None)
            return integer_dot.quantized_dot_general(a[0], codes[0], b[0], codes[1], dims,
                                                     grad_dtype=self.grad_dtype)

        def heads(t):  # (B, T, H·d) -> (B, H, T, d)
            return t.reshape(batch, seq, cfg.num_heads, cfg.head_dim).transpose(0, 2, 1, 3)

        q_fp = heads(dense("query", cfg.attention_size)(x, tok))
        k_fp = heads(dense("key", cfg.attention_size)(x, tok))
        v_fp = heads(dense("value", cfg.attention_size)(x, tok))
        head_tok = token_mask[:, None, :, None] if token_mask is not None else None
        q = self.act_quant("query", q_fp, qcfg, qcfg.sym_qkvo, (2,), head_tok, with_codes=True)
        k = self.act_quant("key", k_fp, qcfg, qcfg.sym_qkvo, (2,), head_tok, with_codes=True)
        # QKᵀ: "bhqd,bhkd->bhqk".
        with jax.named_scope("attention_scores"):  # a name the step profile looks for
            scores = product(q, k, (((3,), (3,)), ((0, 1), (0, 1)))).astype(self.dtype)
        scores = scores / math.sqrt(cfg.head_dim)
        if qcfg.attention == "bool":
            # Bi-Attention: no softmax. Dropout acts on the scores before Bool, as in the
            # released code (a dropped score is 0, hence not attended).
            scores = scores.astype(_at_least_f32(self.dtype)) + mask_bias
            dropped = Dropout(cfg.attention_dropout)(scores, deterministic=deterministic)
            probs = (quant.bool_act(dropped).astype(self.dtype), quant.bool_codes(dropped))
        else:
            with jax.named_scope("softmax"):
                scores = scores.astype(_at_least_f32(self.dtype)) + mask_bias
                probs = jax.nn.softmax(scores, axis=-1).astype(self.dtype)
            probs = Dropout(cfg.attention_dropout)(probs, deterministic=deterministic)
            pair_mask = None
            if token_mask is not None:
                pair_mask = token_mask[:, None, :, None] & token_mask[:, None, None, :]
            if qcfg.quantizes_acts and qcfg.act_method == "sign":
                # One bit of a non-negative tensor: Bool(p). Masked keys' probabilities
                # underflow to exactly 0 and stay unattended.
                probs = (quant.bool_act(probs), quant.bool_codes(probs))
            else:
                probs = self.act_quant("probs", probs, qcfg, qcfg.sym_ffn_attn, (2,), pair_mask,
                                       with_codes=True)
        v = self.act_quant("value", v_fp, qcfg, qcfg.sym_qkvo, (2,), head_tok, with_codes=True)
        # probs·V: "bhqk,bhkd->bhqd", then heads back beside each other.
        with jax.named_scope("attention_context"):
            context = product(probs, v, (((3,), (2,)), ((0, 1), (0, 1)))).astype(self.dtype)
        context = context.transpose(0, 2, 1, 3).reshape(batch, seq, cfg.attention_size)
        out = dense("output", cfg.hidden_size)(context, tok)
        out = Dropout(cfg.hidden_dropout)(out, deterministic=deterministic)
        out = nn.LayerNorm(cfg.layer_norm_eps, dtype=self.dtype, name="LayerNorm")(out + x)
        return out, scores, probs[0], (q_fp, k_fp, v_fp)


class FeedForward(nn.Module):
    config: BertConfig
    quant_cfg: QuantConfig
    where: str
    dtype: Any = jnp.float32
    integer_products: bool = True
    grad_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, token_mask, deterministic: bool):
        cfg, qcfg = self.config, self.quant_cfg
        tok = token_mask[:, :, None] if token_mask is not None else None
        products = dict(integer_products=self.integer_products, grad_dtype=self.grad_dtype)
        h = QuantDense(cfg.intermediate_size, qcfg, split=qcfg.is_split(f"{self.where}/intermediate"),
                       input_symmetric=qcfg.sym_qkvo, dtype=self.dtype, name="intermediate",
                       **products)(x, tok)
        h = activation(cfg.hidden_act)(h)
        out = QuantDense(cfg.hidden_size, qcfg, split=qcfg.is_split(f"{self.where}/output"),
                         input_symmetric=qcfg.sym_ffn_attn, dtype=self.dtype, name="output",
                         **products)(h, tok)
        out = Dropout(cfg.hidden_dropout)(out, deterministic=deterministic)
        return nn.LayerNorm(cfg.layer_norm_eps, dtype=self.dtype, name="LayerNorm")(out + x)


class Layer(nn.Module):
    config: BertConfig
    quant_cfg: QuantConfig
    where: str
    dtype: Any = jnp.float32
    integer_products: bool = True
    grad_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, mask_bias, token_mask, deterministic: bool):
        products = dict(integer_products=self.integer_products, grad_dtype=self.grad_dtype)
        x, scores, probs, qkv = SelfAttention(self.config, self.quant_cfg, f"{self.where}/attention",
                                              self.dtype, name="attention", **products)(
            x, mask_bias, token_mask, deterministic)
        x = FeedForward(self.config, self.quant_cfg, f"{self.where}/ffn", self.dtype, name="ffn",
                        **products)(x, token_mask, deterministic)
        return x, scores, probs, qkv


class BertModel(nn.Module):
    """The quantizable BERT encoder with pooler and a task head.

    ``head``: ``classification`` (``num_labels`` logits from the pooled [CLS]; 1 label = regression),
    ``span`` (start/end logits per token, SQuAD-style) or ``none``.
    """

    config: BertConfig
    quant_cfg: QuantConfig = FULL_PRECISION
    head: str = "classification"
    num_labels: int = 2
    dtype: Any = jnp.float32
    mask_value: float = MASK_VALUE
    integer_products: bool = True
    grad_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, input_ids, token_type_ids=None, attention_mask=None, *,
                 deterministic: bool = True, output_attention_probs: bool = False,
                 output_qkv: bool = False):
        """Runs the model.

        Args:
          input_ids, token_type_ids, attention_mask: int arrays ``(B, T)``; mask 1 for real tokens.
          deterministic: False enables dropout (needs a ``dropout`` rng).
          output_attention_probs: also return post-softmax attention probabilities (Bool(A) under
            Bi-Attention).
          output_qkv: also return ``qkv``: per layer ``(q, k, v)``, each ``(B, heads, T, d)``,
            the dense outputs before activation quantization (direction-matching distillation).
        Returns:
          dict with ``hidden_states`` (tuple of L+1 ``(B, T, H)``: embedding output then each layer),
          ``attention_scores`` (tuple of L ``(B, heads, T, T)`` pre-softmax scores, mask added,
          float32), ``pooled`` ``(B, H)``, ``logits`` (``(B, num_labels)`` or ``(B, T, 2)``), and
          ``attention_probs`` and ``qkv`` when asked.
        """
        cfg, qcfg = self.config, self.quant_cfg
        if token_type_ids is None:
            token_type_ids = jnp.zeros_like(input_ids)
        if attention_mask is None:
            attention_mask = jnp.ones_like(input_ids)
        token_mask = attention_mask.astype(bool)
        mask_bias = jnp.where(token_mask, 0.0, self.mask_value).astype(jnp.float32)[:, None, None, :]

        x = Embeddings(cfg, qcfg, self.dtype, name="embeddings")(input_ids, token_type_ids, deterministic)
        hidden, scores, probs, qkv = Encoder(cfg, qcfg, self.dtype, self.integer_products,
                                             self.grad_dtype, name="encoder")(
            x, mask_bias, token_mask, deterministic)
        pooled = Pooler(cfg, qcfg, self.dtype, self.integer_products, self.grad_dtype,
                        name="pooler")(hidden[-1])
        outputs = {"hidden_states": hidden, "attention_scores": scores, "pooled": pooled}
        if output_attention_probs:
            outputs["attention_probs"] = probs
        if output_qkv:
            outputs["qkv"] = qkv
        if self.head == "classification":
            h = Dropout(cfg.hidden_dropout)(pooled, deterministic=deterministic)
            outputs["logits"] = nn.Dense(self.num_labels, dtype=_at_least_f32(self.dtype), name="classifier",
                                         kernel_init=nn.initializers.normal(0.02))(h)
        elif self.head == "span":
            outputs["logits"] = nn.Dense(2, dtype=_at_least_f32(self.dtype), name="span",
                                         kernel_init=nn.initializers.normal(0.02))(hidden[-1])
        elif self.head != "none":
            raise ValueError(f"unknown head {self.head!r}; allowed: classification, span, none")
        return outputs


class Encoder(nn.Module):
    config: BertConfig
    quant_cfg: QuantConfig
    dtype: Any = jnp.float32
    integer_products: bool = True
    grad_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, mask_bias, token_mask, deterministic: bool):
        hidden, scores, probs, qkv = [x], [], [], []
        for i in range(self.config.num_layers):
            x, s, p, t = Layer(self.config, self.quant_cfg, f"encoder/layer_{i}", self.dtype,
                               self.integer_products, self.grad_dtype, name=f"layer_{i}")(
                x, mask_bias, token_mask, deterministic)
            hidden.append(x)
            scores.append(s)
            probs.append(p)
            qkv.append(t)
        return tuple(hidden), tuple(scores), tuple(probs), tuple(qkv)


class Pooler(nn.Module):
    """tanh(dense([CLS])), the dense layer quantized like the encoder's (released code)."""

    config: BertConfig
    quant_cfg: QuantConfig
    dtype: Any = jnp.float32
    integer_products: bool = True
    grad_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, sequence):
        qcfg = self.quant_cfg
        dense = QuantDense(self.config.hidden_size, qcfg, quantized=qcfg.quantize_pooler,
                           split=qcfg.quantize_pooler and qcfg.is_split("pooler/dense"),
                           input_symmetric=qcfg.sym_qkvo, dtype=self.dtype, name="dense",
                           integer_products=self.integer_products, grad_dtype=self.grad_dtype)
        return jnp.tanh(dense(sequence[:, 0]))


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """Everything needed to rebuild a model from its parameters: stored beside every checkpoint."""

    config: BertConfig
    quant: QuantConfig = FULL_PRECISION
    head: str = "classification"
    num_labels: int = 2

    def build(self, dtype: Any = jnp.float32, integer_products: bool = True,
              grad_dtype: Any = jnp.float32) -> BertModel:
        """The model in compute ``dtype``; ``integer_products``: quantized products on integer
        codes (``integer_dot``), exact where possible, else the float product of the values;
        ``grad_dtype``: the dtype of those products' backward pass."""
        return BertModel(self.config, self.quant, self.head, self.num_labels, dtype=dtype,
                         integer_products=integer_products, grad_dtype=grad_dtype)

    def for_evaluation(self) -> "ModelSpec":
        """The same model with the exact forward of its split layers (``QuantConfig.split_forward``):
        what evaluation computes and checkpoints record, so that scores and exported models never
        depend on how training computed its forward."""
        if self.quant.split_forward == "exact":
            return self
        return dataclasses.replace(self, quant=dataclasses.replace(self.quant, split_forward="exact"))

    def without_axis(self) -> "ModelSpec":
        """The same model with ranges computed locally: for initialisation and calibration on the
        host's whole batch, outside the sharded step (parameters are identical)."""
        return dataclasses.replace(self, quant=dataclasses.replace(self.quant, act_axis_name=None))

    def to_dict(self) -> dict:
        return {"config": self.config.to_dict(), "quant": self.quant.to_dict(), "head": self.head,
                "num_labels": self.num_labels}

    @classmethod
    def from_dict(cls, d: dict) -> "ModelSpec":
        return cls(BertConfig.from_dict(d["config"]), QuantConfig.from_dict(d["quant"]),
                   d.get("head", "classification"), int(d.get("num_labels", 2)))


def uses_lat_diag(quant_cfg: QuantConfig) -> bool:
    """Whether the model reads a ``lat_diag`` collection: LAT-quantized Transformer weights (the
    word embedding's LAT, like the released code's, quantizes with the identity)."""
    return quant_cfg.weight_method == "lat" and quant_cfg.weight_bits < quant.FULL_PRECISION_BITS


def lat_diag_from_moments(moments: Optional[dict]) -> Optional[dict]:
    """The model's ``lat_diag`` collection from the optimizer's second moments (a tree like the
    parameters, ``optim.second_moments``): the ``kernel`` entries, the only ones ``QuantDense``
    reads. Saved with a checkpoint and handed to the exporter, so that nothing else (an embedding's
    moments, say) can be taken for a diagonal the trained forward never used."""
    if moments is None:
        return None
    kept = {k: v for k, v in flatten(moments).items() if k.rsplit("/", 1)[-1] == "kernel"}
    return unflatten(kept) if kept else None


def model_variables(params, lat_diag: Optional[dict] = None,
                    weight_codes: Optional[dict] = None) -> dict:
    """The variables ``BertModel.apply`` takes: ``params``, plus LAT's diagonal when there is one,
    plus a packed model's weights held as codes (``WEIGHT_CODES``) when there are some."""
    out = {"params": params}
    if lat_diag is not None:
        out[LAT_DIAG] = lat_diag
    if weight_codes is not None:
        out[WEIGHT_CODES] = weight_codes
    return out


def calibrate_act_quantizers(model: BertModel, params, input_ids, token_type_ids=None,
                             attention_mask=None):
    """Initialises the activation quantizers that start from the data (``QuantConfig.
    calibrates_acts``) on one batch, as the released code does on its first forward pass: LSQ
    steps at 2·mean|x|/√Qp (symmetric) or 4·mean|x|/√Qp (asymmetric), uniform clips at the
    ``clip_percentile``-th percentile (``quant.percentile_clip``); each quantizer sees inputs
    already quantized with the values initialised before it.

    Returns:
      ``params`` with each such ``*_step`` / ``*_clip`` replaced; unchanged when there is none.
    """
    if not model.quant_cfg.calibrates_acts:
        return params
    # Jitted: one compilation instead of the whole forward dispatched op by op.
    _, state = jax.jit(lambda p, *inputs: model.apply({"params": p}, *inputs, mutable=[CALIBRATION]))(
        params, input_ids, token_type_ids, attention_mask)
    sown = state[CALIBRATION]

    def merge(p, s):
        out = dict(p)
        for k, v in s.items():
            if isinstance(v, tuple):  # sow keeps a tuple of the values recorded: one per half
                out[k] = jnp.reshape(jnp.stack(v), jnp.shape(p[k])).astype(jnp.float32)
            else:
                out[k] = merge(p[k], v)
        return out

    return merge(params, sown)
