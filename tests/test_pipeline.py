"""The whole method end to end on a tiny real-format model and the shipped SST-2 slice."""

import json
import logging
import shutil

import pytest

from binarybert_jax import checkpoints, pipeline, train
from figures import assert_readable_png
from configs import pipeline as pipeline_config
from launch import record


def _tiny(tiny_pretrained):
    # The BWN baseline is a further run of the same training code; leaving it out keeps the test to
    # the stages with code of their own.
    c = pipeline_config.get_config("task=sst-2,tiny,bwn=False")
    c.pretrained = str(tiny_pretrained)
    c.progress_bar = False
    return c


@pytest.mark.slow
def test_pipeline_end_to_end_and_rerun_skips(tmp_path, tiny_pretrained_1layer, caplog):
    ours = logging.getLogger("binarybert_jax")
    propagates, ours.propagate = ours.propagate, True  # the mains turn it off; caplog reads the root
    try:
        with caplog.at_level(logging.INFO, logger="binarybert_jax"):
            report = pipeline.run_pipeline(_tiny(tiny_pretrained_1layer), tmp_path)
    finally:
        ours.propagate = propagates
    # Each stage says which of how many it is as it starts and how long it took; its training's
    # progress lines name it and the time left in it.
    lines = [r.getMessage() for r in caplog.records]
    stages = ("teacher", "half_pruned", "half", "ternary", "tws_init", "tws", "adaptive_init", "adaptive")
    for number, name in enumerate(stages, 1):
        assert any(m.startswith(f"pipeline: stage {number}/8 {name} (") and m.endswith("into the run")
                   for m in lines), name
        assert any(m.startswith(f"pipeline: stage {number}/8 {name} done in ") for m in lines), name
    progress = [m for m in lines if m.startswith("stage 4/8 ternary, phase ")]
    assert [m.split(",")[1].split(":")[0] for m in progress] == [" phase stage1", " phase stage2"]
    assert progress[0].endswith(" in the stage") and " left in the phase, " in progress[0]
    assert lines[-1].startswith("pipeline: 8 stages and the report done in ")
    # The report keeps where the invocation's time went: every stage's wall seconds, within the
    # whole, and the compiling the last line names.
    spent = report["run_time"]
    assert list(spent["stage_seconds"]) == list(stages)
    assert 0 < sum(spent["stage_seconds"].values()) <= spent["wall_seconds"]
    assert 0 < spent["compile_seconds"] < spent["wall_seconds"]
    assert lines[-1].endswith(f"{train.format_duration(spent['compile_seconds'])} of it compiling")
    rows = {r["model"]: r for r in report["rows"]}
    assert list(rows) == ["teacher", "half", "ternary", "tws", "adaptive"]
    assert rows["teacher"]["bits"] == "32-32-32" and rows["ternary"]["bits"] == "2-2-8"
    assert rows["tws"]["bits"] == "1-1-8" and rows["tws"]["split"]
    assert rows["half"]["width"] == "2/4 heads"
    # Sizes follow the accounting: the split model is larger than BWN, smaller than twice TWN 0.5x.
    assert rows["adaptive"]["size_bits"] < rows["tws"]["size_bits"]
    assert rows["tws"]["gflops"] == rows["ternary"]["gflops"] < rows["teacher"]["gflops"]
    for r in rows.values():
        assert 0.0 <= r["best"]["accuracy"] <= 1.0 and 0.0 <= r["final"]["accuracy"] <= 1.0
    plan = report["adaptive"]
    assert plan["size_no_split_mb"] <= plan["size_mb"] <= plan["budget_mb"] <= plan["size_all_split_mb"]
    assert set(plan["orders_right_after_split"]) == {"adaptive", "min", "random", "max"}
    # Selection never saw dev: every stage selected on the held-out slice (3 of the 32 sentences),
    # and the adaptive split's orders were compared there too.
    assert report["protocol"] == "heldout" and plan["orders_scored_on"] == "heldout"
    for r in rows.values():
        assert r["protocol"] == "heldout" and r["selection"]["split"] == "heldout"
        assert r["dev_selected"] == r["best"] and r["dev_final"] == r["final"]
        assert all(set(o) >= {"heldout"} and "dev" not in o for o in plan["orders_right_after_split"].values())
    half = json.loads((tmp_path / "half" / "results.json").read_text())
    assert len([m for m in (tmp_path / "half" / "metrics.jsonl").read_text().splitlines()
                if "heldout/accuracy" in m]) >= 1 and half["protocol"] == "heldout"
    # The split model starts exactly where TWS says: the tws stage's init holds two binary planes.
    params, spec, info = checkpoints.load_model(tmp_path / "tws_init")
    assert spec.quant.split and info["stage"] == "tws"
    assert params["encoder"]["layer_0"]["ffn"]["output"]["kernel"].shape[0] == 2
    md = (tmp_path / "results.md").read_text()
    assert md.rstrip().endswith("the rest writing the report.") and "by stage: teacher " in md
    assert "| TWS 1× (split from TWN 0.5×) | 1-1-8 |" in md
    assert "| held-out accuracy at selection | accuracy dev: selected / final |" in md
    assert "| accuracy (held-out) |" in md  # the split orders' comparison
    assert_readable_png(tmp_path / "training_curves.png")
    # The papers' figure: per KD phase the training loss of each quantized model (TWS against the
    # ternary model it was split from), and beneath it, apart, the held-out metric at each evaluation.
    quantized = [pipeline.StageResult(m, rows[m]["description"], pipeline.row_checkpoint(tmp_path, rows[m]), "",
                                      {}, {}, checkpoints.load_model_spec(pipeline.row_checkpoint(tmp_path, rows[m])),
                                      str(tmp_path / m))
                 for m in ("ternary", "tws")]
    fig = pipeline.plot_training_curves(tmp_path / "again.png", quantized, "accuracy")
    (loss1, loss2), (dev1, dev2) = [fig.axes[:2], fig.axes[2:4]]
    assert len(fig.axes) == 4 and [loss1.get_title(), loss2.get_title()] == [
        "stage 1: intermediate-layer KD", "stage 2: prediction-layer KD"]
    assert len(loss1.get_lines()) == len(loss2.get_lines()) == 2 and loss1.get_yscale() == "log"
    assert not dev1.get_lines() and len(dev2.get_lines()) == 2  # stage 1 trains no logits
    assert dev2.get_ylabel() == "held-out accuracy (%)" and loss2.get_xlabel() == "" and dev2.get_xlabel()
    lo, hi = dev2.get_ylim()
    assert hi - lo >= 5  # a one-point difference does not fill the panel
    assert len(fig.legends) == 1 and not any(ax.get_legend() for ax in fig.axes)  # off the data
    assert [t.get_text() for t in fig.legends[0].get_texts()] == [r.description for r in quantized]
    # What the figure draws: each quantized stage's training loss per KD phase, dev at each evaluation.
    curves = pipeline.training_curves(tmp_path / "tws", "accuracy")
    assert sorted(curves) == ["stage1", "stage2"] and curves["stage1"]["eval"] == []
    assert curves["stage1"]["loss"] and all(loss > 0 for _, loss in curves["stage1"]["loss"])
    assert [s for s, _ in curves["stage2"]["eval"]] == [2] and curves["stage2"]["split"] == "heldout"  # two steps, evaluated at the end
    # Recorded for results/: one record a trained stage, its description the setting.
    results = tmp_path.parent / f"{tmp_path.name}_results"  # records never go into what they read
    records = record.record(tmp_path, "tiny_pipeline", results_dir=results, find_test_file=False)
    assert [r["name"] for r in records] == [f"tiny_pipeline/{m}" for m in rows]
    assert records[3]["setting"] == "TWS 1× (split from TWN 0.5×)" and records[3]["best"] == rows["tws"]["best"]
    assert (results / "tiny_pipeline" / "pipeline.json").is_file()
    # A rerun finds every stage complete and reports the same table.
    again = pipeline.run_pipeline(_tiny(tiny_pretrained_1layer), tmp_path)
    assert json.dumps(again["rows"]) == json.dumps(report["rows"])
    assert again["run_time"]["wall_seconds"] < spent["wall_seconds"]  # it counts what it ran
    # The report names the stages' models relative to the workdir: a copy of the workdir is a
    # workdir of its own, whose rerun finds every stage complete (nothing retrained).
    assert rows["tws"]["checkpoint"] == "tws/stage2/best"
    copy = tmp_path.parent / f"{tmp_path.name}_copy"
    shutil.copytree(tmp_path, copy)
    before = sorted(p.name for p in (copy / "tws" / "stage2" / "ckpt").iterdir())
    moved = pipeline.run_pipeline(_tiny(tiny_pretrained_1layer), copy)
    assert json.dumps(moved["rows"]) == json.dumps(report["rows"])
    assert sorted(p.name for p in (copy / "tws" / "stage2" / "ckpt").iterdir()) == before


