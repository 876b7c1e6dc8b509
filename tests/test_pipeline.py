"""The whole method end to end on a tiny real-format model and the shipped SST-2 slice."""

import json

from binarybert_jax import pipeline, storage
from configs import pipeline as pipeline_config


def _shrunk(tiny_pretrained):
    c = pipeline_config.get_config("task=sst-2")
    c.pretrained = str(tiny_pretrained)
    c.train_limit, c.eval_limit = 32, 16
    c.batch_size, c.eval_batch_size = 8, 16
    c.max_seq_length, c.bucket_lengths = 32, (16, 32)
    c.progress_bar = False
    c.pipeline.prune_batches = c.pipeline.sensitivity_batches = 1
    # The BWN baselines are further runs of the same training code; leaving them out keeps the
    # test to the stages with code of their own.
    c.pipeline.bwn = c.pipeline.bwn_full = False
    for hyper in c.stages.values():
        hyper.batch_size = 8
        hyper.stage1_epochs = hyper.stage2_epochs = 0.5  # two steps a phase
    return c


def test_pipeline_end_to_end_and_rerun_skips(tmp_path, tiny_pretrained_1layer):
    report = pipeline.run_pipeline(_shrunk(tiny_pretrained_1layer), tmp_path)
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
    # The split model starts exactly where TWS says: the tws stage's init holds two binary planes.
    params, spec, info = storage.load_model(tmp_path / "tws_init")
    assert spec.quant.split and info["stage"] == "tws"
    assert params["encoder"]["layer_0"]["ffn"]["output"]["kernel"].shape[0] == 2
    md = (tmp_path / "results.md").read_text()
    assert "| TWS 1× (split from TWN 0.5×) | 1-1-8 |" in md
    assert (tmp_path / "learning_curves.png").stat().st_size > 1000
    # A rerun finds every stage complete and reports the same table.
    again = pipeline.run_pipeline(_shrunk(tiny_pretrained_1layer), tmp_path)
    assert json.dumps(again["rows"]) == json.dumps(report["rows"])
