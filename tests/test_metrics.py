"""Tests for binarybert_jax.metrics: hand-computed values, degenerate cases, and agreement with
scipy (and sklearn when it happens to be installed)."""

import importlib.util

import numpy as np
import pytest

from binarybert_jax import metrics
from binarybert_jax.data import glue, tasks

# A binary case worked by hand: tp = 2 (rows 0, 4), fp = 1 (row 1), tn = 2 (rows 2, 3),
# fn = 1 (row 5).
PRED = np.array([1, 1, 0, 0, 1, 0])
GOLD = np.array([1, 0, 0, 0, 1, 1])


def test_binary_hand_computed():
    assert metrics.accuracy(PRED, GOLD) == pytest.approx(4 / 6)
    # 2 tp / (2 tp + fp + fn) = 4 / 6.
    assert metrics.f1(PRED, GOLD) == pytest.approx(4 / 6)
    # (tp tn - fp fn) / sqrt((tp+fp)(tp+fn)(tn+fp)(tn+fn)) = (4 - 1) / sqrt(3 * 3 * 3 * 3).
    assert metrics.matthews_corrcoef(PRED, GOLD) == pytest.approx(1 / 3)


def test_multiclass_mcc_hand_computed():
    # Confusion (rows true, columns predicted) [[2,0,0],[1,0,1],[0,1,1]]: t = (2,2,2),
    # p = (3,1,2), trace 3, n 6 -> (3*6 - 12) / sqrt((36 - 14) * (36 - 12)) = 6 / sqrt(528).
    gold = np.array([0, 1, 2, 0, 1, 2])
    pred = np.array([0, 2, 1, 0, 0, 2])
    assert metrics.matthews_corrcoef(pred, gold) == pytest.approx(6 / np.sqrt(528))


def test_degenerate_classification():
    gold = np.array([0, 1, 1, 0])
    assert metrics.matthews_corrcoef(np.zeros(4, int), gold) == 0.0
    assert metrics.matthews_corrcoef(np.ones(4, int), gold) == 0.0
    assert metrics.matthews_corrcoef(gold, gold) == pytest.approx(1.0)
    assert metrics.matthews_corrcoef(1 - gold, gold) == pytest.approx(-1.0)
    # No positive anywhere: F1 is 0/0, reported as 0.
    assert metrics.f1(np.zeros(4, int), np.zeros(4, int)) == 0.0
    assert metrics.f1(np.zeros(4, int), gold) == 0.0
    assert metrics.f1(gold, gold) == 1.0


def test_correlations_hand_computed():
    # x - mean = (-1, 0, 1), y - mean = (-4/3, -1/3, 5/3): r = 3 / sqrt(2 * 42/9) = 9 / sqrt(84).
    assert metrics.pearson([1, 2, 3], [1, 2, 4]) == pytest.approx(9 / np.sqrt(84))
    # Average ranks (1, 2.5, 2.5, 4) and (1, 3, 2, 4): r = 4.5 / sqrt(4.5 * 5).
    assert metrics.spearman([1, 2, 2, 3], [1, 3, 2, 4]) == pytest.approx(4.5 / np.sqrt(22.5))
    assert metrics.spearman([10, 20, 30], [1, 5, 100]) == pytest.approx(1.0)
    assert metrics.pearson([3, 2, 1], [1, 2, 3]) == pytest.approx(-1.0)


def test_degenerate_correlations():
    assert metrics.pearson([2.0, 2.0, 2.0], [1.0, 2.0, 3.0]) == 0.0
    assert metrics.spearman([1.0, 2.0, 3.0], [5.0, 5.0, 5.0]) == 0.0
    assert np.isnan(metrics.pearson([np.nan, 1.0, 2.0], [1.0, 2.0, 3.0]))
    assert np.isnan(metrics.spearman([1.0, 2.0, 3.0], [1.0, np.inf, 3.0]))