def test_every_stage_setting_takes_effect_or_is_refused():
    c = pipeline_config.get_config("task=sst-2,tiny")
    c.stages.ternary.stage1.epochs = 3.0
    c.stages.ternary.student.quant.weight_method = "lat"
    run = pipeline.stage_config(c, "ternary", teacher="T", init="I")
    assert run.stage1.epochs == 3.0 and run.student.quant.weight_method == "lat"
    assert (run.teacher, run.init_checkpoint) == ("T", "I")
    assert run.batch_size == 8 and run.kd.mode == "two_stage" and run.task == "sst-2"
    # The LSQ recipe's ReLU students are config, visible and overridable.
    c4 = pipeline_config.get_config("task=sst-2,act_bits=4")
    assert c4.stages.tws.student.hidden_act == "relu" and c4.stages.half.student.hidden_act == ""
    pipeline.check_config(c)

    with pytest.raises(AttributeError):  # the locked CLI config refuses training keys at the top
        c.lock()
        c.batch_size = 16
    c.unlock()
    c.batch_size = 16
    with pytest.raises(pipeline.PipelineConfigError, match=r"top-level \['batch_size'\].*stages"):
        pipeline.check_config(c)
    del c["batch_size"]
    c.stages.tws.init = "bwn"  # bwn runs after tws
    with pytest.raises(pipeline.PipelineConfigError, match="stages.tws.init='bwn' must name a stage that runs before"):
        pipeline.check_config(c)
    c.stages.tws.init = "tws_init"
    c.stages.tws.epochs = 2.0  # a key that belongs in stage1/stage2
    with pytest.raises(pipeline.PipelineConfigError, match=r"stages.tws \(train\): unknown keys \['epochs'\]"):
        pipeline.check_config(c)
    del c.stages.tws["epochs"]
    c.pipeline.stages = c.pipeline.stages + ("nope",)
    with pytest.raises(pipeline.PipelineConfigError, match="'nope', which config.stages does not declare"):
        pipeline.check_config(c)


