"""The benchmark scripts' bookkeeping: op classification, concurrency sweep, report sections."""

import argparse
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from benchmarks import markdown, step_profile, train_step
from binarybert_jax import quant


@pytest.mark.parametrize("event, op_name, expected", [
    ("ynn_fusion.12", "jit(per_device)/transpose(jvp(BertModel))/encoder/layer_3/ffn/output/dot_general",
     ("dense matmuls (+ fused epilogues)", "student backward")),
    ("dot.4", "jit(per_device)/BertModel/encoder/layer_0/attention/attention_scores/dot_general",
     ("attention matmuls", "teacher forward")),
    ("multiply_select_fusion.3", "jit(per_device)/jvp(BertModel)/encoder/layer_1/attention/query/act_quant/div",
     ("activation quantizers", "student forward")),
    ("select_fusion", "jit(per_device)/jvp(BertModel)/embeddings/weight_quant/abs",
     ("weight quantizers", "student forward")),
    ("add_fusion.9", "jit(per_device)/transpose(jvp(BertModel))/encoder/layer_2/ffn/Dropout_0/div",
     ("dropout", "student backward")),
    ("reduce.1", "jit(per_device)/BertModel/encoder/layer_4/attention/softmax/reduce_max",
     ("softmax and mask", "teacher forward")),
    ("erf_fusion", "jit(per_device)/jvp(BertModel)/encoder/layer_4/ffn/erfc", ("GELU", "student forward")),
    ("sqrt_fusion.2", "jit(per_device)/sqrt", ("losses, optimizer, rest", "outside the model")),
])
def test_categorize(event, op_name, expected):
    assert step_profile.categorize(event, op_name) == expected


def test_concurrency_sweep():
    ops = [{"ts": 0, "dur": 10}, {"ts": 5, "dur": 10}, {"ts": 20, "dur": 5}]
    # 0-5 one op, 5-10 two, 10-15 one, 15-20 none, 20-25 one.
    assert step_profile.concurrency(ops) == (5.0, 15.0, 5.0)


def test_hlo_op_names_carry_the_quantizer_scopes():
    def f(x, w):
        xq = quant.quantize_act(x, jnp.array([-2.5, 2.5]), "uniform", 8, True)
        return jnp.sum(xq @ quant.quantize_weight(w, "twn", 2))

    x = jnp.linspace(-3, 3, 32).reshape(4, 8)
    compiled = jax.jit(jax.grad(f, argnums=(0, 1))).lower(x, jnp.ones((8, 3))).compile()
    names = step_profile.hlo_op_names(compiled.as_text())
    scopes = " ".join(names.values())
    assert "act_quant" in scopes and "weight_quant" in scopes
    assert all(isinstance(k, str) and k for k in names)


def test_write_section_replaces_only_its_own(tmp_path):
    out = tmp_path / "B.md"
    markdown.write_section(out, "## A", "## A\n\nfirst\n")
    markdown.write_section(out, "## B", "## B\n\nother\n")
    markdown.write_section(out, "## A", "## A\n\nsecond\n")
    text = out.read_text()
    assert text.startswith(markdown.HEADER)
    assert "second" in text and "first" not in text and "## B\n\nother" in text
    assert text.index("## A") < text.index("## B")


def test_printed_command_leaves_out_the_raw_results_path():
    argv = ["--cases", "w2a8", "--json", "/tmp/x.json", "--out", "B.md", "--json=/tmp/y.json"]
    assert train_step._without_json(argv) == ["--cases", "w2a8", "--out", "B.md"]


def test_the_authors_figures_are_those_of_the_run_s_dimensions_and_machine_kind():
    rows = {"w2a8": {"examples_per_s": 5.3, "step_s_median": 32 / 5.3},
            "w1a8": {"examples_per_s": 4.0, "step_s_median": 8.0}}
    amd, intel, other = "AMD EPYC 9B14", "Intel(R) Xeon(R) Platinum", "Apple M2"
    # BERT-base on AMD: against 2.16 and 1.33, never against MiniLM's 11.8-11.9 (or Intel's).
    text = train_step.reference_ratios(rows, True, amd)
    assert "BERT-base" in text and "2.45× the reference's 2.16" in text and "3.01× the reference's 1.33" in text
    targets = train_step.targets_table(rows, {}, None, train_step.reference_for(True, amd))
    assert "(5.4 ex/s) | 5.3 ex/s, 2.45× | no |" in targets
    mini = train_step.reference_ratios({"w2a8": {"examples_per_s": 29.6}}, False, amd)
    assert "MiniLM" in mini and "2.49–2.51× the reference's 11.8–11.9" in mini
    assert "12.9–14.4" in train_step.reference_ratios({"w2a8": {"examples_per_s": 29.6}}, False, intel)
    # Dimensions or a machine kind without figures: no ratio at all.
    for bert_base, cpu in ((True, intel), (False, other)):
        assert train_step.reference_for(bert_base, cpu) is None
        assert "no ratio to it is taken" in train_step.reference_ratios(rows, bert_base, cpu)
        assert "authors' code" not in train_step.targets_table(rows, {}, None, None)


