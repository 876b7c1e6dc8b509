"""Quantizers with straight-through gradients: the one home of every quantization formula.

Pure functions on arrays, differentiable through ``jax.custom_vjp``; they compose with ``jit``,
``grad``, ``vmap`` and ``shard_map``. The model, the ternary weight splitting, the exporter and the
tests all call these, so a formula is written exactly once.

Weights (straight-through: the latent full-precision weight receives the gradient unchanged):
  * TWN, BWN, LAT/LAQ (loss-aware, optional diagonal) and symmetric uniform k-bit (for 8-bit
    baselines). Each is written once as a ``*_codes`` function returning integer codes and
    per-group scales (``weight_quant_codes`` dispatches; the exporter stores these); the values
    are ``scales * codes`` (``*_values``, ``weight_quant_values``), and ``quantize_weight``
    (``ternarize``, ``binarize``) attaches the straight-through gradient.
  * Granularity is given as the axes a scale is shared over: ``(-2, -1)`` is one scale per matrix
    ("layer-wise"), ``(-1,)`` one scale per row of an embedding table, ``(-2,)`` one scale per output
    unit of a ``(in, out)`` Flax kernel. A leading stacking axis (the two halves of a split weight)
    therefore always gets scales of its own.

  * BiBERT's mean-centred binarization (``centred_binary_codes``, method ``bibert``): code
    sign(w − mean of the group), scale mean|w| of the group; its gradient is the clipped
    straight-through one, through clamp(w − mean, −1, 1) (``clipped_straight_through``).

Activations (dynamic ranges; the input gradient is zero outside the clip range):
  * ``uniform_act_quantize``: clip to learnable ``[c_lo, c_hi]`` then symmetric max-abs or asymmetric
    min-max k-bit quantization; PACT-style clip gradients.
  * ``lsq_act_quantize``: LSQ with a learned step size, symmetric or asymmetric; ``lsq_init_step``
    is the released code's data-driven initial step.
  * ``sign_act`` (method ``sign``, 1 bit, BiBERT): ±1 with no scale, +1 at 0 (a bit holds no 0);
    ``bool_act``: 1 where x > 0, else 0 (BiBERT's attention weights). Both with the clipped
    straight-through gradient (zero where |x| > 1).
  * Range statistics are shared over ``reduce_axes`` (``None``: the whole tensor, batch and padding
    included, as the released code does), restricted to ``mask`` where given, and reduced across the
    devices of ``axis_name`` where given (so a sharded step matches a single-device one).
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp
from jax import lax

Axes = Optional[tuple[int, ...]]

LAYERWISE: tuple[int, ...] = (-2, -1)
WEIGHT_METHODS = ("twn", "bwn", "lat", "uniform", "bibert")
ACT_METHODS = ("uniform", "lsq", "sign")
FULL_PRECISION_BITS = 32


# --------------------------------------------------------------------------------------------
# Straight-through estimator.
# --------------------------------------------------------------------------------------------
@jax.custom_vjp
def straight_through(latent: jax.Array, quantized: jax.Array) -> jax.Array:
    """Returns ``quantized`` in the forward pass and hands its gradient to ``latent`` unchanged."""
    return quantized


def _straight_through_fwd(latent, quantized):
    return quantized, None


def _straight_through_bwd(_, g):
    return g, None


straight_through.defvjp(_straight_through_fwd, _straight_through_bwd)


@jax.custom_vjp
def clipped_straight_through(latent: jax.Array, quantized: jax.Array) -> jax.Array:
    """Returns ``quantized``; its gradient reaches ``latent`` where |latent| ≤ 1 and is 0 elsewhere
    (the gradient of clamp(latent, −1, 1), as BiBERT's ``detach() − clamp.detach() + clamp``, whose
    sum would round the forward value, while this returns ``quantized`` bit for bit)."""
    return quantized


def _clipped_straight_through_fwd(latent, quantized):
    return quantized, jnp.abs(latent) <= 1


def _clipped_straight_through_bwd(inside, g):
    return jnp.where(inside, g, jnp.zeros_like(g)), None


clipped_straight_through.defvjp(_clipped_straight_through_fwd, _clipped_straight_through_bwd)


def _mean(x, axes, keepdims=True):
    return jnp.mean(x, axis=axes, keepdims=keepdims)


def _norm_axes(axes: Axes, ndim: int) -> tuple[int, ...]:
    if axes is None:
        return tuple(range(ndim))
    return tuple(sorted(a % ndim for a in axes))


# --------------------------------------------------------------------------------------------
# Weight quantizers: integer codes and scales (no gradient logic here).
# --------------------------------------------------------------------------------------------
# Each formula has one home, a ``*_codes`` function returning ``(codes, scales)``: integer codes in
# ``[-max_weight_code(bits), max_weight_code(bits)]`` and float scales shaped like ``w`` with 1
# along ``axes``. The quantized value is ``scales * codes``, one float multiplication, and nothing
# else: the model's forward pass (``*_values``) and the bit-packed export (which stores the codes
# and the scales) therefore hold the same numbers by construction.
def max_weight_code(bits: int) -> int:
    """The largest |code| of a ``bits``-bit weight quantizer: 1 for binary and ternary,
    ``2^(bits−1) − 1`` above (codes are symmetric integers)."""
    return max(1, 2 ** (bits - 1) - 1)


def _code_dtype(bits: int):
    return jnp.int8 if bits <= 8 else jnp.int16


def ternary_codes(w: jax.Array, axes: Axes = LAYERWISE) -> tuple[jax.Array, jax.Array]:
    """TWN: Δ = 0.7·mean|w|; α = mean of |w| over entries with |w| > Δ; code sign(w) there, else 0.

    Returns:
      (codes int8 in {−1, 0, 1} shaped like ``w``, α with 1 along ``axes``).
    """
    axes = _norm_axes(axes, w.ndim)
    abs_w = jnp.abs(w)
    delta = 0.7 * _mean(abs_w, axes)
    keep = abs_w > delta
    kept = jnp.sum(keep, axis=axes, keepdims=True)
    alpha = jnp.sum(jnp.where(keep, abs_w, 0), axis=axes, keepdims=True) / jnp.maximum(kept, 1)
    return jnp.where(keep, jnp.sign(w), 0).astype(jnp.int8), alpha


def binary_codes(w: jax.Array, axes: Axes = LAYERWISE) -> tuple[jax.Array, jax.Array]:
    """BWN: code sign(w), α = mean|w|.

    Returns:
      (codes int8 in {−1, 1}, and 0 where ``w`` is exactly 0 (sign(0) = 0, as ``torch.sign`` in the
      released code), α with 1 along ``axes``).
    """
    axes = _norm_axes(axes, w.ndim)
    return jnp.sign(w).astype(jnp.int8), _mean(jnp.abs(w), axes)


def centred_binary_codes(w: jax.Array, axes: Axes = LAYERWISE) -> tuple[jax.Array, jax.Array]:
    """BiBERT: code sign(w − mean w), α = mean|w| (of ``w`` itself, not of the centred weight), both
    over ``axes`` (the released code: per output row of a torch ``(out, in)`` weight, i.e. per output
    unit ``(-2,)`` of a Flax ``(in, out)`` kernel, and per row ``(-1,)`` of the word embedding).

    Returns:
      (codes int8 in {−1, 1}, and 0 where ``w`` equals its group's mean exactly (torch.sign), α
      with 1 along ``axes``).
    """
    axes = _norm_axes(axes, w.ndim)
    return jnp.sign(w - _mean(w, axes)).astype(jnp.int8), _mean(jnp.abs(w), axes)


def loss_aware_codes(w: jax.Array, bits: int, axes: Axes = LAYERWISE,
                     diag: Optional[jax.Array] = None, iterations: int = 10
                     ) -> tuple[jax.Array, jax.Array]:
    """LAT/LAQ: approximately minimises ‖w − α·b‖²_D with D = diag(√v + 1e-8) (identity without ``v``).

    ``bits == 1`` is loss-aware binarization (α = Σ|D·w| / ΣD, b = sign w). Otherwise b takes the
    ``2·L + 1`` symmetric levels j/L in [−1, 1] (L = ``max_weight_code(bits)``) and α, b alternate
    ``iterations`` times from b = sign(w), as the released code does.

    Returns:
      (codes j: int8 in [−L, L] (binary: as ``binary_codes``), scales α·(1/L) with 1 along
      ``axes``). For L > 1 the value (α·(1/L))·j differs from the released code's α·(j/L) by an
      ulp or two in a fraction of the entries (the 2-bit L = 1 is the same bits): one product of a
      group's scale and an integer is what a packed file holds, and α·(j/L) is not always of that
      form (the exporter once searched scales ulp by ulp for it). 1/L is multiplied rather than L
      divided by, so eager and jitted scales agree (XLA turns a division by a constant into a
      multiplication by its reciprocal). The refit iterates on j/L, as before.
    """
    axes = _norm_axes(axes, w.ndim)
    d = jnp.ones_like(w) if diag is None else jnp.sqrt(diag.astype(w.dtype)) + 1e-8
    if bits == 1:
        alpha = jnp.sum(jnp.abs(d * w), axes, keepdims=True) / jnp.sum(d, axes, keepdims=True)
        return jnp.sign(w).astype(jnp.int8), alpha
    levels = max_weight_code(bits)

    def refit(b):
        alpha = (jnp.sum(jnp.abs(b * d * w), axes, keepdims=True)
                 / jnp.maximum(jnp.sum(jnp.abs(b * d), axes, keepdims=True), 1e-30))
        j = jnp.round(jnp.clip(w / alpha, -1.0, 1.0) * levels)
        return alpha, j

    alpha, j = refit(jnp.sign(w))
    alpha, j = lax.fori_loop(0, iterations, lambda _, aj: refit(aj[1] / levels), (alpha, j))
    return j.astype(_code_dtype(bits)), alpha * (1.0 / levels)


def uniform_weight_codes(w: jax.Array, bits: int, axes: Axes = LAYERWISE
                         ) -> tuple[jax.Array, jax.Array]:
    """Symmetric k-bit: s = L/max|w| (L = 2^(bits−1) − 1), code round(w·s), scale 1/s.

    Returns:
      (codes in [−L, L], int8 to 8 bits else int16; scales 1/s with 1 along ``axes``). The codes
      are the released code's round(w·s); the value (1/s)·code is what XLA computes for its
      round(w·s)/s too (a division by a broadcast becomes a multiplication by the reciprocal), and
      it is written so here, since the packed file holds exactly that product.
    """
    axes = _norm_axes(axes, w.ndim)
    max_abs = jnp.max(jnp.abs(w), axis=axes, keepdims=True)
    scale = max_weight_code(bits) / jnp.where(max_abs > 0, max_abs, 1)
    return jnp.round(w * scale).astype(_code_dtype(bits)), 1 / scale


def weight_quant_codes(w: jax.Array, method: str, bits: int, axes: Axes = LAYERWISE,
                       diag: Optional[jax.Array] = None) -> tuple[jax.Array, jax.Array]:
    """The integer codes and per-group scales of ``w`` for a quantized method and bit width.

    Args:
      w: latent full-precision weight, any shape.
      method, bits: as ``quantize_weight`` (below 32 bits: full precision has no codes).
      axes: axes one scale is shared over.
      diag: LAT only, the second moment for ``w`` or None for the identity.
    Returns:
      ``(codes, scales)``: integer codes shaped like ``w`` in
      ``[−max_weight_code(bits), max_weight_code(bits)]`` (binary: ±1, 0 only where ``w`` is 0),
      and scales in ``w``'s dtype shaped like ``w`` with 1 along ``axes``. The quantized values
      are ``scales * codes`` (``weight_quant_values``).
    """
    check_weight_method(method, bits)
    if bits >= FULL_PRECISION_BITS:
        raise ValueError(f"a {bits}-bit weight is full precision and has no codes")
    if method == "twn":
        return ternary_codes(w, axes)
    if method == "bwn":
        return binary_codes(w, axes)
    if method == "lat":
        return loss_aware_codes(w, bits, axes, diag)
    if method == "bibert":
        return centred_binary_codes(w, axes)
    return uniform_weight_codes(w, bits, axes)


def _scaled(codes_and_scales: tuple[jax.Array, jax.Array]) -> jax.Array:
    codes, scales = codes_and_scales
    return scales * codes.astype(scales.dtype)


def ternary_values(w: jax.Array, axes: Axes = LAYERWISE) -> jax.Array:
    """TWN values α·code (``ternary_codes``)."""
    return _scaled(ternary_codes(w, axes))


def binary_values(w: jax.Array, axes: Axes = LAYERWISE) -> jax.Array:
    """BWN values α·sign(w) (``binary_codes``)."""
    return _scaled(binary_codes(w, axes))


def loss_aware_values(w: jax.Array, bits: int, axes: Axes = LAYERWISE,
                      diag: Optional[jax.Array] = None, iterations: int = 10) -> jax.Array:
    """LAT/LAQ values scale·code (``loss_aware_codes``)."""
    return _scaled(loss_aware_codes(w, bits, axes, diag, iterations))


def uniform_weight_values(w: jax.Array, bits: int, axes: Axes = LAYERWISE) -> jax.Array:
    """Symmetric k-bit values scale·code (``uniform_weight_codes``)."""
    return _scaled(uniform_weight_codes(w, bits, axes))


def weight_quant_values(w: jax.Array, method: str, bits: int, axes: Axes = LAYERWISE,
                        diag: Optional[jax.Array] = None) -> jax.Array:
    """The quantized values ``scales * codes`` of ``w`` (``weight_quant_codes``); ``w`` itself at
    32 bits. No gradient rule attached."""
    if bits >= FULL_PRECISION_BITS:
        return w
    return _scaled(weight_quant_codes(w, method, bits, axes, diag))


def check_weight_method(method: str, bits: int) -> None:
    """Raises ValueError for an unknown method or a bit width the method cannot produce."""
    if bits >= FULL_PRECISION_BITS:
        return
    if method not in WEIGHT_METHODS:
        raise ValueError(f"unknown weight quantization method {method!r}; allowed: {WEIGHT_METHODS}")
    allowed = {"twn": (2,), "bwn": (1,), "lat": tuple(range(1, 9)), "uniform": tuple(range(2, 17)),
               "bibert": (1,)}
    if bits not in allowed[method]:
        raise ValueError(f"weight method {method!r} cannot quantize to {bits} bits; allowed bits: "
                         f"{allowed[method]} (or 32 for full precision)")


# --------------------------------------------------------------------------------------------
# Weight quantizers with straight-through gradients.
# --------------------------------------------------------------------------------------------
def quantize_weight(w: jax.Array, method: str, bits: int, axes: Axes = LAYERWISE,
                    diag: Optional[jax.Array] = None) -> jax.Array:
    """Quantizes a latent weight; its gradient passes to ``w`` unchanged (straight-through).

    Args:
      w: latent full-precision weight, any shape (e.g. ``(in, out)``, ``(2, in, out)``, ``(V, H)``).
      method: ``twn``, ``bwn``, ``lat``, ``uniform`` or ``bibert`` (gradient: clipped
        straight-through through clamp(w − mean, −1, 1); the others pass it unchanged).
      bits: 1 (bwn, lat, bibert), 2 (twn, lat, uniform), ... ; 32 returns ``w`` itself.
      axes: axes one scale is shared over (see the module docstring).
      diag: LAT only, the optimizer's second moment for ``w`` (same shape), or None for identity.
    Returns:
      An array like ``w`` holding the quantized values.
    """
    if bits >= FULL_PRECISION_BITS:
        return w
    with jax.named_scope("weight_quant"):  # names the ops in profiles and HLO dumps
        if method == "bibert":
            # The released code's gradient: through clamp(w − mean w, −1, 1), mean included.
            centred = w - _mean(w, _norm_axes(axes, w.ndim))
            values = weight_quant_values(lax.stop_gradient(w), method, bits, axes)
            return clipped_straight_through(centred, values)
        values = weight_quant_values(lax.stop_gradient(w), method, bits, axes,
                                     None if diag is None else lax.stop_gradient(diag))
        return straight_through(w, values)


def ternarize(w, axes: Axes = LAYERWISE):
    """TWN ternarization with a straight-through gradient."""
    return quantize_weight(w, "twn", 2, axes)


def binarize(w, axes: Axes = LAYERWISE):
    """BWN binarization with a straight-through gradient."""
    return quantize_weight(w, "bwn", 1, axes)


# --------------------------------------------------------------------------------------------
# Activation range statistics.
# --------------------------------------------------------------------------------------------
def _masked_max(x, axes, mask, axis_name):
    if mask is not None:
        x = jnp.where(mask, x, -jnp.inf)
    m = jnp.max(x, axis=axes, keepdims=True)
    if axis_name is not None:
        m = lax.pmax(m, axis_name)
    return m


def _masked_min(x, axes, mask, axis_name):
    return -_masked_max(-x, axes, mask, axis_name)


def _finite_or(x, fallback):
    return jnp.where(jnp.isfinite(x), x, fallback)


def _masked_extremes(x, axes, mask, axis_name):
    """(max, min) of ``x`` over ``axes`` restricted to ``mask`` (−inf / +inf where nothing is
    unmasked), reduced over the devices of ``axis_name``.

    Two plain reductions: XLA:CPU runs them as vectorised, threaded library reductions, where
    one variadic (max, min) reduction falls back to a scalar loop that also recomputes the
    fused producers of ``x`` (softmax, dropout) per element, several times slower in the step.
    """
    hi_in, lo_in = (x, x) if mask is None else (jnp.where(mask, x, -jnp.inf), jnp.where(mask, x, jnp.inf))
    x_max = jnp.max(hi_in, axis=axes, keepdims=True)
    x_min = jnp.min(lo_in, axis=axes, keepdims=True)
    if axis_name is not None:
        x_max, x_min = lax.pmax(x_max, axis_name), -lax.pmax(-x_min, axis_name)
    return x_max, x_min


# --------------------------------------------------------------------------------------------
# Uniform activation quantizer (symmetric max-abs or asymmetric min-max), learnable clip.
# --------------------------------------------------------------------------------------------
def _clip(x, lo, hi):
    xc = jnp.where(x < hi, x, hi)
    return jnp.where(xc > lo, xc, lo)


class QuantizedCodes(NamedTuple):
    """A quantized tensor as integer codes: its value is ``scale * codes + zero``.

    ``codes`` are small integers held in a float dtype (exact there); ``scale`` and ``zero`` have
    the rank of ``codes`` with 1 along the axes they are shared over (``zero`` is None for a
    symmetric quantizer); ``bound`` is a static bound on |codes|. The integer-domain products
    (``integer_dot.py``) multiply codes and apply scales and zero points after the sum.
    """

    codes: jax.Array
    scale: jax.Array
    zero: Optional[jax.Array]
    bound: int

    def values(self) -> jax.Array:
        """``scale * codes + zero``: the quantized values, one multiplication (and one addition)."""
        out = self.scale * self.codes
        return out if self.zero is None else out + self.zero


def runtime_scalar(value: float, finite: jax.Array) -> jax.Array:
    """``value`` exactly, as a scalar XLA cannot fold to a constant: ``value + 0·finite`` for a
    finite run-time ``finite`` (one element per range).

    XLA:CPU fuses a bfloat16 product with the elementwise ops that make its operands (YNNPACK
    fusions), but such a fusion cannot hold a constant: a constant applied to a whole activation
    (the 8-bit bound 255, the code shift of 128) is broadcast to the activation's full shape
    outside the fusion, written out and read back in every call (in a packed MiniLM's forward at
    batch 32 x 128, about a tenth of the op time in the profile). A scalar computed at run time
    is broadcast inside the fusion instead."""
    return value + 0 * finite


def uniform_act_bound(bits: int, symmetric: bool) -> int:
    """The largest |code| of the uniform activation quantizer."""
    return 2 ** (bits - 1) - 1 if symmetric else 2 ** bits - 1


def uniform_act_codes(x, clip, bits: int, symmetric: bool, axes: Axes = None, mask=None,
                      axis_name: Optional[str] = None) -> QuantizedCodes:
    """The codes of ``uniform_act_quantize`` (no gradient): symmetric codes round(clip(x)·s) in
    [−L, L] with scale 1/s (s = L / max|clip(x)|, L = 2^(bits−1) − 1); asymmetric codes
    round((clip(x) − min)/width·(2^bits − 1)) in [0, 2^bits − 1] with scale width/(2^bits − 1)
    and zero point min (the range of the clipped tensor over ``axes``, ``mask`` and the devices of
    ``axis_name``)."""
    # The range of the clipped tensor comes from the extremes of the raw one: clipping is
    # monotone, so max clip(x) = clip(max x) and min clip(x) = clip(min x), exactly (the same
    # floats). The clipped tensor is then never written out, and the quantizers of one tensor
    # (the Q, K and V inputs) share its two reductions, which XLA merges.
    lo, hi = clip[0].astype(x.dtype), clip[1].astype(x.dtype)
    x_max, x_min = _masked_extremes(x, axes, mask, axis_name)
    if mask is not None:
        # Nothing unmasked: the fallbacks of a reduction over an empty set (see below).
        empty = x_max == -jnp.inf
    c_max, c_min = _clip(x_max, lo, hi), _clip(x_min, lo, hi)
    xc = _clip(x, lo, hi)
    bound = uniform_act_bound(bits, symmetric)
    if symmetric:
        max_abs = jnp.maximum(jnp.abs(c_max), jnp.abs(c_min))
        if mask is not None:
            max_abs = jnp.where(empty, 0, max_abs)
        scale = bound / jnp.where(max_abs > 0, max_abs, 1).astype(x.dtype)
        return QuantizedCodes(jnp.round(xc * scale), 1 / scale, None, bound)
    if mask is not None:
        c_max, c_min = jnp.where(empty, -jnp.inf, c_max), jnp.where(empty, 0, c_min)
    width = _finite_or(c_max - c_min, 0) + 1e-8
    codes = jnp.round((xc - c_min) / width * runtime_scalar(bound, width))
    return QuantizedCodes(codes, (width / bound).astype(x.dtype), c_min.astype(x.dtype), bound)


def _uniform_act_forward(x, clip, bits, symmetric, axes, mask, axis_name):
    return uniform_act_codes(x, clip, bits, symmetric, axes, mask, axis_name).values().astype(x.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4, 6))
def _uniform_act(x, clip, bits, symmetric, axes, mask, axis_name):
    return _uniform_act_forward(x, clip, bits, symmetric, axes, mask, axis_name)


def _uniform_act_fwd(x, clip, bits, symmetric, axes, mask, axis_name):
    out = _uniform_act_forward(x, clip, bits, symmetric, axes, mask, axis_name)
    return out, (x, clip, mask)


def _uniform_act_bwd(bits, symmetric, axes, axis_name, residuals, g):
    x, clip, mask = residuals
    below = x <= clip[0].astype(x.dtype)
    above = x >= clip[1].astype(x.dtype)
    grad_x = jnp.where(below | above, jnp.zeros_like(g), g)
    # PACT: the clip value collects the upstream gradient of every position it clipped.
    acc = jnp.promote_types(g.dtype, jnp.float32)  # bf16 sums over a whole tensor lose too much
    grad_lo = jnp.sum(jnp.where(below, g, 0), dtype=acc)
    grad_hi = jnp.sum(jnp.where(above, g, 0), dtype=acc)
    grad_clip = jnp.stack([grad_lo, grad_hi]).astype(clip.dtype)
    return grad_x, grad_clip, None


_uniform_act.defvjp(_uniform_act_fwd, _uniform_act_bwd)


def uniform_act_quantize(x: jax.Array, clip: jax.Array, bits: int, symmetric: bool = True,
                         reduce_axes: Axes = None, mask: Optional[jax.Array] = None,
                         axis_name: Optional[str] = None) -> jax.Array:
    """Uniform k-bit activation quantization with a dynamic range and a learnable clip.

    Args:
      x: activations, any shape.
      clip: ``(2,)`` array ``[lower, upper]`` (learnable; initialised to ±2.5 in the papers).
      bits: number of bits; 32 returns ``x``.
      symmetric: max-abs scaling with ``2^(bits−1) − 1`` levels a side, else min-max with ``2^bits − 1``.
      reduce_axes: axes whose range is shared; None for the whole tensor.
      mask: optional boolean array broadcastable to ``x``; False positions (padding) are left out of
        the range statistics.
      axis_name: optional mapped axis over which ranges are reduced (max over devices).
    Returns:
      Quantized activations shaped like ``x``. Gradients: ``x`` gets the upstream gradient inside the
      clip range and 0 outside; ``clip`` gets the summed upstream gradient at positions clipped below
      (``clip[0]``) and above (``clip[1]``).
    """
    if bits >= FULL_PRECISION_BITS:
        return x
    if mask is not None:
        mask = jnp.broadcast_to(mask, x.shape)
    axes = None if reduce_axes is None else _norm_axes(reduce_axes, x.ndim)
    return _uniform_act(x, clip, bits, bool(symmetric), axes, mask, axis_name)


# --------------------------------------------------------------------------------------------
# LSQ activation quantizer (learned step size).
# --------------------------------------------------------------------------------------------
def lsq_levels(bits: int, symmetric: bool) -> tuple[int, int]:
    """(Qn, Qp): the integer range of LSQ codes."""
    if symmetric:
        return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    return 0, 2 ** bits - 1


def _lsq_offset(x, symmetric, axes, mask, axis_name):
    if symmetric:
        return jnp.zeros((), x.dtype)
    return lax.stop_gradient(_finite_or(_masked_min(x, axes, mask, axis_name), 0))


def _lsq_count(x, mask, axis_name):
    acc = jnp.promote_types(x.dtype, jnp.float32)
    count = jnp.asarray(x.size, acc) if mask is None else jnp.sum(mask, dtype=acc)
    if axis_name is not None:
        # The gradient scale uses the global element count, so a sharded step matches one device.
        count = lax.psum(count, axis_name)
    return jnp.maximum(count, 1.0)


def lsq_act_codes(x, step, bits: int, symmetric: bool, axes: Axes = None, mask=None,
                  axis_name: Optional[str] = None) -> QuantizedCodes:
    """The codes of ``lsq_act_quantize`` (no gradient): clip(round((x − offset)/step), Qn, Qp),
    scale ``step``, zero point the offset (the masked minimum over ``axes``; None when symmetric)."""
    qn, qp = lsq_levels(bits, symmetric)
    offset = _lsq_offset(x, symmetric, axes, mask, axis_name)
    s = jnp.reshape(step.astype(x.dtype), (1,) * x.ndim)
    codes = jnp.clip(jnp.round((x - offset) / s), qn, qp)
    return QuantizedCodes(codes, s, None if symmetric else offset, max(-qn, qp))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4, 6))
def _lsq_act(x, step, bits, symmetric, axes, mask, axis_name):
    return lsq_act_codes(x, step, bits, symmetric, axes, mask, axis_name).values()


def _lsq_act_fwd(x, step, bits, symmetric, axes, mask, axis_name):
    out = lsq_act_codes(x, step, bits, symmetric, axes, mask, axis_name).values()
    offset = _lsq_offset(x, symmetric, axes, mask, axis_name)
    # ``x`` and the offset rather than ``x − offset``: the shift is recomputed where it is read,
    # not written out as one more activation-sized tensor.
    return out, (x, offset, step, mask)


def _lsq_act_bwd(bits, symmetric, axes, axis_name, residuals, g):
    x, offset, step, mask = residuals
    shifted = x - offset
    qn, qp = lsq_levels(bits, symmetric)
    q = shifted / step.astype(shifted.dtype)
    small, big = q < qn, q > qp
    middle = ~(small | big)
    grad_scale = 1.0 / jnp.sqrt(_lsq_count(shifted, mask, axis_name) * qp)
    per_element = jnp.where(small, float(qn), jnp.where(big, float(qp), jnp.round(q) - q))
    acc = jnp.promote_types(g.dtype, jnp.float32)
    grad_step = (jnp.sum(per_element * g, dtype=acc) * grad_scale).astype(step.dtype)
    grad_x = jnp.where(middle, g, jnp.zeros_like(g))
    return grad_x, jnp.reshape(grad_step, step.shape), None


_lsq_act.defvjp(_lsq_act_fwd, _lsq_act_bwd)


def lsq_act_quantize(x: jax.Array, step: jax.Array, bits: int, symmetric: bool = True,
                     reduce_axes: Axes = None, mask: Optional[jax.Array] = None,
                     axis_name: Optional[str] = None) -> jax.Array:
    """LSQ k-bit activation quantization with a learned step size.

    Symmetric: codes in [−2^(bits−1), 2^(bits−1) − 1]. Asymmetric: the (masked, range-scoped) minimum
    is subtracted first and added back; codes in [0, 2^bits − 1].

    Gradients (LSQ): ``x`` gets the upstream gradient where its code is inside the range, 0 outside;
    ``step`` gets Σ g·(Qn | Qp | round(q) − q) scaled by 1/√(numel·Qp), numel counting unmasked
    elements.
    """
    if bits >= FULL_PRECISION_BITS:
        return x
    if mask is not None:
        mask = jnp.broadcast_to(mask, x.shape)
    axes = None if reduce_axes is None else _norm_axes(reduce_axes, x.ndim)
    return _lsq_act(x, step, bits, bool(symmetric), axes, mask, axis_name)


def lsq_init_step(x: jax.Array, bits: int, symmetric: bool = True,
                  mask: Optional[jax.Array] = None, axis_name: Optional[str] = None) -> jax.Array:
    """The released code's data-driven initial step: 2·mean|x|/√Qp (symmetric), 4·mean|x|/√Qp
    (asymmetric), over the unmasked elements of the first batch (and all devices of ``axis_name``)."""
    _, qp = lsq_levels(bits, symmetric)
    abs_x = jnp.abs(lax.stop_gradient(x)).astype(jnp.float32)
    if mask is None:
        total, count = jnp.sum(abs_x), jnp.float32(x.size)
    else:
        mask = jnp.broadcast_to(mask, x.shape)
        total, count = jnp.sum(jnp.where(mask, abs_x, 0)), jnp.sum(mask, dtype=jnp.float32)
    if axis_name is not None:
        total, count = lax.psum(total, axis_name), lax.psum(count, axis_name)
    mean_abs = total / jnp.maximum(count, 1.0)
    return (2.0 if symmetric else 4.0) * mean_abs / math.sqrt(qp)


def percentile_clip(x: jax.Array, percentile: float, symmetric: bool = True,
                    mask: Optional[jax.Array] = None, axis_name: Optional[str] = None) -> jax.Array:
    """A clip ``[lower, upper]`` initialised from the data: ±(the ``percentile``-th percentile of
    |x|) when ``symmetric``, else [the (100 − ``percentile``)-th, the ``percentile``-th percentile of
    x], over the unmasked elements (the mean over the devices of ``axis_name``). Where the released
    code's fixed ±2.5 cuts a third of the energy of some activations (docs/results.md, clipping), a
    high percentile keeps the outliers' scale and still leaves the bulk its resolution."""
    x = lax.stop_gradient(x).astype(jnp.float32)
    if mask is not None:
        x = jnp.where(jnp.broadcast_to(mask, x.shape), x, jnp.nan)
    if symmetric:
        upper = jnp.nanpercentile(jnp.abs(x), percentile)
        clip = jnp.stack([-upper, upper])
    else:
        clip = jnp.stack([jnp.nanpercentile(x, 100.0 - percentile), jnp.nanpercentile(x, percentile)])
    if axis_name is not None:
        clip = lax.pmean(clip, axis_name)
    return clip


