"""Bitwise inference of a fully binarized (W1-E1-A1, Bi-Attention) model, from its packed file.

A BiBERT model multiplies ±1 activations by ±1 weights everywhere except in LayerNorm, the
residual additions, GELU, tanh and the classifier. Here those products run on bits: inside one
jitted forward, every binarized activation is packed into 32-bit words along the reduction axis,
and a product of K-long ±1 vectors is K − 2·popcount(xor(x, w)) (``lax.population_count``), an
exact int32, then scaled once per output unit, as ``model.QuantDense`` computes it in float32:
(sign(x)·codes)·scales + bias, whose integer part float32 holds exactly whatever the summation
order. Bi-Attention is bit products too: sign(Q)·sign(K)ᵀ is the same XNOR-popcount (one word per
row for a head of 32), Bool(A) is ``score > 0`` on real keys, and Bool(A)·sign(V) is
2·popcount(a AND v) − popcount(a) over the packed attention row ``a``.

Nothing is unpacked to float but the gathered rows of the word embedding (scale·(±1), the model's
own product). Weights stay resident as words: ``(K/32, N)`` uint32 per matrix, the
transposed-packed layout that ``load_bitwise`` builds from the file's 1-bit planes once.

Word layout (``pack_signs``, ``pack_weight_codes``): bit ``i`` of word ``j`` holds element
``32·j + i`` of a row; a length that is not a multiple of 32 is padded with 0 bits on both sides,
which xor to 0 and count nothing. Activations and weights share the layout, so the XNOR pairs the
same elements.

Speed on XLA:CPU is about where XLA puts fusion boundaries (it drops optimization barriers). A
product (``binary_matmul``) is one loop fusion: Σ over the K/32 words of popcount(x[:, j] ^
w[j, :]) unrolled, each term one activation word broadcast against a contiguous row of weight
words, so the inner loop runs over output units with AVX-512 ``vpopcntd`` and the accumulator
stays in registers. The packing between products keeps them out of each other's loops
(``pack_signs``). GELU's output only feeds a sign, so its erf is never computed: its sign comes
from two bounds read off the backend's own GELU (``gelu_sign_bounds``). ``benchmarks/bitwise.py``
measures products and model against float32.

Exactness: every integer is exact, and the float operations are the model's own, in its order
(the same Flax LayerNorm and Dense, scale then bias; GELU's sign exactly as the model's ``activation('gelu') >= 0``
gives it, every negative float32 checked in the tests). The logits therefore equal
the simulated float forward's, with one place where float order could differ: the reductions
inside LayerNorm (mean and variance over the hidden size), which XLA compiles separately in the
two programs and could in principle sum in another order (the tests find them equal on MiniLM).
The scales are the exporter's, computed by the same jitted ``quant.weight_quant_codes``.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import pathlib
from typing import Any, Mapping, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from binarybert_jax import export
from binarybert_jax.model import ModelSpec, activation

WORD_BITS = 32
DENSE = ("query", "key", "value", "output")


class NotBitwise(ValueError):
    """A model the bitwise path cannot run; the message says why."""


def bitwise_refusal(spec: ModelSpec, manifest: Optional[Mapping] = None) -> Optional[str]:
    """Why ``spec`` (and its packed file's ``manifest``) cannot run bitwise, or None when it can.

    Bitwise needs 1-bit weights, word embedding and pooler, sign activations, Bi-Attention, no
    split planes, a classification head, and no binary weight stored as an exact 0 (one bit holds
    ±1; BiBERT's sign(w − mean) is 0 only where a weight equals its row's mean exactly).
    """
    q = spec.quant
    needs = []
    if (q.weight_bits, q.embed_bits, q.act_bits) != (1, 1, 1):
        needs.append(f"W-E-A 1-1-1 (this is {q.wea()})")
    if q.act_method != "sign":
        needs.append(f"sign activations (act_method is {q.act_method!r})")
    if q.attention != "bool":
        needs.append(f"Bi-Attention (attention is {q.attention!r})")
    if q.split:
        needs.append("unsplit weights")
    if not q.quantize_pooler:
        needs.append("a binarized pooler")
    if spec.head != "classification":
        needs.append(f"a classification head (this has {spec.head!r})")
    if manifest is not None:
        zeros = sorted(k for k, e in manifest.get("tensors", {}).items() if e.get("zeros", 0))
        if zeros:
            needs.append(f"no exact-zero binary weights (found in {zeros})")
    return "bitwise inference needs " + "; ".join(needs) if needs else None


# --------------------------------------------------------------------------------------------
# Bit packing and bit products (pure, jittable).
# --------------------------------------------------------------------------------------------
def num_words(k: int) -> int:
    return -(-k // WORD_BITS)


def pack_signs(positive: jax.Array) -> jax.Array:
    """Packs a boolean array along its last axis into uint32 words (layout: module docstring).

    Args:
      positive: bool ``(..., K)``, True for +1 (or for 1 of a {0, 1} tensor).
    Returns:
      uint32 ``(..., ceil(K/32))``.

    The packing is a reduction (the bits are distinct: their sum is their OR). XLA:CPU fuses the
    comparison that makes the bits, and whatever cheap elementwise work produced them (a scaled
    binary product plus bias, a popcount), into it, and never fuses a reduction into its
    consumers, so every word is computed once. Measured at MiniLM's shapes (jax 0.10): packing
    by elementwise shifts and ORs instead fused into every product reading the words (50× slower
    attention); packing by a float32 matrix product against powers of two, which keeps the
    producer a loop of its own, cost 11.2 ms for the FFN's 4096 × 1536 output against 6.9 ms as a
    reduction, and 14.2 ms against 3.6 ms for the attention of a layer.
    """
    k = positive.shape[-1]
    w = num_words(k)
    if k != w * WORD_BITS:
        pad = [(0, 0)] * (positive.ndim - 1) + [(0, w * WORD_BITS - k)]
        positive = jnp.pad(positive, pad)
    planes = positive.reshape(positive.shape[:-1] + (w, WORD_BITS)).astype(jnp.uint32)
    return jnp.sum(planes << jnp.arange(WORD_BITS, dtype=jnp.uint32), axis=-1, dtype=jnp.uint32)


def unpack_signs(words: jax.Array, k: int) -> jax.Array:
    """Inverse of ``pack_signs``: bool ``(..., k)`` from uint32 ``(..., ceil(k/32))``."""
    shifts = jnp.arange(WORD_BITS, dtype=jnp.uint32)
    bits = (words[..., None] >> shifts) & np.uint32(1)  # (..., W, 32): element 32·j + i
    return bits.reshape(words.shape[:-1] + (-1,))[..., :k].astype(bool)


def pack_weight_codes(bits: np.ndarray) -> np.ndarray:
    """A ``(K, N)`` matrix of 0/1 weight bits (1 for +1) as ``(ceil(K/32), N)`` uint32 words."""
    k, n = bits.shape
    w = num_words(k)
    padded = np.zeros((w * WORD_BITS, n), np.uint32)
    padded[:k] = bits
    planes = padded.reshape(w, WORD_BITS, n)  # [j, i] = element 32·j + i
    return np.bitwise_or.reduce(planes << np.arange(WORD_BITS, dtype=np.uint32)[None, :, None], axis=1)


def binary_matmul(x_words: jax.Array, w_words: jax.Array, k: int) -> jax.Array:
    """The ±1 product of packed activations and weights, exact.

    Args:
      x_words: uint32 ``(M, W)``, activations packed along K (``pack_signs``).
      w_words: uint32 ``(W, N)``, weights packed along K (``pack_weight_codes``).
      k: the true reduction length K (padding bits are 0 on both sides and count nothing).
    Returns:
      int32 ``(M, N)`` = Σ_k x_k·w_k with x, w ∈ {−1, +1}: K − 2·popcount(x xor w).
    """
    acc = None
    for j in range(x_words.shape[-1]):
        term = lax.population_count(x_words[:, j, None] ^ w_words[j][None, :]).astype(jnp.int32)
        acc = term if acc is None else acc + term
    return k - 2 * acc


# --------------------------------------------------------------------------------------------
# The forward pass.
# --------------------------------------------------------------------------------------------
def _layer_norm(x, p, eps):
    # Flax's own LayerNorm, so the float operations are the model's, op for op.
    return nn.LayerNorm(eps, dtype=jnp.float32).apply({"params": p}, x)


# Float32 bit patterns of the two windows where exact GELU's sign flips back to "≥ 0" for negative
# x: just below zero (x·Φ(x) flushed to −0) and deep in the tail (erf saturated at −1, x·0 = −0).
_LOW_WINDOW = (0x80000000, 0x81800000)    # −0 ... −2^-124
_HIGH_WINDOW = (0xC0400000, 0xC1A00000)   # −3 ... −20


def _window_values(window: tuple[int, int]) -> np.ndarray:
    return np.arange(*window, dtype=np.uint64).astype(np.uint32).view(np.float32)


@functools.lru_cache(maxsize=None)
def gelu_sign_bounds(backend: str) -> Optional[tuple[float, float]]:
    """Where the model's exact GELU (``model.activation("gelu")``) is ``>= 0`` on ``backend``, as
    two bounds.

    The binarized model only needs the sign of GELU (its output feeds a sign activation), and in
    exact arithmetic GELU(x) ≥ 0 ⟺ x ≥ 0. In float32 two more regions give −0 (which counts as
    ≥ 0): x just below zero, where x·Φ(x) flushes to zero, and the far tail, where erf rounds to
    exactly −1. Both are runs of consecutive floats, so the sign is ``x >= low or −inf < x <= high``;
    the bounds are read off this backend's own GELU inside two windows (``_LOW_WINDOW``,
    ``_HIGH_WINDOW``; the tests check every negative float32 on the CPU, and a sample of the
    positive ones, where GELU is x·Φ(x) ≥ 0). Returns None where GELU does not have that form
    inside the windows (the forward then computes GELU itself).
    """
    device = jax.devices(backend)[0]
    found = []
    for window, prefix in ((_LOW_WINDOW, True), (_HIGH_WINDOW, False)):
        x = jax.device_put(_window_values(window), device)
        nonneg = np.asarray(jax.jit(lambda v: activation("gelu")(v) >= 0)(x))
        flips = np.flatnonzero(nonneg[1:] != nonneg[:-1])
        if len(flips) != 1 or bool(nonneg[0]) != prefix:
            return None
        found.append(float(np.asarray(x)[flips[0] + (0 if prefix else 1)]))
    return found[0], found[1]


def hidden_act_nonnegative(x: jax.Array, hidden_act: str,
                           gelu_bounds: Optional[tuple[float, float]] = None) -> jax.Array:
    """``activation(x) >= 0``, bit for bit as the model computes it; for GELU with its
    ``gelu_sign_bounds`` given, without computing erf (GELU was 5 of the FFN's 7 ms a layer at
    MiniLM's shapes, measured)."""
    if hidden_act == "gelu" and gelu_bounds is not None:
        low, high = gelu_bounds
        return (x >= low) | ((x <= high) & (x > -jnp.inf))  # gelu(−inf) is NaN
    return activation(hidden_act)(x) >= 0


def _dense(x_words, p, k):
    """(sign(x)·codes)·scale + bias from packed ``x`` ``(M, W)``; float32 ``(M, N)``."""
    return binary_matmul(x_words, p["words"], k).astype(jnp.float32) * p["scales"] + p["bias"]


def bi_attention(q: jax.Array, k: jax.Array, v: jax.Array, key_real: jax.Array, heads: int,
                 head_dim: int) -> jax.Array:
    """Bi-Attention's context Bool(A)·sign(V) on bits, A = sign(Q)·sign(K)ᵀ/√d + mask.

    Args:
      q, k, v: float32 ``(B·T, heads·d)``, the dense layers' outputs (binarized here).
      key_real: bool ``(B, T)``, False at padding (never attended).
    Returns:
      int32 ``(B·T, heads·d)``: Σ over attended keys of sign(v), heads side by side as the model
      lays them out. A > 0 ⟺ sign(q)·sign(k) > 0 ⟺ popcount(q xor k) < d/2 on a real key (a
      masked score is below −10000 + √d), so the attention bits come from the Q and K words
      and the key mask alone; the float scores are never formed.
    """
    batch, seq = key_real.shape
    d = head_dim

    def head_words(t):  # (B·T, heads·d) -> (B, heads, T, d/32) words of each head's row
        return jnp.swapaxes(pack_signs(t.reshape(batch, seq, heads, d) >= 0), 1, 2)

    # Each word of a head's row as its own (B, heads, T) array: slicing the word axis inside the
    # products made XLA:CPU's loops 30× slower than these plain broadcasts (measured).
    qw, kw = head_words(q), head_words(k)
    tw = num_words(seq)
    pad = tw * WORD_BITS - seq
    q_words = [qw[..., w] for w in range(qw.shape[-1])]
    k_words = [jnp.pad(kw[..., w], ((0, 0), (0, 0), (0, pad))) for w in range(kw.shape[-1])]
    real = jnp.pad(key_real, ((0, 0), (0, pad)))[:, None, None, :]
    disagree = sum(lax.population_count(qs[..., :, None] ^ ks[:, :, None, :]).astype(jnp.int32)
                   for qs, ks in zip(q_words, k_words))  # (B, heads, T, T + pad)
    attend = pack_signs((2 * disagree < d) & real)  # (B, heads, T, tw)
    vw = pack_signs(v.reshape(batch, seq, heads, d).transpose(0, 2, 3, 1) >= 0)  # (B, heads, d, tw)
    a_words = [attend[..., j] for j in range(tw)]
    both = sum(lax.population_count(a[..., :, None] & vw[..., j][..., None, :]).astype(jnp.int32)
               for j, a in enumerate(a_words))
    count = sum(lax.population_count(a).astype(jnp.int32) for a in a_words)
    context = 2 * both - count[..., None]  # Σ_attended (+1 where v ≥ 0, −1 elsewhere)
    return context.transpose(0, 2, 1, 3).reshape(batch * seq, heads * d)


def forward(params: Mapping[str, Any], spec: ModelSpec, input_ids, token_type_ids, attention_mask,
            gelu_bounds: Optional[tuple[float, float]] = None) -> jax.Array:
    """Logits ``(B, num_labels)`` of the bitwise model (``load_bitwise``'s params); jit it with
    ``spec`` and ``gelu_bounds`` (``gelu_sign_bounds`` of the backend it runs on) static
    (``make_forward``)."""
    cfg = spec.config
    batch, seq = input_ids.shape
    hidden, heads, d = cfg.hidden_size, cfg.num_heads, cfg.head_dim
    eps = cfg.layer_norm_eps
    emb = params["embeddings"]
    signs = jnp.where(unpack_signs(jnp.take(emb["words"], input_ids, axis=0), hidden), 1.0, -1.0)
    words = jnp.take(emb["scales"], input_ids, axis=0)[..., None] * signs
    x = words + emb["position_embeddings"][None, :seq] + jnp.take(emb["token_type_embeddings"],
                                                                  token_type_ids, axis=0)
    x = _layer_norm(x, emb["LayerNorm"], eps).reshape(batch * seq, hidden)
    for layer in params["layers"]:
        att = layer["attention"]
        xw = pack_signs(x >= 0)
        q, k, v = (_dense(xw, att[n], hidden) for n in ("query", "key", "value"))
        context = bi_attention(q, k, v, attention_mask.astype(bool), heads, d)
        out = _dense(pack_signs(context >= 0), att["output"], heads * d)
        x = _layer_norm(out + x, att["LayerNorm"], eps)
        ffn = layer["ffn"]
        h = _dense(pack_signs(x >= 0), ffn["intermediate"], hidden)
        h_positive = hidden_act_nonnegative(h, cfg.hidden_act, gelu_bounds)  # never act(h) itself
        out = _dense(pack_signs(h_positive), ffn["output"], cfg.intermediate_size)
        x = _layer_norm(out + x, ffn["LayerNorm"], eps)
    cls = x.reshape(batch, seq, hidden)[:, 0]
    pooled = jnp.tanh(_dense(pack_signs(cls >= 0), params["pooler"], hidden))
    return nn.Dense(spec.num_labels, dtype=jnp.float32).apply({"params": params["classifier"]}, pooled)


def make_forward(spec: ModelSpec):
    """Jitted ``(params, batch) -> {"logits": ...}`` of the bitwise model, like ``evaluate.forward_fn``
    (on the default backend, whose GELU ``gelu_sign_bounds`` reads once)."""
    gelu_bounds = gelu_sign_bounds(jax.default_backend()) if spec.config.hidden_act == "gelu" else None

    @jax.jit
    def fn(params, batch, lat_diag=None):  # the Predictor's signature; a 1-1-1 model has no LAT
        del lat_diag
        return {"logits": forward(params, spec, batch["input_ids"], batch["token_type_ids"],
                                  batch["attention_mask"], gelu_bounds)}
    return fn


# --------------------------------------------------------------------------------------------
# Loading from a packed file.
# --------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class ResidentBytes:
    """The bytes the bitwise model's parameters occupy while it runs.

    Attributes:
      packed_words: uint32 words of every binary matrix and of the word embedding.
      scales: float32 scales (one per output unit, per embedding row).
      float_params: everything full precision (position and segment embeddings, LayerNorm,
        biases, the classifier).
    """

    packed_words: int
    scales: int
    float_params: int

    @property
    def total(self) -> int:
        return self.packed_words + self.scales + self.float_params


def resident_bytes(params: Mapping[str, Any]) -> ResidentBytes:
    """Counts ``params`` (a ``load_bitwise`` tree) by kind, from the arrays themselves."""
    counts = {"words": 0, "scales": 0}
    other = 0
    for path, leaf in jax.tree_util.tree_leaves_with_path(params):
        name = getattr(path[-1], "key", None)
        if name in counts:
            counts[name] += leaf.nbytes
        else:
            other += leaf.nbytes
    return ResidentBytes(counts["words"], counts["scales"], other)


def load_bitwise(path: str | os.PathLike) -> tuple[dict, ModelSpec, dict]:
    """Reads a packed 1-1-1 file into the bitwise model's parameters, never through float weights.

    Args:
      path: a file written by ``export.export_packed`` from a model ``bitwise_refusal`` accepts.
    Returns:
      (params, spec, info): the tree ``forward`` takes (uint32 words, float32 scales and
      full-precision parameters, as numpy), the quantized model's spec, and the stored info.
    Raises:
      NotBitwise: a model that cannot run bitwise (the reason named).
      export.PackedFormatError: an unreadable or corrupt file (as ``export.load_packed``).
    """
    raw, manifest = export.read_packed_tensors(path)
    spec = ModelSpec.from_dict(manifest["spec"])
    refusal = bitwise_refusal(spec, manifest)
    if refusal:
        raise NotBitwise(f"{path}: {refusal}")
    entries = manifest["tensors"]

    def binary(name):
        e = entries[name]
        shape = tuple(e["shape"])
        if e.get("bits") != 1 or not np.array_equal(raw[f"{name}:levels"], [-1.0, 1.0]):
            raise NotBitwise(f"{path}: {name} is not stored as one sign bit (levels −1, +1)")
        bits = export.unpack_codes(raw[f"{name}:codes"], 1, math.prod(shape)).reshape(shape)
        scale = np.broadcast_to(raw[f"{name}:scales"], shape)
        return bits, scale

    def dense(prefix):
        bits, scale = binary(f"{prefix}/kernel")
        return {"words": pack_weight_codes(bits), "scales": np.ascontiguousarray(scale[0], np.float32),
                "bias": raw[f"{prefix}/bias"]}

    def layer_norm(prefix):
        return {"scale": raw[f"{prefix}/LayerNorm/scale"], "bias": raw[f"{prefix}/LayerNorm/bias"]}

    bits, scale = binary("embeddings/word_embeddings")
    embeddings = {"words": pack_weight_codes(bits.T).T.copy(),
                  "scales": np.ascontiguousarray(scale[:, 0], np.float32),
                  "position_embeddings": raw["embeddings/position_embeddings"],
                  "token_type_embeddings": raw["embeddings/token_type_embeddings"],
                  "LayerNorm": layer_norm("embeddings")}
    layers = []
    for i in range(spec.config.num_layers):
        where = f"encoder/layer_{i}"
        layers.append({
            "attention": {**{n: dense(f"{where}/attention/{n}") for n in DENSE},
                          "LayerNorm": layer_norm(f"{where}/attention")},
            "ffn": {"intermediate": dense(f"{where}/ffn/intermediate"),
                    "output": dense(f"{where}/ffn/output"), "LayerNorm": layer_norm(f"{where}/ffn")}})
    params = {"embeddings": embeddings, "layers": layers, "pooler": dense("pooler/dense"),
              "classifier": {"kernel": raw["classifier/kernel"], "bias": raw["classifier/bias"]}}
    info = dict(manifest.get("info", {}))
    info["quantized_spec"] = spec.to_dict()
    return params, spec, info


def is_bitwise_file(path: str | os.PathLike) -> bool:
    """Whether a packed file holds a model the bitwise path runs (reads the manifest only)."""
    manifest = export.read_manifest(pathlib.Path(path))
    try:
        spec = ModelSpec.from_dict(manifest["spec"])
    except (KeyError, TypeError, ValueError):
        return False
    return bitwise_refusal(spec, manifest) is None
