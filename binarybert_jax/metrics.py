"""GLUE evaluation metrics, in NumPy.

Scores are fractions, not percentages: accuracy and F1 lie in [0, 1], Matthews and the
correlations in [-1, 1]. Multiply by 100 for the papers' tables.

Degenerate inputs give 0.0 rather than NaN where the statistic is undefined because one side is
constant (a model that predicts one class for all of CoLA has MCC 0, as in sklearn; a constant
regression output has correlation 0); NaN in the inputs gives NaN, so a diverged model is not
mistaken for a poor one.

SQuAD's exact match and F1 are ``squad_metrics``'s (the official scripts' definitions).

Which metrics a task reports and which one picks the best checkpoint come from its
:class:`~binarybert_jax.data.glue.TaskSpec`.
"""

from __future__ import annotations

import numpy as np

from binarybert_jax.data import glue


def _pair(predictions, labels) -> tuple[np.ndarray, np.ndarray]:
    predictions = np.asarray(predictions)
    labels = np.asarray(labels)
    if predictions.shape != labels.shape or predictions.ndim != 1:
        raise ValueError(f"Expected two 1-D arrays of the same length, got shapes "
                         f"{predictions.shape} and {labels.shape}.")
    if predictions.size == 0:
        raise ValueError("Cannot compute a metric over zero examples.")
    return predictions, labels


def accuracy(predictions, labels) -> float:
    """Fraction of predictions equal to the labels.

    Args:
      predictions, labels: (N,) class ids.
    """
    predictions, labels = _pair(predictions, labels)
    return float(np.mean(predictions == labels))


def f1(predictions, labels) -> float:
    """Binary F1 of the positive class 1: ``2 tp / (2 tp + fp + fn)``.

    0.0 when there are no true positives (including when class 1 never occurs in either array).

    Args:
      predictions, labels: (N,) class ids in {0, 1}.
    """
    predictions, labels = _pair(predictions, labels)
    pred_pos = predictions == 1
    true_pos = labels == 1
    tp = np.sum(pred_pos & true_pos)
    fp = np.sum(pred_pos & ~true_pos)
    fn = np.sum(~pred_pos & true_pos)
    if tp == 0:
        return 0.0
    return float(2 * tp / (2 * tp + fp + fn))


def matthews_corrcoef(predictions, labels) -> float:
    """Matthews correlation coefficient, for any number of classes (Gorodkin's R_K).

    For two classes this is ``(tp tn - fp fn) / sqrt((tp+fp)(tp+fn)(tn+fp)(tn+fn))``. Returns
    0.0 when either array is constant (the denominator vanishes).

    Args:
      predictions, labels: (N,) class ids.
    """
    predictions, labels = _pair(predictions, labels)
    classes, encoded = np.unique(np.concatenate([labels, predictions]), return_inverse=True)
    k = len(classes)
    y_true, y_pred = encoded[:len(labels)], encoded[len(labels):]
    confusion = np.zeros((k, k), np.float64)
    np.add.at(confusion, (y_true, y_pred), 1.0)
    # In float64: the products reach N^4, beyond int64 for N in the millions.
    t = confusion.sum(axis=1)  # How often each class truly occurs.
    p = confusion.sum(axis=0)  # How often each class is predicted.
    c = np.trace(confusion)
    s = confusion.sum()
    cov_true_pred = c * s - t @ p
    cov_pred_pred = s * s - p @ p
    cov_true_true = s * s - t @ t
    denominator = cov_pred_pred * cov_true_true
    if denominator == 0:
        return 0.0
    return float(cov_true_pred / np.sqrt(denominator))


def pearson(predictions, labels) -> float:
    """Pearson correlation; 0.0 when either array is constant, NaN when either has a NaN.

    Args:
      predictions, labels: (N,) real numbers.
    """
    predictions, labels = _pair(predictions, labels)
    x = predictions.astype(np.float64)
    y = labels.astype(np.float64)
    if not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))):
        return float("nan")
    x = x - x.mean()
    y = y - y.mean()
    denominator = np.sqrt(np.dot(x, x) * np.dot(y, y))
    if denominator == 0:
        return 0.0
    # Rounding can push a perfect correlation a hair past 1.
    return float(np.clip(np.dot(x, y) / denominator, -1.0, 1.0))


def _average_ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks, ties sharing the mean of their ranks (scipy's ``rankdata`` 'average')."""
    order = np.argsort(x, kind="mergesort")
    sorted_x = x[order]
    # Boundaries of the runs of equal values in sorted order.
    edges = np.flatnonzero(np.concatenate([[True], sorted_x[1:] != sorted_x[:-1], [True]]))
    run_rank = (edges[:-1] + edges[1:] - 1) / 2.0 + 1.0
    ranks = np.empty(len(x), np.float64)
    ranks[order] = np.repeat(run_rank, np.diff(edges))
    return ranks


def spearman(predictions, labels) -> float:
    """Spearman rank correlation: Pearson of the average ranks (ties averaged).

    Args:
      predictions, labels: (N,) real numbers.
    """
    predictions, labels = _pair(predictions, labels)
    x = predictions.astype(np.float64)
    y = labels.astype(np.float64)
    if not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))):
        return float("nan")
    return pearson(_average_ranks(x), _average_ranks(y))


def glue_metrics(task: glue.TaskSpec, predictions, labels, *, mask=None
                 ) -> dict[str, float]:
    """The metrics GLUE reports for a task.

    CoLA: ``mcc``. SST-2, MNLI, QNLI, RTE, WNLI: ``accuracy``. MRPC, QQP: ``f1``,
    ``accuracy`` and their mean ``acc_and_f1``. STS-B: ``pearson``, ``spearman`` and their mean
    ``corr``. The keys are ``TaskSpec.metric_names``.

    Args:
      task: the task's spec (``tasks.get_task``).
      predictions: (N,) class ids, or (N, num_labels) logits (arg-maxed) for classification;
        (N,) or (N, 1) scores for STS-B.
      labels: (N,) class ids or scores.
      mask: optional (N,) weights or booleans; rows where it is 0 (batch padding) are dropped.

    Returns:
      Metric name -> value as a Python float.
    """
    predictions = np.asarray(predictions)
    labels = np.asarray(labels)
    if mask is not None:
        keep = np.asarray(mask).astype(bool)
        predictions, labels = predictions[keep], labels[keep]
    if task.is_regression:
        if predictions.ndim == 2 and predictions.shape[1] == 1:
            predictions = predictions[:, 0]
        result = {"pearson": pearson(predictions, labels),
                  "spearman": spearman(predictions, labels)}
        result["corr"] = (result["pearson"] + result["spearman"]) / 2
    else:
        if predictions.ndim == 2:
            predictions = predictions.argmax(axis=-1)
        if task.main_metric == "mcc":
            result = {"mcc": matthews_corrcoef(predictions, labels)}
        elif "f1" in task.metric_names:
            result = {"f1": f1(predictions, labels), "accuracy": accuracy(predictions, labels)}
            result["acc_and_f1"] = (result["f1"] + result["accuracy"]) / 2
        else:
            result = {"accuracy": accuracy(predictions, labels)}
    return {name: result[name] for name in task.metric_names}


__all__ = ["accuracy", "f1", "glue_metrics", "matthews_corrcoef", "pearson",
           "spearman"]