CLIP_STATISTICS = ("count", "clipped", "energy", "clipped_energy", "clip_error", "absmax")


def clip_statistics(x: jax.Array, clip: jax.Array, mask: Optional[jax.Array] = None) -> dict:
    """How much of ``x`` a uniform quantizer's clip ``[lower, upper]`` cuts (the question it answers:
    does the released code's ±2.5 clip lose what this backbone's activations carry?). Sums over
    the unmasked elements, so that batches and layers add up (``CLIP_STATISTICS``): ``count``
    values, ``clipped`` of them outside the clip, ``energy`` Σx², ``clipped_energy`` Σx² of the
    values outside, ``clip_error`` Σ(x − clip(x))² (the energy clipping removes), ``absmax``."""
    x = lax.stop_gradient(x).astype(jnp.float32)
    lower, upper = (lax.stop_gradient(clip[..., i]).astype(jnp.float32) for i in (0, 1))
    real = jnp.ones(x.shape, bool) if mask is None else jnp.broadcast_to(mask, x.shape).astype(bool)
    outside = real & ((x < lower) | (x > upper))
    square = jnp.where(real, x * x, 0.0)
    return {"count": jnp.sum(real, dtype=jnp.float32),
            "clipped": jnp.sum(outside, dtype=jnp.float32),
            "energy": jnp.sum(square),
            "clipped_energy": jnp.sum(jnp.where(outside, square, 0.0)),
            "clip_error": jnp.sum(jnp.where(real, jnp.square(x - jnp.clip(x, lower, upper)), 0.0)),
            "absmax": jnp.max(jnp.where(real, jnp.abs(x), 0.0))}


