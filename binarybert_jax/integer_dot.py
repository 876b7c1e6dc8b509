"""Products of quantized tensors computed on their integer codes, exactly, in bfloat16.

A quantized operand is ``scale · k + zero`` (``quant.QuantizedCodes``) with k small integers:
|k| ≤ 127 (255 asymmetric) at 8 bits, ≤ 15 at 4 bits, 1 for binary and ternary weights and for
1-bit activations. Where ``scale`` and ``zero`` are constant along the contracted axes, the
product of two operands is

    (s_a k_a + z_a)·(s_b k_b + z_b) = s_a s_b (k_a·k_b) + s_a z_b Σk_a + z_a s_b Σk_b + z_a z_b K,

and k_a·k_b is a product of integers: each |k| ≤ 256 is exact in bfloat16, each product is exact
in float32, and every partial sum is an exact integer while |k_a|·|k_b|·K < 2²⁴. So the integer
product is the same number whatever the order of summation — what float64 gives — and only the
few scalings after it round, where a float32 product of the quantized values rounds at every
product and partial sum. And it runs where the hardware is fastest: bfloat16 operands with
float32 accumulation (AVX-512 BF16 on the CPU, tensor cores, the TPU's MXU).

Where exactness cannot be had, the float32 product of the values is computed as before: a bound
|k_a|·|k_b|·K ≥ 2²⁴ (8-bit weights against 8-bit asymmetric activations on wide layers), codes
beyond bfloat16's exact integers (above 8 bits), or a scale that varies along the contracted axis
(per-token ranges of V, contracted over keys in probs·V).

Gradients are the straight-through ones of the values' product (what the float32 forward gives):
``grad_dtype`` float32 or bfloat16 (operands and cotangent in bfloat16, float32 accumulation; the
configs' default, ``matmul_precision``, since MRPC's TWN runs trained to the same dev metrics).

On the CPU every bfloat16 product goes through ``bf16_dot_general``, which lays its operands out
the one way XLA:CPU's bfloat16 kernels take.
"""

from __future__ import annotations

import functools
import math
from typing import Optional, Sequence

import jax
import jax.numpy as jnp
from jax import lax

from binarybert_jax.quant import QuantizedCodes, runtime_scalar

# Integers of magnitude ≤ 256 are exact in bfloat16 (8 significant bits); sums of integers are
# exact in float32 below 2^24.
BF16_EXACT_INTEGER = 256
FLOAT32_EXACT_INTEGER = 2 ** 24

DimensionNumbers = tuple[tuple[Sequence[int], Sequence[int]], tuple[Sequence[int], Sequence[int]]]


def centred(q: QuantizedCodes) -> QuantizedCodes:
    """An asymmetric operand (codes in [0, bound], a zero point) with its codes shifted by
    ``shift = (bound + 1) // 2`` into [−shift, bound − shift] and the shift moved into the zero
    point: the same values to one rounding of the zero point, codes half as large (more room
    below 2²⁴, and 8-bit codes exact in bfloat16), and a zero point near the middle of the range,
    so the rank-one corrections are small beside the integer product instead of cancelling it."""
    if q.zero is None:
        return q
    shift = (q.bound + 1) // 2
    # ``runtime_scalar``: the shift applied inside XLA:CPU's product fusion, not materialized.
    return QuantizedCodes(q.codes - runtime_scalar(shift, q.scale), q.scale, q.zero + shift * q.scale,
                          max(shift, q.bound - shift))


def _free_axes(ndim: int, contracting, batch) -> tuple[int, ...]:
    return tuple(d for d in range(ndim) if d not in contracting and d not in batch)


def _constant_along(q: QuantizedCodes, axes) -> bool:
    return all(q.scale.shape[d] == 1 and (q.zero is None or q.zero.shape[d] == 1) for d in axes)


def _row_major(x: jax.Array, perm: tuple[int, ...]) -> jax.Array:
    """``jnp.transpose(x, perm)`` laid out row-major in memory. XLA represents a transpose as a
    change of layout, and its simplifier folds a transpose into the product that reads it; the
    flattening reshape forces the copy and the barrier keeps the simplifier from undoing it."""
    if perm == tuple(range(x.ndim)):
        return x
    t = jnp.transpose(x, perm)
    return lax.optimization_barrier(t.reshape(-1)).reshape(t.shape)


