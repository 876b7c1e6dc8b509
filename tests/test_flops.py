"""FLOP counts against a hand count of BERT-base."""

from binarybert_jax import flops
from binarybert_jax.model import BertConfig


def test_bert_base_forward_flops_by_hand():
    base = BertConfig()
    # Per layer at 128 tokens: 4 projections 768x768, FFN 768x3072 twice, attention 2·(128²·768).
    per_layer = 2 * 128 * (4 * 768 * 768 + 2 * 768 * 3072) + 2 * 2 * 128 * 128 * 768
    assert flops.encoder_forward_flops(base, 128) == 12 * per_layer
    assert abs(flops.forward_flops(base, 128) / 1e9 - 22.3) < 0.1  # the usual ~22 GFLOPs at 128


def test_half_width_and_kd_step():
    base = BertConfig()
    half = base.with_width(0.5)
    assert flops.encoder_forward_flops(half, 128) < 0.6 * flops.encoder_forward_flops(base, 128)
    assert flops.kd_step_flops(half, half, 128) == 4 * flops.forward_flops(half, 128)