# --------------------------------------------------------------------------------------------
# 1-bit activations (BiBERT): no scale, no range, clipped straight-through gradients.
# --------------------------------------------------------------------------------------------
def sign_values(x: jax.Array) -> jax.Array:
    """+1 where x ≥ 0, −1 elsewhere, in ``x``'s dtype. At exactly 0 this gives +1 where torch.sign
    (the released code) gives 0: one bit holds ±1 only, and the bitwise inference path
    (``bitwise.py``) must compute what the model computes."""
    return jnp.where(x >= 0, jnp.ones_like(x), -jnp.ones_like(x))


def sign_act(x: jax.Array) -> jax.Array:
    """``sign_values(x)`` with the clipped straight-through gradient (0 where |x| > 1)."""
    with jax.named_scope("act_quant"):
        return clipped_straight_through(x, sign_values(lax.stop_gradient(x)))


def bool_act(x: jax.Array) -> jax.Array:
    """1 where x > 0, else 0 (BiBERT's Bool(·) of attention scores; masked keys, whose scores
    carry the additive mask, are never > 0), with the clipped straight-through gradient."""
    with jax.named_scope("act_quant"):
        xs = lax.stop_gradient(x)
        return clipped_straight_through(x, jnp.where(xs > 0, jnp.ones_like(xs), jnp.zeros_like(xs)))