def test_a_bert_base_run_writes_its_own_section(tmp_path):
    out = tmp_path / "B.md"
    rows = {"w2a8": {"examples_per_s": 5.3, "examples_per_s_best": 5.4, "step_s_median": 6.0, "step_s_min": 5.9,
                     "cpu_s_median": 11.0, "model_gflops": 200.0, "model_gflops_best": 210.0,
                     "fraction_of_probe_median": 1.0, "compile_s": 20.0, "rss_peak_mib": 6000.0,
                     "host_ops": 0, "loadavg": (1.0, 1.0, 1.0)}}
    for bert_base in (False, True):
        args = argparse.Namespace(bert_base=bert_base, batch=32, seq=128, steps=1)
        info = {"cpu": "AMD EPYC", "cores": 2, "jax": "x", "xla_flags": "", "loadavg": (0, 0, 0),
                "date": "d", "glibc_tunables": "glibc.malloc.hugetlb=1"}
        matmul = {"n": 2048, "gflops_best": 1.0, "gflops_median": 1.0}
        text = train_step.section(rows, matmul, None, info, "cmd", args)
        markdown.write_section(out, train_step.section_heading(bert_base), text)
    written = out.read_text()
    assert "## Training step\n" in written and "## Training step, BERT-base dimensions\n" in written
    mini, bert = written.split("## Training step, BERT-base dimensions\n")
    assert "MiniLM dimensions" in mini and "11.8" in mini and "2.16" not in mini
    assert "BERT-base dimensions" in bert and "2.16" in bert and "11.8" not in bert


def test_accelerator_check_runs_tiny_on_the_cpu(tmp_path):
    """The GPU/TPU check's own code path, shrunk: every figure is there and plausible."""
    from benchmarks import accelerator_check
    result = accelerator_check.main(["--tiny", "--steps", "2", "--out", str(tmp_path)])
    assert result["bf16_matmul_tflops"] > 0 and set(result["steps"]) == {"w2a8", "w1a8"}
    for m in result["steps"].values():
        assert m["examples_per_s"] > 0 and 0 < m["mfu"] and np.isfinite(m["loss"])
    assert result["sharding"]["devices"] == 2 and result["sharding"]["max_abs_param_diff"] < 1e-2
    md = (tmp_path / "accelerator_check.md").read_text()
    assert "| ternary W2A8 (TWN) |" in md and "Sharding check over 2 devices" in md
    assert json.loads((tmp_path / "accelerator_check.json").read_text())["compute_dtype"] == "bfloat16"