def test_the_slice_default_batches_at_two_lengths_and_full_runs_at_every_sixteen_tokens():
    # Each bucket is one more compiled train step in every phase: on the 2,000-sentence slice a
    # compilation costs more than the padding the buckets between 16 and 64 would save.
    assert tuple(pipeline_config.get_config().bucket_lengths) == (16, 64)
    assert tuple(pipeline_config.get_config("task=mrpc,full").bucket_lengths) == tuple(range(16, 129, 16))


def test_clip_presets_set_every_quantized_stage():
    released = pipeline_config.get_config("task=sst-2")
    for preset, key, value in (("none", "clip_init", 1e4), ("percentile", "clip_percentile", 99.9)):
        c = pipeline_config.get_config(f"task=sst-2,clip={preset}")
        for stage in ("ternary", "tws", "bwn", "adaptive"):
            assert c.stages[stage].student.quant[key] == value
            assert released.stages[stage].student.quant[key] == {"clip_init": 2.5, "clip_percentile": 0.0}[key]
        assert c.stages.half.student.quant.act_bits == 32  # full precision: nothing to clip
    with pytest.raises(ValueError, match="clip='wide'; allowed"):
        pipeline_config.get_config("task=sst-2,clip=wide")
    with pytest.raises(ValueError, match="LSQ"):
        pipeline_config.get_config("task=sst-2,act_bits=4,clip=none")


def test_bibert_stage_is_a_1_1_1_row_off_by_default():
    assert "bibert" not in pipeline_config.get_config("task=sst-2").pipeline.stages
    on = pipeline_config.get_config("task=sst-2,bibert")
    pipeline.check_config(on)
    assert "bibert" in on.pipeline.stages
    run = pipeline.stage_config(on, "bibert", teacher="T", init="T")
    q = run.student.quant
    assert run.kd.mode == "dmd" and (q.weight_bits, q.embed_bits, q.act_bits) == (1, 1, 1)
    assert q.attention == "bool" and q.weight_method == q.embed_method == "bibert"
    full = pipeline_config.get_config("task=mrpc,full,bibert")
    assert (full.stages.bibert.stage2.epochs, full.stages.bibert.stage2.learning_rate) == (20.0, 2e-4)


@pytest.mark.slow
def test_bibert_stage_trains_and_reports_a_1_1_1_row(tmp_path, tiny_pretrained_1layer):
    c = pipeline_config.get_config("task=sst-2,tiny,bibert")
    c.pretrained, c.progress_bar = str(tiny_pretrained_1layer), False
    c.pipeline.stages = ("teacher", "bibert")
    report = pipeline.run_pipeline(c, tmp_path)
    rows = {r["model"]: r for r in report["rows"]}
    assert list(rows) == ["teacher", "bibert"] and rows["bibert"]["bits"] == "1-1-1"
    assert 0.0 <= rows["bibert"]["final"]["accuracy"] <= 1.0
    _, spec, _ = checkpoints.load_model(tmp_path / rows["bibert"]["checkpoint"])
    assert spec.quant.attention == "bool" and spec.quant.weight_method == "bibert"
