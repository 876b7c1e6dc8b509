"""Checkpoint selection on a held-out slice of the training set: the slice (disjoint from
training, fixed by its seed, stratified), the selected checkpoint (the held-out argmax), dev read
only once training has ended, and SQuAD v2.0's null threshold chosen on held-out articles."""

import json
import pathlib
import shutil

import numpy as np
import pytest

from binarybert_jax import checkpoints, evaluate, resolve, sharding, squad_metrics, train
from binarybert_jax.data import glue, heldout, loading, squad, tasks
from binarybert_jax.errors import UserError
from binarybert_jax.tokenizer import load_tokenizer

from conftest import run_config
from test_squad_train import _finetune, _squad_file

SLICE = pathlib.Path(__file__).resolve().parents[1] / "data" / "glue_slice"


def test_the_slice_is_disjoint_from_training_stratified_and_fixed_by_its_seed(tokenizer):
    full, _ = loading.load_task_data(tasks.get_task("sst-2"), tokenizer, data_dir=SLICE, max_length=64, cache_dir=None,
                                     dev=False)
    labels = full["labels"]
    train_idx, held_idx = heldout.split_indices(labels, False, heldout.HeldOut(seed=0))
    # 10% of the 2,000 shipped sentences, the rest train; together every example exactly once.
    assert len(held_idx) == 200 and len(train_idx) == 1800
    assert not set(train_idx) & set(held_idx)
    assert sorted(np.concatenate([train_idx, held_idx])) == list(range(2000))
    # Stratified: each label's share of the slice is its share of the training file (to one example).
    for label in (0, 1):
        assert abs((labels[held_idx] == label).sum() - 200 * (labels == label).mean()) <= 1
    # Fixed by its seed, whatever else runs: the same seed the same slice, another seed another.
    assert np.array_equal(heldout.split_indices(labels, False, heldout.HeldOut(seed=0))[1], held_idx)
    assert not np.array_equal(heldout.split_indices(labels, False, heldout.HeldOut(seed=1))[1], held_idx)
    # Capped at max_examples.
    assert len(heldout.split_indices(labels, False, heldout.HeldOut(0.5, 150, 0))[1]) == 150

    # Through the data path a run uses: the held-out split is the first evaluation split, no dev
    # split is read, and no held-out sentence is among the training ones.
    train_arrays, evals = loading.load_task_data(tasks.get_task("sst-2"), tokenizer, data_dir=SLICE, max_length=64,
                                                 cache_dir=None, heldout=heldout.HeldOut(), dev=False)
    assert list(evals) == ["heldout"] and len(evals["heldout"]["labels"]) == 200
    assert np.array_equal(evals["heldout"]["input_ids"], full["input_ids"][held_idx])
    assert np.array_equal(train_arrays["input_ids"], full["input_ids"][train_idx])


def test_sts_b_is_stratified_by_score_bin(glue_dir):
    examples = glue.read_examples(glue_dir, tasks.get_task("sts-b"), "train")
    scores = np.array([e.label for e in examples], np.float32)
    train_idx, held_idx = heldout.split_indices(scores, True, heldout.HeldOut())
    assert len(held_idx) == round(0.1 * len(scores)) and not set(train_idx) & set(held_idx)
    bins = heldout.strata(scores, True)
    assert sorted(set(bins)) == list(range(heldout.SCORE_BINS))
    for b in range(heldout.SCORE_BINS):
        assert abs((bins[held_idx] == b).sum() - len(held_idx) * (bins == b).mean()) <= 1


