"""SQuAD's exact match and F1, computed exactly as the official evaluation scripts do.

``evaluate_v1`` is evaluate-v1.1.py and ``evaluate_v2`` evaluate-v2.0.py, rewritten as functions
that return what the scripts print (percentages, the scripts' keys), summing in the dataset's
order so every number equals theirs (``tests/test_squad_metrics.py`` checks them against the
scripts' own outputs on every dev question). The two versions differ on purpose, as the scripts do:

- v1.1 counts a question without a prediction as 0 (in the total); F1 is 0 when nothing is in
  common, also when both answers normalise to nothing.
- v2.0 leaves a question without a prediction out; an unanswerable question's gold is ``""``, so
  F1 and EM are 1 exactly when the prediction normalises to nothing; a no-answer probability per
  question above ``na_prob_thresh`` counts as predicting no answer; with probabilities given it
  also reports the best threshold for EM and for F1 (``best_exact``/``best_f1``).

Answer normalisation (both): lower case, ASCII punctuation removed, the articles a/an/the
removed, whitespace collapsed.

The training loop reports these scores as fractions like the GLUE metrics (``as_fractions``).
"""

from __future__ import annotations

import collections
import re
import string
from typing import Mapping, Optional, Sequence

_PUNCTUATION = frozenset(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)

# Keys that are counts, not percentages (v2.0's totals).
_COUNT_KEYS = ("total", "HasAns_total", "NoAns_total")


