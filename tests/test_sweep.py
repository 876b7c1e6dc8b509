"""Sweeps as configuration (configs/sweeps, launch/sweep.py): the runs and record names they
declare, selection, and a real tiny sweep that trains, records and resumes."""

import json
import pathlib

import pytest

from binarybert_jax.errors import UserError
from launch import sweep

ROOT = pathlib.Path(__file__).resolve().parents[1]
RESULTS = ROOT / "results"


def _records(runs):
    return [rec.name for run in runs for rec in run.records]


def test_fidelity_declares_the_scripts_runs_and_record_names(tmp_path):
    runs = sweep.load_sweep("configs/sweeps/fidelity.py")
    assert [r.name for r in runs][:5] == ["base", "seeds/s1", "seeds/s2", "seeds/s3", "ablation/both/s1"]
    assert [r.name for r in runs][-4:] == ["half/s1", "half/s2", "half/s3", "adaptive/s1"]
    names = _records(runs)
    assert names[:3] == ["mrpc_w1a8_seeds/ternary/s1", "mrpc_w1a8_seeds/tws/s1", "mrpc_w1a8_seeds/bwn/s1"]
    ablation = [n for n in names if "ablation" in n and n.endswith("/s2")]
    assert ablation == [f"mrpc_quant_ablation/{k}/s2" for k in
                        ("both", "no_clip", "percentile", "acts_only", "weights_only")]
    assert names[-4:] == ["mrpc_w1a8_seeds/half/s1", "mrpc_w1a8_seeds/half/s2", "mrpc_w1a8_seeds/half/s3",
                          "mrpc_w1a8_seeds/adaptive/s1"]
    by_name = {r.name: r for r in runs}
    # Every run starts from the base's teacher and half-width model, resolved when it starts.
    seeds = by_name["seeds/s2"]
    argv = sweep.command(seeds, resolve=False)
    assert argv[1:7] == ["-m", "launch.pipeline", "--config",
                         "configs/pipeline.py:task=mrpc,full,act_bits=8,epochs=1,bwn=False,adaptive=False,"
                         "clip=released", "--workdir", "runs/fidelity_mrpc_a8/w1a8_s2"]
    assert '--config.pipeline.stages=("teacher","half","ternary","tws_init","tws","bwn")' in argv
    assert "--config.stages.teacher.checkpoint=runs/fidelity_mrpc_a8/base/teacher/<best>" in argv
    assert "--config.seed=2" in argv and seeds.needs == ("base",)
    # "both" is the seeds run's ternary stage (same workdir); the settings are the tables' rows.
    both = by_name["ablation/both/s1"]
    assert both.workdir == by_name["seeds/s1"].workdir and both.records[0].workdir.endswith("w1a8_s1/ternary")
    assert both.records[0].setting == "TWN 0.5× W2A8 (weights and activations)"


def test_fidelity_settings_name_their_tables_and_derive_their_overrides():
    runs = {r.name: r for r in sweep.load_sweep(
        "fidelity:clip=none,seeds=4,ablations=joint+epochs2+bf16,binary=bwn+bwn_full,tag=x,float32")}
    assert _records([runs["seeds/s4"]]) == [f"x_w1a8_clip_none_seeds/{s}/s4" for s in ("ternary", "tws", "bwn", "bwn_full")]
    # The full-precision half-width model has no clip: its row goes to the unsuffixed table.
    assert _records([runs["half/s4"]]) == ["x_w1a8_seeds/half/s4"]
    joint = runs["ablation/joint/s4"]
    assert joint.workdir == "runs/fidelity_mrpc_a8/joint_clip_none_s4"
    assert joint.records[0].name == "x_clip_none_quant_ablation/joint/s4"
    assert joint.records[0].setting == "TWN 0.5× W2A8, one joint KD stage, on the clip=none preset"
    # The joint stage is as long as the base's two ternary stages together, at stage 1's rate.
    assert joint.overrides["stages.ternary.stage2.epochs"] == 2.0
    assert joint.overrides["stages.ternary.stage2.learning_rate"] == 2.5e-5
    assert runs["ablation/epochs2/s4"].overrides["stages.ternary.stage1.epochs"] == 2.0
    assert joint.overrides["matmul_precision"] == "float32" and joint.overrides["teacher_dtype"] == ""
    assert runs["ablation/bf16/s4"].overrides["matmul_precision"] == "bfloat16"  # its own setting wins
    rerun = sweep.load_sweep("fidelity:parts=half,record_base,base_table=mrpc_w1a8_rerun,base_note=retrained")[0]
    assert [(r.name, r.setting) for r in rerun.records] == [
        ("mrpc_w1a8_rerun/teacher", "full precision, retrained"),
        ("mrpc_w1a8_rerun/half", "full precision 0.5×, retrained")]
    # Another root's base is only read: no base run, nothing needs one.
    other = sweep.load_sweep("fidelity:root=runs/r2,base_dir=runs/r1/base,parts=half,seeds=1")
    assert [r.name for r in other] == ["half/s1"] and other[0].needs == ()
    assert "--config.stages.teacher.checkpoint=runs/r1/base/teacher/<best>" in sweep.command(other[0], resolve=False)