def bf16_dot_general(a: jax.Array, b: jax.Array, dimension_numbers) -> jax.Array:
    """``lax.dot_general`` of two bfloat16 operands with float32 accumulation and result, with the
    operands first laid out (batch, free, contracted) and (batch, contracted, free), each group of
    axes flattened to one.

    XLA:CPU runs a bfloat16 product at the bfloat16 rate (its YNNPACK kernels) only in that
    layout: any other, e.g. the weight gradient's sum over tokens (the leading axis of both
    operands) or QKᵀ (K contracted on its last axis), is converted to float32 and runs at the
    float32 rate, a quarter of it on AVX-512 BF16 (measured: 4096×384 by 4096×1536 contracted
    over the 4096 tokens, 240 GFLOP/s as it is, 560-630 copied into this layout first, copy
    included). The copies are one pass over each operand that is not already so laid out."""
    if jax.default_backend() != "cpu":  # GPU and TPU products take any layout at full rate
        return lax.dot_general(a, b, dimension_numbers, preferred_element_type=jnp.float32)
    (a_con, b_con), (a_bat, b_bat) = dimension_numbers
    a_con, b_con, a_bat, b_bat = (tuple(int(d) for d in t) for t in (a_con, b_con, a_bat, b_bat))
    a_free = _free_axes(a.ndim, a_con, a_bat)
    b_free = _free_axes(b.ndim, b_con, b_bat)
    a_t = _row_major(a, a_bat + a_free + a_con)
    b_t = _row_major(b, b_bat + b_con + b_free)
    batch, m, k, n = (math.prod(x.shape[d] for d in axes)
                      for x, axes in ((a, a_bat), (a, a_free), (a, a_con), (b, b_free)))
    out = lax.dot_general(a_t.reshape(batch, m, k), b_t.reshape(batch, k, n),
                          (((2,), (1,)), ((0,), (0,))), preferred_element_type=jnp.float32)
    return out.reshape(tuple(a.shape[d] for d in a_bat + a_free) + tuple(b.shape[d] for d in b_free))


def is_exact(a: QuantizedCodes, b: QuantizedCodes, dimension_numbers: DimensionNumbers,
             groups: bool = False) -> bool:
    """Whether ``integer_dot_general`` computes the product of ``a`` and ``b`` exactly: codes
    exact in bfloat16, partial sums exact in float32, scales and zero points constant along the
    contracted axes (``groups``: ``b`` carries a leading axis of summed terms)."""
    (a_con, b_con), _ = dimension_numbers
    b_con = tuple(d + 1 for d in b_con) if groups else tuple(b_con)
    size = math.prod(a.codes.shape[d] for d in a_con)
    return (a.bound <= BF16_EXACT_INTEGER and b.bound <= BF16_EXACT_INTEGER
            and a.bound * b.bound * size < FLOAT32_EXACT_INTEGER
            and _constant_along(a, a_con) and _constant_along(b, b_con))


def _to_output(t: jax.Array, contracting, batch, free, lhs: bool, other_free: int) -> jax.Array:
    """An operand-shaped array (1 along ``contracting``) laid out as ``dot_general``'s output:
    batch axes, the left operand's free axes, then the right operand's."""
    t = jnp.transpose(t, tuple(batch) + tuple(free) + tuple(contracting))
    t = t.reshape(t.shape[:len(batch) + len(free)])
    ones = (1,) * other_free
    if lhs:
        return t.reshape(t.shape + ones)
    return t.reshape(t.shape[:len(batch)] + ones + t.shape[len(batch):])


