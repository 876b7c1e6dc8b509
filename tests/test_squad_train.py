"""SQuAD through the existing loop, end to end on a tiny model (real MiniLM tokenizer) and a
hand-made SQuAD file: fine-tuning whose span loss falls, evaluation by the official EM/F1, the
BinaryBERT pipeline (prune, ternary two-stage KD, split, binary) on a span head, and predictions."""

import json

import numpy as np
import pytest

from binarybert_jax import checkpoints, pipeline, train
from configs import finetune as finetune_config
from configs import pipeline as pipeline_config
from launch import export as export_main
from launch import predict as predict_main
from launch import record, tables

CITIES = [("France", "Paris"), ("Italy", "Rome"), ("Spain", "Madrid"), ("Japan", "Tokyo"),
          ("Egypt", "Cairo"), ("Peru", "Lima"), ("Kenya", "Nairobi"), ("Chile", "Santiago")]
COLOURS = ["red", "blue", "green", "white", "black", "yellow", "orange", "purple"]


def _squad_file(path, version="1.1"):
    """8 articles of 8 questions: the answer is the word after a fixed cue, so a model can learn it;
    one long context spans several windows; v2.0 adds unanswerable questions."""
    data = []
    for a, (country, city) in enumerate(CITIES):
        colour = COLOURS[a]
        filler = " ".join(["It has many old streets and busy markets."] * (12 if a == 0 else 1))
        context = (f"{country} is a country. {filler} The capital of {country} is {city}. "
                   f"The flag of {country} is mostly {colour}.")
        qas = []
        for q in range(8):
            if q % 2 == 0:
                question, answer = f"What is the capital of {country}?", city
            else:
                question, answer = f"What colour is the flag of {country}?", colour
            qa = {"id": f"{a}-{q}", "question": question,
                  "answers": [{"text": answer, "answer_start": context.index(answer)}]}
            if version == "2.0" and q == 7:
                qa = {"id": f"{a}-{q}", "question": "Who won the cup?", "answers": [], "is_impossible": True}
            qas.append(qa)
        data.append({"title": country, "paragraphs": [{"context": context, "qas": qas}]})
    path.mkdir(parents=True, exist_ok=True)
    name = f"dev-v{version}.json"
    (path / name).write_text(json.dumps({"version": version if version == "1.1" else "v2.0", "data": data}))
    return path / name


def _finetune(tiny_pretrained, data_dir, task="squad1", **overrides):
    c = finetune_config.get_config(f"task={task},tiny")
    c.pretrained, c.data_dir, c.progress_bar = str(tiny_pretrained), str(data_dir), False
    c.stage2.learning_rate, c.stage2.epochs, c.log_every_steps = 2e-3, 8.0, 4
    c.eval_batch_size, c.eval_every_examples = 16, 16 * c.batch_size
    c.update_from_flattened_dict(overrides)
    return c


def test_span_finetuning_loss_falls_and_is_scored_by_f1(tmp_path, tiny_pretrained):
    _squad_file(tmp_path / "squad")
    result = train.train_and_evaluate(_finetune(tiny_pretrained, tmp_path / "squad"), tmp_path / "run")
    assert result["main_metric"] == "f1" and set(result["best"]) == {"exact_match", "f1"}
    logs = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    losses = [m["label_loss"] for m in logs if "label_loss" in m]
    assert len(losses) >= 4 and np.mean(losses[-2:]) < 0.6 * np.mean(losses[:2])
    # The dev-split protocol: 4 articles train (32 questions), the other 4 evaluate; the best
    # checkpoint is the one of the best F1.
    evals = [m for m in logs if "heldout/f1" in m]
    assert result["selection"]["scores"]["f1"] == max(m["heldout/f1"] for m in evals)
    _, spec, info = checkpoints.load_model(tmp_path / "run" / result["best_checkpoint"])
    assert spec.head == "span" and info["task"] == "squad1"