def test_summed_split_pairs_with_the_seeds_run_it_is_split_from():
    runs = {r.name: r for r in sweep.load_sweep("fidelity:parts=seeds+summed,seeds=2,clip=none")}
    assert "summed/s2" not in {r.name for r in sweep.load_sweep("fidelity:seeds=2")}  # on request only
    summed = runs["summed/s2"]
    assert summed.needs == ("base", "seeds/s2")
    assert _records([summed]) == ["mrpc_w1a8_clip_none_seeds/tws_summed/s2"]
    assert summed.records[0].setting == ("TWS 1× (split from TWN 0.5×), trained on the summed halves, "
                                         "on the clip=none preset")
    argv = sweep.command(summed, resolve=False)
    # The seeds run's ternary checkpoint, the same seed: only the training forward differs.
    assert "--config.stages.ternary.checkpoint=runs/fidelity_mrpc_a8/w1a8_clip_none_s2/ternary/<best>" in argv
    assert "--config.stages.tws.student.quant.split_forward=summed" in argv and "--config.seed=2" in argv
    assert '--config.pipeline.stages=("teacher","half","ternary","tws_init","tws")' in argv
    assert runs["seeds/s2"].workdir == "runs/fidelity_mrpc_a8/w1a8_clip_none_s2"
    # Without the seeds part in the sweep, the checkpoint is still read from its workdir.
    alone = sweep.load_sweep("fidelity:parts=summed,seeds=2")
    assert [r.name for r in alone] == ["base", "summed/s2"] and alone[1].needs == ("base",)


@pytest.mark.parametrize("spec,message", [
    ("fidelity:parts=seeds+bogus", "unknown part bogus"),
    ("fidelity:binary=bwn_half", "unknown binary stage bwn_half"),
    ("fidelity:ablations=no_clip+x", "unknown ablation x"),
    ("fidelity:clip=tight", "unknown clip tight"),
    ("fidelity:colour=red", "unknown config argument 'colour'"),
    ("bibert_compare", "give teacher=CHECKPOINT"),
    ("nosuch", "no file"),
])
def test_bad_sweep_arguments_are_refused(spec, message):
    with pytest.raises(UserError, match=message):
        sweep.load_sweep(spec)


def test_a_bad_override_is_refused(tmp_path):
    with pytest.raises(UserError, match="--override 'pretrained': give KEY=VALUE"):
        sweep.main(["fidelity", "--dry-run", "--override", "pretrained"])


def test_only_selects_runs_and_brings_what_they_need(tmp_path):
    runs = sweep.load_sweep("fidelity")
    assert [r.name for r in sweep.select(runs, ["seeds"])] == ["seeds/s1", "seeds/s2", "seeds/s3"]
    assert [r.name for r in sweep.select(runs, ["ablation/*/s1"])] == [
        f"ablation/{k}/s1" for k in ("both", "no_clip", "percentile", "acts_only", "weights_only")]
    # Nothing recorded in an empty results directory: the selected run and the base it needs.
    assert [r.name for r in sweep.plan(runs, ["half/s2"], tmp_path)] == ["base", "half/s2"]
    with pytest.raises(UserError, match="--only 'seed/s1' matches no run"):
        sweep.select(runs, ["seed/s1"])