def test_input_validation():
    with pytest.raises(ValueError, match="same length"):
        metrics.accuracy([1, 0], [1, 0, 1])
    with pytest.raises(ValueError, match="zero examples"):
        metrics.pearson([], [])


def test_correlations_match_scipy():
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(0)
    x = np.round(rng.normal(size=200), 1)  # Rounded so that ties occur.
    y = np.round(0.6 * x + rng.normal(size=200), 1)
    assert metrics.pearson(x, y) == pytest.approx(stats.pearsonr(x, y)[0], abs=1e-12)
    assert metrics.spearman(x, y) == pytest.approx(stats.spearmanr(x, y)[0], abs=1e-12)


@pytest.mark.skipif(importlib.util.find_spec("sklearn") is None, reason="sklearn not installed")
def test_classification_matches_sklearn():
    from sklearn import metrics as sk

    rng = np.random.default_rng(1)
    gold = rng.integers(0, 2, 300)
    pred = np.where(rng.random(300) < 0.7, gold, 1 - gold)
    assert metrics.f1(pred, gold) == pytest.approx(sk.f1_score(gold, pred))
    assert metrics.matthews_corrcoef(pred, gold) == pytest.approx(sk.matthews_corrcoef(gold, pred))
    gold3 = rng.integers(0, 3, 300)
    pred3 = rng.integers(0, 3, 300)
    assert metrics.matthews_corrcoef(pred3, gold3) == pytest.approx(
        sk.matthews_corrcoef(gold3, pred3))


@pytest.mark.parametrize("task", glue.TASK_NAMES)
def test_glue_metrics_keys_follow_task_spec(task):
    spec = tasks.get_task(task)
    rng = np.random.default_rng(2)
    if spec.is_regression:
        labels = rng.uniform(0, 5, 50)
        predictions = labels + rng.normal(size=50)
    else:
        labels = rng.integers(0, spec.num_labels, 50)
        predictions = rng.normal(size=(50, spec.num_labels))  # Logits, arg-maxed inside.
    result = metrics.glue_metrics(spec, predictions, labels)
    assert tuple(result) == spec.metric_names
    assert spec.main_metric in result
    assert all(isinstance(v, float) for v in result.values())


def test_glue_metrics_values():
    mrpc = metrics.glue_metrics(tasks.get_task("MRPC"), PRED, GOLD)
    assert mrpc == pytest.approx({"f1": 4 / 6, "accuracy": 4 / 6, "acc_and_f1": 4 / 6})
    assert metrics.glue_metrics(tasks.get_task("cola"), PRED, GOLD) == pytest.approx({"mcc": 1 / 3})
    assert metrics.glue_metrics(tasks.get_task("sst2"), PRED, GOLD) == pytest.approx({"accuracy": 4 / 6})
    stsb = metrics.glue_metrics(tasks.get_task("sts-b"), np.array([[1.0], [2.0], [3.0]]), [1.0, 2.0, 4.0])
    assert stsb["pearson"] == pytest.approx(9 / np.sqrt(84))
    assert stsb["spearman"] == pytest.approx(1.0)
    assert stsb["corr"] == pytest.approx((9 / np.sqrt(84) + 1.0) / 2)


def test_glue_metrics_mask_drops_padding():
    # Two padding rows that would be wrong predictions if counted.
    pred = np.concatenate([PRED, [1, 1]])
    gold = np.concatenate([GOLD, [0, 0]])
    mask = np.array([1, 1, 1, 1, 1, 1, 0, 0], np.float32)
    assert metrics.glue_metrics(tasks.get_task("sst-2"), pred, gold, mask=mask) == pytest.approx(
        {"accuracy": 4 / 6})


def test_main_metric_per_task():
    expected = {"cola": "mcc", "sst-2": "accuracy", "mrpc": "f1", "sts-b": "pearson",
                "qqp": "f1", "mnli": "accuracy", "qnli": "accuracy", "rte": "accuracy",
                "wnli": "accuracy"}
    assert {name: tasks.get_task(name).main_metric for name in glue.TASK_NAMES} == expected
