"""SQuAD EM/F1 as the official evaluate-v1.1.py / evaluate-v2.0.py compute them, and the
``launch.evaluate_squad`` command.

The full check runs the official scripts' recorded outputs (``../shared/fixtures/
squad_eval_reference.json``: varied predictions for every dev question of both versions) against
ours to 1e-9. It needs the dev files as well as the fixture (8.7 MB together), so it reads them
from ``../shared`` and skips, saying so, where that folder is absent; the hand-made cases below
always run and pin each rule the scripts apply.
"""

import json

import pytest

from binarybert_jax import squad_metrics as sm
from launch import evaluate_squad


def _data(*qas):
    return [{"title": "t", "paragraphs": [{"context": "c", "qas": [
        {"id": qid, "question": "?", "answers": [{"text": t, "answer_start": 0} for t in golds]}
        for qid, golds in qas]}]}]


def test_normalisation_and_token_f1():
    assert sm.normalize_answer("  The  Denver-Broncos, an  A team! ") == "denverbroncos team"
    assert sm.normalize_answer("théâtre") == "théâtre"  # only ASCII punctuation goes
    data = _data(("a", ["Denver Broncos", "the Broncos"]), ("b", ["Carolina"]), ("c", ["x y z"]))
    # Max over golds; F1 on tokens after normalisation; a missing prediction counts 0 in v1.1.
    out = sm.evaluate_v1(data, {"a": "broncos", "b": "Carolina."})
    f1_a = 1.0  # "broncos" vs "broncos" (the Broncos)
    assert out == {"exact_match": pytest.approx(100 * 2 / 3), "f1": pytest.approx(100 * (f1_a + 1) / 3)}
    out = sm.evaluate_v1(data, {"a": "Denver", "b": "x", "c": "y z w"})
    p, r = 2 / 3, 2 / 3
    assert out["exact_match"] == 0 and out["f1"] == pytest.approx(100 * ((2 * 1 * 0.5 / 1.5) + 0 + 2 * p * r / (p + r)) / 3)
    # Both sides normalising to nothing: v1.1 scores F1 0 (nothing in common), v2.0 scores 1.
    empty = _data(("e", ["the"]))
    assert sm.evaluate_v1(empty, {"e": "a"}) == {"exact_match": 100.0, "f1": 0.0}


def test_v2_no_answer_rules_and_best_threshold():
    data = _data(("h", ["Paris"]), ("n1", []), ("n2", []))
    preds = {"h": "Paris", "n1": "", "n2": "Lyon"}
    out = sm.evaluate_v2(data, preds)
    assert list(out) == ["exact", "f1", "total", "HasAns_exact", "HasAns_f1", "HasAns_total",
                         "NoAns_exact", "NoAns_f1", "NoAns_total"]
    assert out["exact"] == pytest.approx(200 / 3) and out["NoAns_exact"] == 50.0 and out["total"] == 3
    # n2's no-answer probability above the threshold turns its "Lyon" into no answer.
    na = {"h": 0.1, "n1": 0.2, "n2": 0.9}
    out = sm.evaluate_v2(data, preds, na, na_prob_thresh=0.5)
    assert out["exact"] == 100.0 and out["best_exact"] == 100.0 and out["best_exact_thresh"] == 0.1  # after h; n2 (0.9) would cost
    # A missing prediction is left out of v2.0's totals.
    partial = sm.evaluate_v2(data, {"h": "Paris", "n1": ""})
    assert partial["total"] == 2 and partial["NoAns_total"] == 1 and partial["exact"] == 100.0
    assert sm.as_fractions(out)["exact_match"] == 1.0 and sm.as_fractions(out)["total"] == 3


def test_official_scripts_outputs_to_1e9(shared_dir):
    ref = json.loads((shared_dir / "fixtures" / "squad_eval_reference.json").read_text())
    load = lambda name: json.loads((shared_dir / "data" / "squad" / name).read_text())["data"]  # noqa: E731
    checks = [(sm.evaluate_v1(load(ref["v1.1"]["dev_file"]), ref["v1.1"]["predictions"]), ref["v1.1"]["official"])]
    r, d2 = ref["v2.0"], load(ref["v2.0"]["dev_file"])
    checks += [(sm.evaluate_v2(d2, r["predictions"]), r["official_no_na_file"]),
               (sm.evaluate_v2(d2, r["predictions"], r["na_probs"]), r["official_with_na_probs"]),
               (sm.evaluate_v2(d2, r["predictions"], r["na_probs"], 0.5), r["official_with_na_probs_thresh_0.5"])]
    for ours, official in checks:
        assert list(ours) == list(official) or set(ours) == set(official)
        for key, value in official.items():
            assert ours[key] == pytest.approx(value, abs=1e-9, rel=0), key


def test_evaluate_squad_command(tmp_path, capsys):
    data = {"version": "v2.0", "data": _data(("h", ["Paris"]), ("n", []))}
    (tmp_path / "dev.json").write_text(json.dumps(data))
    (tmp_path / "pred.json").write_text(json.dumps({"h": "paris", "n": "x"}))
    (tmp_path / "na.json").write_text(json.dumps({"h": 0.0, "n": 0.7}))
    args = [str(tmp_path / "dev.json"), str(tmp_path / "pred.json")]
    assert evaluate_squad.main(args + ["--na-prob-file", str(tmp_path / "na.json"),
                                       "--na-prob-thresh", "0.5"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["exact"] == 100.0 and out["best_f1_thresh"] == 0.0 and out["NoAns_total"] == 1
    (tmp_path / "v1.json").write_text(json.dumps({"version": "1.1", "data": _data(("h", ["Paris"]))}))
    assert evaluate_squad.main([str(tmp_path / "v1.json"), str(tmp_path / "pred.json")]) == 0
    assert json.loads(capsys.readouterr().out) == {"exact_match": 100.0, "f1": 100.0}
    with pytest.raises(ValueError, match="--na_prob_file is evaluate-v2.0's"):
        evaluate_squad.main([str(tmp_path / "v1.json"), str(tmp_path / "pred.json"), "-n", "x"])