def test_dry_run_lists_every_run_and_record(tmp_path, capsys):
    assert sweep.main(["fidelity", "--dry-run", "--results-dir", str(tmp_path), "--only", "adaptive"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "base  [to run]" and "adaptive/s1  [to run]" in out
    assert "  record mrpc_w1a8_seeds/adaptive/s1" in out
    assert out[-1] == "2 of 2 runs pending (2 to run, 0 only to record)"


@pytest.mark.parametrize("spec,pending", [
    # README's MRPC W1A8 tables (1 epoch a stage, float32 products): all recorded but seed 3's
    # half-width row (that table's three seeds are 1, 2 and the base's 42).
    ("fidelity:float32,ablations=no_clip+per_token+percentile+acts_only+weights_only+hidden_only+"
     "full_teacher+joint+epochs2+lat+bf16", {"base", "half/s3"}),
    ("fidelity:float32,clip=none,parts=seeds", set()),
    ("fidelity:root=runs/fidelity_mrpc_a8_e2,base_dir=runs/fidelity_mrpc_a8/base,epochs=2,clip=none,tag=mrpc_e2,"
     "binary=bwn+bwn_full,parts=seeds+adaptive", set()),
    ("fidelity:root=runs/fidelity_mrpc_a8_e2,base_dir=runs/fidelity_mrpc_a8/base,epochs=2,tag=mrpc_e2,"
     "binary=bwn_full,parts=seeds", set()),
    ("fidelity:root=runs/fidelity_mrpc_a4_e2,base_dir=runs/fidelity_mrpc_a8/base,epochs=2,act_bits=4,tag=mrpc_e2,"
     "binary=bwn_full,parts=seeds+adaptive", set()),
    ("fidelity:root=runs/fidelity_sts-b_a8_e2,task=sts-b,epochs=2,tag=sts-b_e2,binary=bwn_full,"
     "parts=seeds+half+adaptive,record_base", {"base", "half/s3"}),
    # CoLA's BWN 1.0x row has not been run yet.
    ("fidelity:root=runs/fidelity_cola_a8_e2,task=cola,epochs=2,tag=cola_e2,binary=bwn_full,parts=seeds,"
     "seeds=1,record_base", {"base", "seeds/s1"}),
    ("fidelity:float32,parts=half,record_base,base_table=mrpc_w1a8_rerun,base_note=retrained", {"base", "half/s3"}),
    ("bibert_compare:epochs=0.25,teacher=runs/fidelity_mrpc_a8/base/teacher/finetune/best", set()),
    ("bibert_compare:task=sst-2,epochs=0.2,max_length=64,teacher=runs/pipeline_default/teacher/finetune/best,"
     "data_dir=data/glue_slice", set()),
    ("squad", set()),
    ("embedded_default", set()),
])
def test_the_committed_records_are_the_sweeps_records(spec, pending):
    """README's commands as sweeps name the records results/ holds: rerun, they would rewrite
    those records, and only the runs that never finished are pending."""
    runs = sweep.load_sweep(spec)
    recorded = [rec for run in runs for rec in run.records if sweep.is_recorded(rec, RESULTS)]
    assert recorded, spec
    assert {r.name for r in sweep.plan(runs, (), RESULTS)} == pending


def test_tiny_sweep_trains_records_and_resumes(tmp_path, tiny_pretrained_1layer, monkeypatch, capsys):
    monkeypatch.chdir(ROOT)  # the sweep's configs are named relative to the checkout
    results = tmp_path / "results"
    argv = [f"fidelity:task=sst-2,tiny,seeds=1,parts=seeds,binary=,root={tmp_path}/runs",
            "--override", f"pretrained={tiny_pretrained_1layer}", "--override", "progress_bar=False",
            "--results-dir", str(results)]
    assert sweep.main(argv) == 0
    out = capsys.readouterr().out
    assert out.count("+ python -m launch.pipeline") == 2  # the base, then seed 1's stages
    assert "sweep: 2 record(s) written" in out
    tws = json.loads((results / "sst-2_w1a8_seeds/tws/s1/record.json").read_text())
    assert tws["setting"] == "TWS 1× (split from TWN 0.5×)" and tws["seed"] == 1
    assert tws["workdir"].endswith("runs/w1a8_s1/tws") and 0.0 <= tws["best"]["accuracy"] <= 1.0
    assert tws["config"]["pretrained"] == str(tiny_pretrained_1layer)
    ternary = json.loads((results / "sst-2_w1a8_seeds/ternary/s1/record.json").read_text())
    base_teacher = json.loads((tmp_path / "runs/base/teacher/results.json").read_text())
    assert ternary["config"]["teacher"].endswith(f"runs/base/half/{json.loads((tmp_path / 'runs/base/half/results.json').read_text())['best_checkpoint']}")
    assert base_teacher["best_checkpoint"]
    # Rerun: everything recorded, nothing runs.
    assert sweep.main(argv) == 0
    out = capsys.readouterr().out
    assert "+ python" not in out and "sweep: 0 record(s) written" in out
    # A lost record: the run finished, so it is only recorded again, not retrained.
    (results / "sst-2_w1a8_seeds/tws/s1/record.json").unlink()
    assert sweep.main(argv) == 0
    out = capsys.readouterr().out
    assert "+ python -m launch.pipeline" not in out and "+ python -m launch.record" in out
    assert json.loads((results / "sst-2_w1a8_seeds/tws/s1/record.json").read_text())["best"] == tws["best"]