def test_squad_holds_out_whole_articles(tmp_path, tokenizer):
    _squad_file(tmp_path / "squad")
    train_arrays, evals = squad.load_squad_data(tasks.get_task("squad1"), tokenizer, data_dir=tmp_path / "squad",
                                                max_length=128, doc_stride=64, max_query_length=32,
                                                dev_split=0.5, heldout=heldout.HeldOut(), dev=False)
    held = evals["heldout"]
    assert list(evals) == ["heldout"]
    # The dev-split protocol trains on 4 articles of 8 questions: one whole article is held out
    # (the first reaching 10% of 32 questions), the other 3 train.
    assert {ex.article for ex in held.examples} == {ex.article for ex in held.examples[:1]}
    assert len(held.examples) == 8 and len(held.data) == 1
    contexts = {ex.context for ex in held.examples}
    assert len(train_arrays["input_ids"]) > 0
    all_train = squad.examples_from_dataset(squad.split_by_article(
        squad.read_dataset(tmp_path / "squad" / "dev-v1.1.json")[1], 0.5)[0])
    trained = [ex for ex in all_train if ex.context not in contexts]
    assert len(trained) == 24
    assert heldout.split_articles([ex.article for ex in all_train], heldout.HeldOut()) == \
        heldout.split_articles([ex.article for ex in all_train], heldout.HeldOut())


def test_evaluations_are_counted_in_examples_seen():
    # Every 8 examples: batch 4 evaluates every 2 steps, batch 8 every step, batch 16 every step;
    # 0: once an epoch; the last step always.
    assert [s for s in range(1, 11) if train.eval_due(s, 10, 5, 4, 8)] == [2, 4, 6, 8, 10]
    assert [s for s in range(1, 6) if train.eval_due(s, 5, 5, 8, 8)] == [1, 2, 3, 4, 5]
    assert [s for s in range(1, 11) if train.eval_due(s, 10, 5, 4, 12)] == [3, 6, 9, 10]
    assert [s for s in range(1, 12) if train.eval_due(s, 11, 5, 4, 0)] == [5, 10, 11]


def _sts_config(tiny_pretrained, data_dir, **overrides):
    return run_config(tiny_pretrained, data_dir, "sts-b", **{
        "train_limit": 64, "stage2.epochs": 1.0, "eval_every_examples": 8, "log_every_steps": 2,
        "checkpoint_every_steps": 100, **overrides})


def test_selected_checkpoint_is_the_heldout_argmax_and_dev_waits_for_the_end(tmp_path, tiny_pretrained,
                                                                             glue_dir):
    data = tmp_path / "glue"
    shutil.copytree(glue_dir / "STS-B", data / "STS-B")
    dev_file = data / "STS-B" / "dev.tsv"
    dev_text = dev_file.read_text()
    dev_file.unlink()
    cfg = _sts_config(tiny_pretrained, data)
    with pytest.raises(UserError, match="dev.tsv"):
        train.train_and_evaluate(cfg, tmp_path / "run")
    # With no dev file at all, the phase trained to its last step and selected on the held-out
    # slice at every evaluation: 64 - 6 held out = 58 examples, 14 steps of 4, one evaluation
    # every 8 examples (2 steps).
    logs = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    held = {m["step"]: m["heldout/pearson"] for m in logs if "heldout/pearson" in m}
    assert sorted(held) == [2, 4, 6, 8, 10, 12, 14]
    assert not any(k.startswith("eval/") for m in logs for k in m)
    trained = [m["step"] for m in logs if "total" in m]
    assert max(trained) == 13  # losses are logged at the step count before their update
    # Selecting on dev needs dev from the first evaluation: refused before any step.
    with pytest.raises(UserError, match="dev.tsv"):
        train.train_and_evaluate(_sts_config(tiny_pretrained, data, select_on="dev"), tmp_path / "on_dev")
    assert not (tmp_path / "on_dev" / "metrics.jsonl").exists()

    # With the dev file back, the rerun trains nothing more: it scores dev at the selected and at
    # the final checkpoint, and finishes.
    dev_file.write_text(dev_text)
    result = train.train_and_evaluate(cfg, tmp_path / "run")
    logs_after = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in logs_after if "total" in m] == trained
    phase = result["phases"][-1]
    best_step = max(held, key=lambda s: (held[s], -s))  # the first of the highest
    assert result["protocol"] == "heldout" and phase["best_step"] == best_step
    assert result["selection"]["split"] == "heldout" and result["selection"]["step"] == best_step
    assert result["selection"]["scores"]["pearson"] == held[best_step]
    # Dev at the selected checkpoint is that checkpoint's dev score, and at the final one the last's.
    task = tasks.get_task("sts-b")
    dev = resolve.load_dev(cfg, task, load_tokenizer(resolve.tokenizer_dir(cfg)))
    mesh = sharding.make_mesh()
    for which, key in (("best", "dev_selected"), ("final", "dev_final")):
        params, spec, info = checkpoints.load_model(tmp_path / "run" / "finetune" / which)
        scores = evaluate.evaluate_model(spec, params, task, dev, cfg.eval_batch_size, mesh)
        assert scores == pytest.approx(result[key]) and info["dev"] == result[key]
    assert info["step"] == 14 and result["best"] == result["dev_selected"]
    _, _, best_info = checkpoints.load_model(tmp_path / "run" / "finetune" / "best")
    assert best_info["step"] == best_step and best_info["selected_on"] == "heldout"
    # A workdir of the dev protocol is not resumed under the other one.
    with pytest.raises(UserError, match="select_on"):
        train.train_and_evaluate(_sts_config(tiny_pretrained, data, select_on="dev"), tmp_path / "run")