def _integer_forward(dims, groups, a_codes, a_scale, a_zero, b_codes, b_scale, b_zero):
    if groups == SUMMED_HALVES:
        return _summed_halves_forward(dims, a_codes, a_scale, a_zero, b_codes, b_scale, b_zero)
    (a_con, b_con), (a_bat, b_bat) = dims
    if groups:  # b's leading axis is a free axis of the product, summed at the end
        b_con, b_bat = tuple(d + 1 for d in b_con), tuple(d + 1 for d in b_bat)
    a_free = _free_axes(a_codes.ndim, a_con, a_bat)
    b_free = _free_axes(b_codes.ndim, b_con, b_bat)
    product = bf16_dot_general(a_codes.astype(jnp.bfloat16), b_codes.astype(jnp.bfloat16),
                               ((a_con, b_con), (a_bat, b_bat)))
    lhs = functools.partial(_to_output, contracting=a_con, batch=a_bat, free=a_free, lhs=True,
                            other_free=len(b_free))
    rhs = functools.partial(_to_output, contracting=b_con, batch=b_bat, free=b_free, lhs=False,
                            other_free=len(a_free))
    f32 = jnp.float32
    if groups:
        return _combine_halves(product, len(a_bat) + len(a_free), lhs(a_scale.astype(f32)),
                               None if a_zero is None else lhs(a_zero.astype(f32)),
                               rhs(b_scale.astype(f32)),
                               rhs(jnp.sum(b_codes.astype(f32), axis=b_con, keepdims=True)), b_zero)
    out = product * lhs(a_scale.astype(f32)) * rhs(b_scale.astype(f32))
    # Zero points: the rank-one corrections, from exact integer sums of the codes.
    if b_zero is not None:
        a_sums = jnp.sum(a_codes.astype(f32), axis=a_con, keepdims=True)
        out = out + lhs(a_scale.astype(f32) * a_sums) * rhs(b_zero.astype(f32))
    if a_zero is not None:
        b_sums = jnp.sum(b_codes.astype(f32), axis=b_con, keepdims=True)
        out = out + lhs(a_zero.astype(f32)) * rhs(b_scale.astype(f32) * b_sums)
    if a_zero is not None and b_zero is not None:
        size = math.prod(a_codes.shape[d] for d in a_con)
        out = out + lhs(a_zero.astype(f32)) * rhs(b_zero.astype(f32)) * size
    return out


def _combine_halves(product, axis, a_scale, a_zero, b_scale, b_sums, b_zero):
    """s_a·(s_1 P_1 + s_2 P_2) (+ z_a·(s_1 Σk_1 + s_2 Σk_2)) for the two halves of a split weight,
    their products P_1, P_2 along ``axis``, as s_a·(½(s_1 + s_2)(P_1 + P_2) + ½(s_1 − s_2)(P_1 − P_2)).

    The halves of a split ternary weight cancel where its code is 0 (b_1 = −b_2 there) and their
    scales start equal: P_1 and P_2 are each larger than their sum, and scaling them apart would
    round each at its own magnitude. P_1 ± P_2 are exact integers, so this form rounds at the
    result's magnitude (and the second term vanishes while s_1 = s_2)."""
    if product.shape[axis] != 2 or b_zero is not None:
        raise ValueError("a split weight has two symmetric halves: got "
                         f"{product.shape[axis]} groups{' with a zero point' if b_zero is not None else ''}")

    def half(t, i):
        return jnp.take(t, i, axis=axis) if t.shape[axis] > 1 else jnp.squeeze(t, axis)

    mean = (half(b_scale, 0) + half(b_scale, 1)) * 0.5
    half_diff = (half(b_scale, 0) - half(b_scale, 1)) * 0.5

    def combine(t):
        return mean * (half(t, 0) + half(t, 1)) + half_diff * (half(t, 0) - half(t, 1))

    out = combine(product) * half(a_scale, 0)
    if a_zero is not None:
        out = out + half(a_zero, 0) * combine(b_sums)
    return out


# ``groups`` of a split weight whose two halves are multiplied as one matrix, their sum.
SUMMED_HALVES = "summed"


def summed_halves_operand(b_codes: jax.Array, b_scale: jax.Array) -> tuple[jax.Array, jax.Array]:
    """The one operand ``(m, scale)`` of a split weight's halves ``s_1 k_1 + s_2 k_2`` (codes and
    scales with a leading axis of 2) such that ``scale · m`` is their sum:

        s_1 k_1 + s_2 k_2 = ½(s_1 + s_2)·((k_1 + k_2) + r·(k_1 − k_2)),   r = (s_1 − s_2)/(s_1 + s_2),

    in float32. Where both codes agree, the entry is k_1 + k_2 = ±2, an integer; where they differ,
    ±2r. The halves of a split weight start with equal scales (r = 0, a ternary matrix of codes
    −2, 0, 2), and r stays small while they train: the product of ``m`` in bfloat16 then rounds
    only the ±2r entries (relative error ≤ 2⁻⁹ each), and is the exact integer (k_1 + k_2)·x where
    the scales are equal."""
    codes, scale = b_codes.astype(jnp.float32), b_scale.astype(jnp.float32)
    mean = (scale[0] + scale[1]) * 0.5
    half_diff = (scale[0] - scale[1]) * 0.5
    ratio = jnp.where(mean != 0, half_diff / jnp.where(mean != 0, mean, 1.0), 0.0)
    return (codes[0] + codes[1]) + ratio * (codes[0] - codes[1]), mean