def test_hlo_op_names_of_a_fusion_without_metadata_come_from_its_product():
    hlo = """HloModule m
%fused_computation (param_0: f32[4,8], param_1: f32[8,3]) -> f32[4,3] {
  %param_0 = f32[4,8]{1,0} parameter(0)
  %param_1 = f32[8,3]{1,0} parameter(1)
  %exp.1 = f32[4,8]{1,0} exponential(%param_0), metadata={op_name="jit(f)/BertModel/exp"}
  ROOT %dot.2 = f32[4,3]{1,0} dot(%exp.1, %param_1), lhs_contracting_dims={1}, rhs_contracting_dims={0}, metadata={op_name="jit(f)/BertModel/layer_0/attention/dot_general"}
}

ENTRY %main (x: f32[4,8], w: f32[8,3]) -> f32[4,3] {
  %x = f32[4,8]{1,0} parameter(0), metadata={op_name="x"}
  %w = f32[8,3]{1,0} parameter(1)
  %ynn_fusion = f32[4,3]{1,0} fusion(%x, %w), kind=kCustom, calls=%fused_computation
  %k = f32[8,3]{1,0} negate(%w), metadata={op_name="jit(f)/jvp(BertModel)/layer_1/ffn/output/neg"}
  ROOT %ynn_fusion.1 = f32[4,3]{1,0} fusion(%x, %k), kind=kCustom, calls=%fused_computation.1
}

%fused_computation.1 (param_0: f32[4,8], param_1: f32[8,3]) -> f32[4,3] {
  %param_0.1 = f32[4,8]{1,0} parameter(0)
  %param_1.1 = f32[8,3]{1,0} parameter(1)
  ROOT %dot.3 = f32[4,3]{1,0} dot(%param_0.1, %param_1.1), lhs_contracting_dims={1}, rhs_contracting_dims={0}
}
"""
    names = step_profile.hlo_op_names(hlo)
    assert names["ynn_fusion.1"] == "jit(f)/jvp(BertModel)/layer_1/ffn/output/neg"
    assert names["ynn_fusion"] == "jit(f)/BertModel/layer_0/attention/dot_general"
    assert names["x"] == "x" and names["w"] == ""
    assert step_profile.categorize("ynn_fusion", names["ynn_fusion"]) == \
        ("dense matmuls (+ fused epilogues)", "teacher forward")


# The benchmark's cases shrunk to one small layer: smoke runs of the real programs, no timing.
SMALL = dict(num_layers=1, vocab_size=2000, hidden_size=64, num_heads=2, head_dim=32, intermediate_size=128)


def test_default_variant_is_the_configs_default():
    from configs import common

    c = common.base_config()
    integer, grad, teacher = train_step.VARIANTS[train_step.DEFAULT_VARIANT]
    assert (c.integer_products, c.matmul_precision, c.teacher_dtype or c.dtype) == (integer, grad, teacher)


def test_train_step_times_the_summed_split_beside_the_exact_one():
    """The benchmark's split cases, shrunk to one layer (a smoke run, no timing): ``w1a8-summed``
    is the ``w1a8`` student with ``split_forward=summed``, and its compiled KD step runs one dense
    product per split matrix where ``w1a8`` runs two (the student's dense forward FLOPs fewer by
    one forward's worth), to a finite loss."""
    batch, seq = 4, 16
    counted, losses = {}, {}
    for case in ("w1a8", "w1a8-summed"):
        program = train_step.prepare_case(case, False, batch, seq, shrink=SMALL)
        assert program.student_spec.quant.split and program.student_spec.quant.split_forward == (
            "summed" if case == "w1a8-summed" else "exact")
        cost = program.compiled.cost_analysis()
        counted[case] = (cost[0] if isinstance(cost, list) else cost)["flops"]
        _, _, measured = program.run(program.args[0])
        losses[case] = float(measured["total"])
    assert all(np.isfinite(v) for v in losses.values())
    assert losses["w1a8-summed"] == pytest.approx(losses["w1a8"], rel=1e-2)
    # The split matrices' forward products (Q, K, V, attention output, FFN in and out per token;
    # the pooler's on the first token), which the exact forward runs twice, once per half.
    config = program.student_spec.config
    h, a, i = config.hidden_size, config.attention_size, config.intermediate_size
    split_forward = batch * (2 * seq * (3 * h * a + a * h + 2 * h * i) * config.num_layers + 2 * h * h)
    saved = counted["w1a8"] - counted["w1a8-summed"]
    assert 0.9 * split_forward <= saved <= 1.1 * split_forward, (saved, split_forward, counted)