def test_early_stopping_reads_the_heldout_slice(tmp_path, tiny_pretrained, glue_dir):
    cfg = _sts_config(tiny_pretrained, glue_dir, early_stop_evals=1, **{"stage2.learning_rate": 0.3})
    result = train.train_and_evaluate(cfg, tmp_path / "run")
    logs = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    held = [(m["step"], m["heldout/pearson"]) for m in logs if "heldout/pearson" in m]
    stopped = result["selection"].get("stopped_early_at")
    # It stops at the first evaluation that is not better than the best before it.
    first_worse = next(s for i, (s, v) in enumerate(held) if i and v <= max(u for _, u in held[:i]))
    assert stopped == first_worse == held[-1][0] < 14 and result["phases"][-1]["steps"] == stopped
    # Killed before its results were written, the rerun resumes a finished phase: no step more.
    (tmp_path / "run" / "finetune" / "results.json").unlink()
    again = train.train_and_evaluate(cfg, tmp_path / "run")
    assert again["phases"][-1]["steps"] == stopped and again["dev_final"] == result["dev_final"]


def test_squad2_null_threshold_is_chosen_on_heldout_articles(tmp_path, tiny_pretrained):
    _squad_file(tmp_path / "squad2", "2.0")
    cfg = _finetune(tiny_pretrained, tmp_path / "squad2", task="squad2",
                    **{"stage2.epochs": 2.0, "eval_every_examples": 64})
    result = train.train_and_evaluate(cfg, tmp_path / "run")
    chosen = result["selection"]["chosen"]
    task = tasks.get_task("squad2")
    _, sets = resolve.load_data(cfg, task, load_tokenizer(resolve.tokenizer_dir(cfg)))
    held = sets["heldout"]
    assert len(held.data) == 1  # one whole article of the four the dev-split protocol trains on
    mesh = sharding.make_mesh()
    for which, key in (("best", "selected"), ("final", "final")):
        params, spec, _ = checkpoints.load_model(tmp_path / "run" / "finetune" / which)
        step = evaluate.make_predict_step(spec.build(), mesh)
        replicated = sharding.replicate(params, mesh)
        held.answer_options = {**held.answer_options, "null_threshold": float("inf")}
        answers, diffs = evaluate.squad_answers(step, replicated, held, cfg.eval_batch_size, mesh)
        best = squad_metrics.evaluate("2.0", held.data, answers, diffs)["best_f1_thresh"]
        assert chosen[key]["null_threshold"] == pytest.approx(best)