def _summed_halves_forward(dims, a_codes, a_scale, a_zero, b_codes, b_scale, b_zero):
    """The forward of a split weight's two halves as ONE product, of the activation codes and
    ``summed_halves_operand`` (half the FLOPs of the two halves' products), scaled as
    ``_combine_halves`` scales those: where the halves' scales are equal the result is the same
    bits; elsewhere it differs by the bfloat16 rounding of the ±2r entries (and the float32
    accumulation of the sums that are then no longer integers)."""
    if b_zero is not None:
        raise ValueError("a split weight has two symmetric halves: got a zero point")
    (a_con, b_con), (a_bat, b_bat) = dims
    operand, mean = summed_halves_operand(b_codes, b_scale)
    a_free = _free_axes(a_codes.ndim, a_con, a_bat)
    b_free = _free_axes(operand.ndim, b_con, b_bat)
    product = bf16_dot_general(a_codes.astype(jnp.bfloat16), operand.astype(jnp.bfloat16), dims)
    lhs = functools.partial(_to_output, contracting=a_con, batch=a_bat, free=a_free, lhs=True,
                            other_free=len(b_free))
    rhs = functools.partial(_to_output, contracting=b_con, batch=b_bat, free=b_free, lhs=False,
                            other_free=len(a_free))
    f32 = jnp.float32
    out = (rhs(mean) * product) * lhs(a_scale.astype(f32))
    if a_zero is not None:
        # z_a·Σ over the inputs of the summed weight, from the halves' exact integer code sums
        # (as ``_combine_halves`` forms it).
        scale = b_scale.astype(f32)
        sums = jnp.sum(b_codes.astype(f32), axis=tuple(d + 1 for d in b_con), keepdims=True)
        mean_, half_diff = (scale[0] + scale[1]) * 0.5, (scale[0] - scale[1]) * 0.5
        out = out + lhs(a_zero.astype(f32)) * rhs(mean_ * (sums[0] + sums[1])
                                                  + half_diff * (sums[0] - sums[1]))
    return out


def _values(codes, scale, zero):
    out = scale * codes
    return out if zero is None else out + zero


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2, 3))
def _integer_dot(dims, groups, grad_dtype, a_dtype, a_values, b_values, a_codes, a_scale, a_zero,
                 b_codes, b_scale, b_zero):
    del a_values, b_values  # only their cotangents are defined here
    return _integer_forward(dims, groups, a_codes, a_scale, a_zero, b_codes, b_scale, b_zero)


def _integer_dot_fwd(dims, groups, grad_dtype, a_dtype, a_values, b_values, a_codes, a_scale,
                     a_zero, b_codes, b_scale, b_zero):
    out = _integer_forward(dims, groups, a_codes, a_scale, a_zero, b_codes, b_scale, b_zero)
    # The activation side is kept as its codes (bfloat16: half the bytes of its float32 values)
    # and rebuilt in the backward pass; the weight side (small) as its values.
    return out, (a_codes.astype(jnp.bfloat16), a_scale, a_zero, b_values)


def _ranges_like(*lists):
    start = 0
    for items in lists:
        yield list(range(start, start + len(items)))
        start += len(items)


def _cotangent_lhs(g, x_ndim, y, dims, swap_ans=False):
    """The cotangent of the left operand of ``dot_general(x, y, dims)`` for the output cotangent
    ``g``, as one product with float32 accumulation and result (JAX's transpose rule, written out
    so that bfloat16 operands stay bfloat16: XLA:CPU runs a bfloat16 product with a bfloat16 result
    as a float32 one, but bfloat16 operands with a float32 result at the bfloat16 rate)."""
    (x_con, y_con), (x_bat, y_bat) = dims
    x_kept = [d for d in range(x_ndim) if d not in x_con and d not in x_bat]
    y_kept = [d for d in range(y.ndim) if d not in y_con and d not in y_bat]
    if swap_ans:
        ans_batch, ans_y, _ = _ranges_like(x_bat, y_kept, x_kept)
    else:
        ans_batch, _, ans_y = _ranges_like(x_bat, x_kept, y_kept)
    x_con_by_y = [x_con[i] for i in sorted(range(len(y_con)), key=lambda i: y_con[i])]
    out_axes = [int(i) for i in sorted(range(x_ndim), key=lambda i: (list(x_bat) + x_kept + x_con_by_y)[i])]
    product = float_dot_general(g, y, ((ans_y, y_kept), (ans_batch, list(y_bat))))
    if out_axes != sorted(out_axes) and g.dtype == jnp.bfloat16 and jax.default_backend() == "cpu":
        # XLA would fold the transpose into the product, which then no longer has the layout
        # ``bf16_dot_general`` gave it (and XLA:CPU, having kept it bfloat16 for that layout,
        # fails to run it).
        product = lax.optimization_barrier(product)
    return jnp.transpose(product, out_axes)