def test_interleaved_steps_give_each_case_its_ratio_to_the_first_round_by_round():
    il = train_step.measure_interleaved(["w2a8", "w1a8-summed"], False, 2, 8, rounds=3, shrink=SMALL)
    assert il["cases"] == ["w2a8", "w1a8-summed"] and len(il["step_s_all"]["w2a8"]) == 3
    # XLA's cost analysis of each compiled step: the split model's step reads and writes more
    # (twice the latent weights, their gradients and optimizer state).
    cost = il["xla_cost"]
    assert cost["w2a8"]["flops"] > 0 and cost["w1a8-summed"]["bytes"] > cost["w2a8"]["bytes"] > 0
    first, summed = il["step_s_all"]["w2a8"], il["step_s_all"]["w1a8-summed"]
    assert il["ratio_to_first_all"]["w1a8-summed"] == pytest.approx([s / f for s, f in zip(summed, first)])
    assert il["ratio_to_first_median"]["w1a8-summed"] == pytest.approx(
        sorted(s / f for s, f in zip(summed, first))[1])
    # The split targets read the interleaved ratios where the run has them, the medians' ratio else.
    rows = {"w2a8": {"step_s_median": 2.0}, "w1a8": {"step_s_median": 2.4}}
    assert il["ratio_of_best_to_first"]["w1a8-summed"] == pytest.approx(min(summed) / min(first))
    fixed = dict(il, ratio_to_first_all={"w1a8-summed": [0.7, 0.8, 0.9]},
                 ratio_to_first_median={"w1a8-summed": 0.8}, ratio_of_best_to_first={"w1a8-summed": 0.95})
    targets = train_step.targets_table(rows, {}, None, None, fixed)
    assert "| split W1A8 step ≤ 1.0× the ternary step | 1.20× (2.40 s vs 2.00 s median) | no |" in targets
    assert ("≤ 1.0× the ternary step | 0.95× (best steps of 3 interleaved rounds; round by round 0.80× median, "
            "0.70–0.90) | yes |") in targets
    text = train_step.interleaved_text(fixed)
    assert "| ternary W2A8 (TWN, uniform 8-bit) |" in text and "| 0.95× / 0.80× (0.70–0.90) |" in text
    assert f"| {cost['w2a8']['flops'] / 1e9:.1f}, {cost['w2a8']['bytes'] / 1e9:.1f} |" in text
    # Its own section: a run of the other cases never replaces it.
    info = {"date": "d", "cpu": "AMD EPYC", "cores": 2, "jax": "j", "xla_flags": "", "loadavg": (1.0, 1.0, 1.0)}
    args = argparse.Namespace(bert_base=False, batch=2, seq=8)
    section = train_step.interleaved_section(fixed, info, "cmd", args)
    assert section.startswith("## Training step: cases interleaved in one process\n")
    assert "0.95× (best steps of 3 interleaved rounds" in section


def test_inference_interleaved_runs_tiny(tmp_path):
    """benchmarks.inference --interleaved's measurement on tiny saved forms: every row measured,
    the baseline's ratios 1, a packed 1-1-8 form's resident parameters a fraction of float32's."""
    from benchmarks import inference as bench
    from binarybert_jax import checkpoints, export
    from binarybert_jax.model import ModelSpec, QuantConfig
    from test_export import TINY, random_params

    fp32 = ModelSpec(TINY)
    bwn = ModelSpec(TINY, QuantConfig(1, 1, 8, "bwn", "bwn"))
    checkpoints.save_model(tmp_path / "fp32", random_params(fp32), fp32)
    export.export_packed(random_params(bwn), bwn, tmp_path / "bwn.safetensors")
    forms = {"fp32": (str(tmp_path / "fp32"), "integer"),
             "bwn-packed": (str(tmp_path / "bwn.safetensors"), "integer"),
             "bwn-packed-float": (str(tmp_path / "bwn.safetensors"), "float")}
    rows = bench.interleaved(forms, seq=8, batch=2, repeats=2)
    assert list(rows) == list(forms)
    assert rows["fp32"]["throughput_x"] == rows["fp32"]["latency_x"] == 1.0
    assert rows["bwn-packed"]["compute"] == "integer" and rows["bwn-packed-float"]["compute"] == "float"
    assert rows["bwn-packed"]["params_fraction"] < 0.25 < rows["bwn-packed-float"]["params_fraction"]
    assert all(r["throughput_seq_s"] > 0 and r["latency_ms"] > 0 for r in rows.values())
    table = bench.interleaved_table(rows, 2, 8)
    assert "| bwn-packed | packed, integer |" in table and table.count("\n") == 4
    assert set(bench.INTERLEAVED.values()) <= {(v, c) for v in bench.VARIANTS for c in ("integer", "float")}
    args = bench.build_parser().parse_args(["--interleaved", "--seq", "8", "--batch", "2"])
    section = bench.interleaved_section(rows, bench.machine(), "python -m benchmarks.inference", args)
    out = tmp_path / "BENCHMARKS.md"
    out.write_text("# Benchmarks\n")
    markdown.write_section(out, bench.INTERLEAVED_SECTION, section)
    assert out.read_text().count(bench.INTERLEAVED_SECTION) == 1 and table in out.read_text()
