"""Floating-point operations of the model, counted from its shapes.

Matrix products only (2·m·n·k each: a multiply and an add), which is where BERT's time goes;
elementwise work (softmax, LayerNorm, GELU, quantizers) is left out. A backward pass costs twice
its forward (the gradients with respect to the inputs and to the weights are one product each).
Quantized models are counted as the same products: on hardware with binary/ternary arithmetic the
weight products become bit operations, which the papers do not count either.
"""

from __future__ import annotations

from binarybert_jax.model import BertConfig


def encoder_forward_flops(config: BertConfig, seq_len: int) -> int:
    """FLOPs of one example's encoder forward at ``seq_len`` tokens."""
    h, a, i, t = config.hidden_size, config.attention_size, config.intermediate_size, seq_len
    per_layer = (2 * t * h * a * 3          # Q, K, V projections
                 + 2 * config.num_heads * t * t * config.head_dim * 2  # QKᵀ and probs·V
                 + 2 * t * a * h            # attention output projection
                 + 2 * t * h * i * 2)       # FFN in and out
    return config.num_layers * per_layer


def forward_flops(config: BertConfig, seq_len: int, num_labels: int = 2) -> int:
    """FLOPs of one example's forward, pooler and classifier included."""
    h = config.hidden_size
    return encoder_forward_flops(config, seq_len) + 2 * h * h + 2 * h * num_labels


def kd_step_flops(student: BertConfig, teacher: BertConfig | None, seq_len: int,
                  num_labels: int = 2) -> int:
    """FLOPs of one example in a distillation step: teacher forward + student forward and backward."""
    teacher_fwd = forward_flops(teacher, seq_len, num_labels) if teacher is not None else 0
    return teacher_fwd + 3 * forward_flops(student, seq_len, num_labels)