def normalize_answer(s: str) -> str:
    """Lower case, remove punctuation, articles and extra whitespace (the scripts' order)."""
    s = "".join(ch for ch in s.lower() if ch not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", s).split())


# ---- evaluate-v1.1.py ---------------------------------------------------------------------------
def _f1_v1(prediction: str, ground_truth: str) -> float:
    pred = normalize_answer(prediction).split()
    gold = normalize_answer(ground_truth).split()
    same = sum((collections.Counter(pred) & collections.Counter(gold)).values())
    if same == 0:
        return 0
    precision, recall = same / len(pred), same / len(gold)
    return (2 * precision * recall) / (precision + recall)


def _exact_v1(prediction: str, ground_truth: str) -> bool:
    return normalize_answer(prediction) == normalize_answer(ground_truth)


def evaluate_v1(dataset: Sequence[Mapping], predictions: Mapping[str, str]) -> dict[str, float]:
    """evaluate-v1.1.py's ``evaluate``.

    Args:
      dataset: the ``data`` list of a SQuAD JSON file (articles with paragraphs with ``qas``).
      predictions: question id -> predicted answer text.
    Returns:
      ``{"exact_match": %, "f1": %}`` over every question of ``dataset`` (missing ones score 0).
    """
    f1 = exact_match = total = 0
    for article in dataset:
        for paragraph in article["paragraphs"]:
            for qa in paragraph["qas"]:
                total += 1
                if qa["id"] not in predictions:
                    continue
                golds = [a["text"] for a in qa["answers"]]
                prediction = predictions[qa["id"]]
                exact_match += max(_exact_v1(prediction, g) for g in golds)
                f1 += max(_f1_v1(prediction, g) for g in golds)
    return {"exact_match": 100.0 * exact_match / total, "f1": 100.0 * f1 / total}


# ---- evaluate-v2.0.py ---------------------------------------------------------------------------
def _tokens(s: str) -> list[str]:
    return normalize_answer(s).split() if s else []


def _exact_v2(gold: str, pred: str) -> int:
    return int(normalize_answer(gold) == normalize_answer(pred))


def _f1_v2(gold: str, pred: str) -> float:
    gold_toks, pred_toks = _tokens(gold), _tokens(pred)
    same = sum((collections.Counter(gold_toks) & collections.Counter(pred_toks)).values())
    if len(gold_toks) == 0 or len(pred_toks) == 0:
        return int(gold_toks == pred_toks)  # no answer: 1 when both are empty, else 0
    if same == 0:
        return 0
    precision, recall = same / len(pred_toks), same / len(gold_toks)
    return (2 * precision * recall) / (precision + recall)


def has_answer_map(dataset: Sequence[Mapping]) -> dict[str, bool]:
    """Question id -> whether it has a gold answer (v2.0's ``make_qid_to_has_ans``)."""
    return {qa["id"]: bool(qa["answers"]) for article in dataset
            for paragraph in article["paragraphs"] for qa in paragraph["qas"]}


def _raw_scores(dataset, predictions, missing_zero: bool = False):
    exact, f1 = {}, {}
    for article in dataset:
        for paragraph in article["paragraphs"]:
            for qa in paragraph["qas"]:
                golds = [a["text"] for a in qa["answers"] if normalize_answer(a["text"])] or [""]
                if qa["id"] not in predictions:
                    if missing_zero:  # in the total, wrong whether answerable or not
                        exact[qa["id"]] = f1[qa["id"]] = 0
                    continue  # else left out, as the script does (it prints a note)
                pred = predictions[qa["id"]]
                exact[qa["id"]] = max(_exact_v2(g, pred) for g in golds)
                f1[qa["id"]] = max(_f1_v2(g, pred) for g in golds)
    return exact, f1


def _apply_threshold(scores, na_probs, has_ans, thresh):
    return {qid: (float(not has_ans[qid]) if na_probs[qid] > thresh else s) for qid, s in scores.items()}


def _eval_dict(exact, f1, qids=None) -> dict:
    if not qids:
        total = len(exact)
        return {"exact": 100.0 * sum(exact.values()) / total, "f1": 100.0 * sum(f1.values()) / total,
                "total": total}
    total = len(qids)
    return {"exact": 100.0 * sum(exact[k] for k in qids) / total,
            "f1": 100.0 * sum(f1[k] for k in qids) / total, "total": total}


def _best_threshold(predictions, scores, na_probs, has_ans) -> tuple[float, float]:
    score = best = sum(1 for v in has_ans.values() if not v)
    best_thresh = 0.0
    for qid in sorted(na_probs, key=lambda k: na_probs[k]):
        if qid not in scores:
            continue
        if has_ans[qid]:
            diff = scores[qid]
        else:
            diff = -1 if predictions.get(qid, True) else 0  # a missing one is a wrong answer
        score += diff
        if score > best:
            best, best_thresh = score, na_probs[qid]
    return 100.0 * best / len(scores), best_thresh


def evaluate_v2(dataset: Sequence[Mapping], predictions: Mapping[str, str],
                na_probs: Optional[Mapping[str, float]] = None, na_prob_thresh: float = 1.0,
                missing_zero: bool = False) -> dict:
    """evaluate-v2.0.py's ``main`` without the files.

    Args:
      dataset: the ``data`` list of a SQuAD 2.0 JSON file.
      predictions: question id -> predicted answer (``""`` for no answer).
      na_probs: question id -> probability of no answer; None is the script without
        ``--na-prob-file`` (every probability 0, no best thresholds).
      na_prob_thresh: a probability above it predicts no answer (the script's default 1.0).
      missing_zero: a question without a prediction counts in every total as a wrong answer (as
        v1.1 counts it) instead of being left out as the script leaves it (its default).
    Returns:
      ``exact``, ``f1``, ``total``, ``HasAns_*`` and ``NoAns_*`` (when such questions exist), and
      with ``na_probs`` ``best_exact``, ``best_exact_thresh``, ``best_f1``, ``best_f1_thresh``.
    """
    given = na_probs is not None
    if not given:
        na_probs = {k: 0.0 for k in predictions}
    has_ans = has_answer_map(dataset)
    has_ans_qids = [k for k, v in has_ans.items() if v]
    no_ans_qids = [k for k, v in has_ans.items() if not v]
    exact_raw, f1_raw = _raw_scores(dataset, predictions, missing_zero)
    if missing_zero:  # never turned into "no answer" by the threshold
        na_probs = {**na_probs, **{k: 0.0 for k in has_ans if k not in predictions}}
    exact = _apply_threshold(exact_raw, na_probs, has_ans, na_prob_thresh)
    f1 = _apply_threshold(f1_raw, na_probs, has_ans, na_prob_thresh)
    out = _eval_dict(exact, f1)
    for prefix, qids in (("HasAns", has_ans_qids), ("NoAns", no_ans_qids)):
        # The script stops with a KeyError when a question of a group has no prediction; here the
        # group counts its predicted questions, as the overall total does.
        qids = [k for k in qids if k in exact]
        if qids:
            out.update({f"{prefix}_{k}": v for k, v in _eval_dict(exact, f1, qids).items()})
    if given:
        out["best_exact"], out["best_exact_thresh"] = _best_threshold(predictions, exact_raw, na_probs, has_ans)
        out["best_f1"], out["best_f1_thresh"] = _best_threshold(predictions, f1_raw, na_probs, has_ans)
    return out


def evaluate(version: str, dataset: Sequence[Mapping], predictions: Mapping[str, str],
             na_probs: Optional[Mapping[str, float]] = None, na_prob_thresh: float = 1.0) -> dict:
    """The official script of ``version`` (``"1.1"`` or ``"2.0"``)."""
    if version == "1.1":
        return evaluate_v1(dataset, predictions)
    if version == "2.0":
        return evaluate_v2(dataset, predictions, na_probs, na_prob_thresh)
    raise ValueError(f"unknown SQuAD version {version!r}; allowed: '1.1', '2.0'")


def as_fractions(scores: Mapping[str, float]) -> dict[str, float]:
    """The scores in [0, 1] like the GLUE metrics (counts and thresholds as they are), with v2.0's
    ``exact`` also under v1.1's name ``exact_match``, so every SQuAD run reports ``exact_match``
    and ``f1``."""
    out = {k: (v if k in _COUNT_KEYS or k.endswith("_thresh") else v / 100.0) for k, v in scores.items()}
    if "exact" in out:
        out = {"exact_match": out["exact"], **{k: v for k, v in out.items() if k != "exact"}}
    return out


__all__ = ["as_fractions", "evaluate", "evaluate_v1", "evaluate_v2", "has_answer_map", "normalize_answer"]