def quantize_act(x: jax.Array, param: jax.Array, method: str, bits: int, symmetric: bool,
                 reduce_axes: Axes = None, mask: Optional[jax.Array] = None,
                 axis_name: Optional[str] = None) -> jax.Array:
    """Dispatches to ``uniform_act_quantize`` (``param`` = clip pair), ``lsq_act_quantize``
    (``param`` = step size) or ``sign_act`` (1 bit, ``param`` unused)."""
    if bits >= FULL_PRECISION_BITS:
        return x
    if method == "sign":
        return sign_act(x)
    with jax.named_scope("act_quant"):  # names the ops in profiles and HLO dumps
        if method == "uniform":
            return uniform_act_quantize(x, param, bits, symmetric, reduce_axes, mask, axis_name)
        if method == "lsq":
            return lsq_act_quantize(x, param, bits, symmetric, reduce_axes, mask, axis_name)
    raise ValueError(f"unknown activation quantization method {method!r}; allowed: {ACT_METHODS}")


def act_quant_codes(x: jax.Array, param: jax.Array, method: str, bits: int, symmetric: bool,
                    reduce_axes: Axes = None, mask: Optional[jax.Array] = None,
                    axis_name: Optional[str] = None) -> QuantizedCodes:
    """The codes of ``quantize_act`` with the same arguments, computed on ``stop_gradient(x)``:
    ``act_quant_codes(...).values()`` is ``quantize_act(...)``'s forward value. The integer-domain
    products read these; the gradient still flows through ``quantize_act``'s value."""
    if bits >= FULL_PRECISION_BITS:
        raise ValueError(f"{bits}-bit activations are full precision and have no codes")
    x = lax.stop_gradient(x)
    if method == "sign":
        ones = jnp.ones((1,) * x.ndim, x.dtype)
        return QuantizedCodes(sign_values(x), ones, None, 1)
    if mask is not None:
        mask = jnp.broadcast_to(mask, x.shape)
    axes = None if reduce_axes is None else _norm_axes(reduce_axes, x.ndim)
    param = lax.stop_gradient(param)
    if method == "uniform":
        return uniform_act_codes(x, param, bits, bool(symmetric), axes, mask, axis_name)
    if method == "lsq":
        return lsq_act_codes(x, param, bits, bool(symmetric), axes, mask, axis_name)
    raise ValueError(f"unknown activation quantization method {method!r}; allowed: {ACT_METHODS}")