def _integer_dot_bwd(dims, groups, grad_dtype, a_dtype, residuals, g):
    a_codes, a_scale, a_zero, b_values = residuals
    a_values = _values(a_codes.astype(a_scale.dtype), a_scale, a_zero)
    # The straight-through gradient: that of the values' product, its two products taking
    # ``grad_dtype`` operands and accumulating in float32.
    (a_con, b_con), (a_bat, b_bat) = dims
    grad_a = _cotangent_lhs(g.astype(grad_dtype), a_values.ndim, b_values.astype(grad_dtype), dims)
    grad_b = _cotangent_lhs(g.astype(grad_dtype), b_values.ndim, a_values.astype(grad_dtype),
                            ((b_con, a_con), (b_bat, a_bat)), swap_ans=True)
    return (grad_a.astype(a_dtype), grad_b.astype(b_values.dtype), None, None, None, None,
            None, None)


_integer_dot.defvjp(_integer_dot_fwd, _integer_dot_bwd)


def float_dot_general(a: jax.Array, b: jax.Array, dimension_numbers) -> jax.Array:
    """The float product of two arrays: float32 operands as they are; bfloat16 ones (a bfloat16
    compute dtype) accumulate in float32 and return float32 (``bf16_dot_general``), the fast path
    on every backend (XLA:CPU would otherwise run a bfloat16-result product in float32)."""
    if a.dtype == jnp.bfloat16 and b.dtype == jnp.bfloat16:
        return bf16_dot_general(a, b, dimension_numbers)
    return lax.dot_general(a, b, dimension_numbers)


def quantized_dot_general(a_values: jax.Array, a: Optional[QuantizedCodes], b_values: jax.Array,
                          b: Optional[QuantizedCodes], dimension_numbers: DimensionNumbers, *,
                          groups: bool = False, grad_dtype=jnp.float32,
                          summed: bool = False) -> jax.Array:
    """``lax.dot_general(a_values, b_values, dimension_numbers)``, computed on the codes.

    Args:
      a_values, b_values: the quantized values (``scale · codes + zero``, carrying the
        straight-through gradient). ``groups``: ``b_values`` is the sum over the leading axis of
        ``b``'s codes (the two halves of a split weight), whose products are taken separately.
      a, b: the operands' codes, or None where an operand is not quantized.
      dimension_numbers: as ``lax.dot_general``'s, on the values.
      grad_dtype: the dtype of the backward products (float32 or bfloat16).
      summed: with ``groups``, the halves' forward is one product of their sum
        (``summed_halves_operand``: half the FLOPs; the same bits where the halves' scales are
        equal, else within the bfloat16 rounding of the small entries), where the code sums allow
        it (|k_a|·2·K < 2²⁴; otherwise the two halves' products). The gradients are the same
        either way: those of the values' product.
    Returns:
      float32: the integer-domain product where ``is_exact`` holds, else the float product of
      the values (``float_dot_general``), as before; float64 values always take the float product.
    """
    dims = tuple(tuple(tuple(int(d) for d in side) for side in pair) for pair in dimension_numbers)
    if a is not None and b is not None:
        a, b = centred(a), centred(b)
    # A float64 forward (a reference computation) gains nothing from codes: its float products
    # are already exact beyond what float32 scalings could return.
    wide = jnp.float64 in (jnp.dtype(a_values.dtype), jnp.dtype(b_values.dtype))
    if a is None or b is None or wide or not is_exact(a, b, dims, groups):
        return float_dot_general(a_values, b_values, dims)
    if groups and summed and is_exact(a, b._replace(bound=2 * b.bound), dims, groups):
        groups = SUMMED_HALVES
    return _integer_dot(dims, groups, jnp.dtype(grad_dtype), jnp.dtype(a_values.dtype), a_values,
                        b_values, a.codes, a.scale, a.zero, b.codes, b.scale, b.zero)
