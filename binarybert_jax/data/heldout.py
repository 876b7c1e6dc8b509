"""The held-out slice: part of the training set kept out of training, on which checkpoints are
selected, so that the dev set is scored only on models chosen without it.

The slice is fixed by its seed: the same training file, fraction, cap and seed give the same
examples, whatever the run's own seed, so every model of a comparison (every stage of a pipeline,
every training seed) trains on the same examples and is selected on the same slice.

- GLUE (:func:`split_indices`): stratified by label, or for a regression task (STS-B) by score bin,
  so the slice has the training set's label mix; ``fraction`` of the examples, at most ``cap``.
- SQuAD (:func:`split_articles`): whole articles, so no context of the slice is trained on.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

# Equal-width bins of a regression target (STS-B's 0-5 similarity: one bin per point).
SCORE_BINS = 5


@dataclasses.dataclass(frozen=True)
class HeldOut:
    """How the held-out slice is drawn: ``fraction`` of the training examples (of the questions,
    for SQuAD, counted by whole articles), at most ``cap``, chosen with ``seed``."""

    fraction: float = 0.1
    cap: int = 2000
    seed: int = 0

    def size(self, n: int) -> int:
        """How many of ``n`` examples the slice takes: at least one, and one is left to train."""
        if n < 2:
            raise ValueError(f"{n} training example(s) cannot spare a held-out slice (select on dev "
                             "instead: --config.select_on=dev): the slice and "
                             "training each need at least one")
        return int(min(self.cap, max(1, round(self.fraction * n)), n - 1))


def strata(labels: np.ndarray, is_regression: bool) -> np.ndarray:
    """The stratum of every example: its label, or for a regression target its score bin
    (:data:`SCORE_BINS` equal-width bins over the targets' range)."""
    labels = np.asarray(labels)
    if not is_regression:
        return labels.astype(np.int64)
    lo, hi = float(labels.min()), float(labels.max())
    if hi <= lo:
        return np.zeros(len(labels), np.int64)
    return np.minimum(((labels - lo) / (hi - lo) * SCORE_BINS).astype(np.int64), SCORE_BINS - 1)


def split_indices(labels: np.ndarray, is_regression: bool, heldout: HeldOut) -> tuple[np.ndarray, np.ndarray]:
    """``(train, held_out)`` example indices (sorted, disjoint, together every index).

    Each stratum gives the slice its share of :meth:`HeldOut.size` (largest remainders round), its
    examples drawn at random with ``heldout.seed``.
    """
    groups = strata(labels, is_regression)
    n = len(groups)
    total = heldout.size(n)
    values, counts = np.unique(groups, return_counts=True)
    exact = counts * total / n
    take = np.floor(exact).astype(np.int64)
    for i in np.argsort(-(exact - take), kind="stable")[:total - int(take.sum())]:
        take[i] += 1
    rng = np.random.default_rng(heldout.seed)
    chosen = [rng.permutation(np.flatnonzero(groups == v))[:k] for v, k in zip(values, take)]
    held = np.sort(np.concatenate(chosen)) if chosen else np.zeros(0, np.int64)
    train = np.setdiff1d(np.arange(n), held)
    return train, held


def take(arrays: dict[str, np.ndarray], indices: np.ndarray) -> dict[str, np.ndarray]:
    """The examples ``indices`` of per-example ``arrays`` (every array's first axis)."""
    return {k: v[indices] for k, v in arrays.items()}


def split_articles(articles: Sequence[int], heldout: HeldOut) -> set[int]:
    """The held-out articles, given the article of every training question: articles drawn at
    random with ``heldout.seed`` until their questions reach :meth:`HeldOut.size` of all questions;
    an article that would pass the cap is skipped. At least one article is held out, and one
    trains."""
    ids, counts = np.unique(np.asarray(articles), return_counts=True)
    if len(ids) < 2:
        raise ValueError(f"{len(ids)} training article(s) cannot spare a held-out article: the "
                         "slice and training each need at least one")
    target = heldout.size(int(counts.sum()))
    chosen, size = [], 0
    for i in np.random.default_rng(heldout.seed).permutation(len(ids)):
        if len(chosen) == len(ids) - 1 or size >= target:
            break
        if chosen and size + counts[i] > heldout.cap:
            continue
        chosen.append(int(ids[i]))
        size += int(counts[i])
    return set(chosen)


__all__ = ["HeldOut", "SCORE_BINS", "split_articles", "split_indices", "strata", "take"]