def bool_codes(x: jax.Array) -> QuantizedCodes:
    """The codes of ``bool_act`` (1 where x > 0, else 0; scale 1), on ``stop_gradient(x)``."""
    x = lax.stop_gradient(x)
    return QuantizedCodes(jnp.where(x > 0, jnp.ones_like(x), jnp.zeros_like(x)),
                          jnp.ones((1,) * x.ndim, x.dtype), None, 1)


def weight_codes_for_product(w: jax.Array, method: str, bits: int, axes: Axes = LAYERWISE,
                             diag: Optional[jax.Array] = None) -> QuantizedCodes:
    """``weight_quant_codes`` of ``stop_gradient(w)`` as ``QuantizedCodes`` (float codes, bound
    ``max_weight_code(bits)``) for the integer-domain products."""
    codes, scales = weight_quant_codes(lax.stop_gradient(w), method, bits, axes,
                                       None if diag is None else lax.stop_gradient(diag))
    return QuantizedCodes(codes.astype(scales.dtype), scales, None, max_weight_code(bits))


def scope_axes(scope: str, ndim: int, token_axes: Sequence[int]) -> Axes:
    """Axes whose range statistics are shared for a range scope.

    Args:
      scope: ``tensor`` (one range for the whole tensor), ``example`` (one per batch element) or
        ``token`` (one per batch element and position).
      ndim: rank of the activation; axis 0 is the batch.
      token_axes: the axes that index positions, kept apart under ``token`` scope.
    """
    if scope == "tensor":
        return None
    if scope == "example":
        return tuple(range(1, ndim))
    if scope == "token":
        keep = {0, *[a % ndim for a in token_axes]}
        return tuple(a for a in range(ndim) if a not in keep)
    raise ValueError(f"unknown activation range scope {scope!r}; allowed: tensor, example, token")