@pytest.mark.slow
def test_pipeline_on_squad_and_predictions(tmp_path, tiny_pretrained_1layer, capsys):
    dev = _squad_file(tmp_path / "squad")
    c = pipeline_config.get_config("task=squad1,tiny,bwn=False,adaptive=False")
    c.pretrained, c.data_dir, c.progress_bar = str(tiny_pretrained_1layer), str(tmp_path / "squad"), False
    c.eval_limit = 8
    # The pruned half-width model serves as the half-width teacher and start (no distillation
    # stage of its own: the GLUE pipeline test covers that stage's code).
    c.pipeline.stages = ("teacher", "half_pruned", "ternary", "tws_init", "tws")
    for name in ("ternary", "tws"):
        c.stages[name].teacher = "half_pruned"
    c.stages.ternary.init = "half_pruned"
    report = pipeline.run_pipeline(c, tmp_path / "pipe")
    rows = {r["model"]: r for r in report["rows"]}
    assert list(rows) == ["teacher", "ternary", "tws"] and report["main_metric"] == "f1"
    assert rows["tws"]["bits"] == "1-1-8" and rows["ternary"]["width"] == "2/4 heads" and rows["tws"]["split"]
    for r in rows.values():
        assert 0.0 <= r["best"]["f1"] <= 1.0
    # Stage 1 trained on hidden states and attention scores, stage 2 on the start/end logits.
    logs = [json.loads(line) for line in (tmp_path / "pipe" / "ternary" / "metrics.jsonl").read_text().splitlines()]
    assert any("attention_loss" in m and m["phase"] == "stage1" for m in logs)
    assert any("prediction_loss" in m and m["phase"] == "stage2" for m in logs)

    # Predictions from the split binary model's packed file (launch.export of a span head).
    packed = tmp_path / "tws.safetensors"
    assert export_main.main(["--ckpt", pipeline.row_checkpoint(tmp_path / "pipe", rows["tws"]), "--out",
                             str(packed)]) == 0
    out = tmp_path / "pred" / "predictions.json"
    assert predict_main.main(["--model", str(packed), "--task", "squad1", "--input", str(dev),
                              "--out", str(out), "--max-length", "128"]) == 0
    assert len(json.loads(out.read_text())) == 64
    assert "exact_match" in capsys.readouterr().out
    with pytest.raises(Exception, match="squad1 model, not a squad2 one"):
        predict_main.main(["--model", str(packed), "--task", "squad2", "--input", str(dev),
                           "--out", str(tmp_path / "x.json"), "--max-length", "128"])


def test_squad2_finetune_reports_no_answer_splits_and_writes_na_probs(tmp_path, tiny_pretrained):
    dev = _squad_file(tmp_path / "squad2", "2.0")
    result = train.train_and_evaluate(
        _finetune(tiny_pretrained, tmp_path / "squad2", task="squad2", **{"stage2.epochs": 1.0}),
        tmp_path / "run")
    assert {"exact_match", "f1", "HasAns_f1", "NoAns_f1"} <= set(result["best"])
    out = tmp_path / "p" / "predictions.json"
    assert predict_main.main(["--model", str(tmp_path / "run" / result["final_checkpoint"]), "--task",
                              "squad2", "--input", str(dev), "--out", str(out), "--max-length", "128"]) == 0
    na = json.loads((tmp_path / "p" / "na_probs.json").read_text())
    assert set(na) == set(json.loads(out.read_text())) and len(na) == 64

    # Recorded under results/ and tabulated in a README section: EM/F1 and the HasAns/NoAns splits.
    results = tmp_path / "results"
    assert record.main([str(tmp_path / "run"), "--name", "sq2/teacher", "--setting", "full precision",
                        "--results-dir", str(results)]) == 0
    rec = json.loads((results / "sq2" / "teacher" / "record.json").read_text())
    assert rec["task"] == "squad2" and rec["best"] == result["best"] and rec["submission"] is None
    with pytest.raises(ValueError, match="squad2 has no GLUE submission"):
        record.main([str(tmp_path / "run"), "--name", "sq2/x", "--results-dir", str(results),
                     "--test-file", str(dev)])
    readme = tmp_path / "README.md"
    readme.write_text("<!-- results:sq2 -->\n<!-- /results -->\n")
    assert tables.main(["--readme", str(readme), "--results-dir", str(results)]) == 0
    lines = readme.read_text().splitlines()
    header = [c.strip() for c in lines[1].strip("|").split("|")]
    metrics = ("exact_match", "f1", "HasAns_exact", "HasAns_f1", "NoAns_exact", "NoAns_f1")
    assert header == ["setting", "protocol", "n", "held-out f1 (at selection)"] + [
        f"{m} (dev at {which})" for m in metrics for which in ("selected", "final")]
    row = [c.strip() for c in lines[3].strip("|").split("|")]
    assert row[:4] == ["full precision", "held-out-selected", "1",
                       f"{100 * result['selection']['scores']['f1']:.1f}"]
    assert row[4:] == [f"{100 * result[key][m]:.1f}" for m in metrics
                       for key in ("dev_selected", "dev_final")]
