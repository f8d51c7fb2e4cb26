"""Classification metrics over label-style answers (verify, choose, query): macro F1, and macro AUROC
where the predictions carry a score per option.

Each item is a row of a label-indicator matrix (single-label questions have one true label; an unparsable
prediction has no predicted label). Both metrics are written as functions of per-item weights, so that the
observed corpus (all weights 1) and every bootstrap resample (weights = how often each item was drawn) go
through the same code. Labels that a corpus never has nor predicts are left out of the macro average (as
scikit-learn does for multiclass labels); AUROC uses the labels with both classes present.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def indicator(label_sets: Sequence[Sequence[str]], labels: Sequence[str]) -> np.ndarray:
    """(n, L) boolean matrix: row i marks the labels of item i."""
    column = {label: j for j, label in enumerate(labels)}
    out = np.zeros((len(label_sets), len(labels)), dtype=bool)
    for i, found in enumerate(label_sets):
        for label in found:
            out[i, column[label]] = True
    return out


def f1_stats(y_true: np.ndarray, y_pred: np.ndarray) -> np.ndarray:
    """(n, 3L) per-item true positives, false positives and false negatives of each label."""
    return np.concatenate([y_true & y_pred, ~y_true & y_pred, y_true & ~y_pred], axis=1).astype(np.float64)


def macro_f1_from_totals(totals: np.ndarray) -> np.ndarray:
    """Macro F1 from summed ``f1_stats`` (shape (B, 3L) -> (B,)); NaN where no label occurs at all."""
    totals = np.atleast_2d(totals)
    tp, fp, fn = np.split(totals, 3, axis=1)
    denominator = 2 * tp + fp + fn
    present = denominator > 0
    per_label = np.divide(2 * tp, denominator, out=np.zeros_like(tp), where=present)
    n_present = present.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n_present > 0, per_label.sum(axis=1) / n_present, np.nan)


def weighted_auroc(y_true: np.ndarray, scores: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """AUROC of one label under item weights (shape (n,), (n,), (B, n) -> (B,)): the weighted Mann-Whitney
    statistic, ties counted half, which equals the AUROC of the corpus with each item repeated ``weight``
    times. NaN where a class has no weight."""
    weights = np.atleast_2d(weights)
    order = np.argsort(scores, kind="stable")
    sorted_scores = scores[order]
    positive = y_true[order]
    w = weights[:, order]
    starts = np.flatnonzero(np.r_[True, sorted_scores[1:] != sorted_scores[:-1]])  # groups of tied scores
    w_pos = np.add.reduceat(np.where(positive, w, 0.0), starts, axis=1)
    w_neg = np.add.reduceat(np.where(positive, 0.0, w), starts, axis=1)
    negatives_below = np.cumsum(w_neg, axis=1) - w_neg
    numerator = (w_pos * (negatives_below + 0.5 * w_neg)).sum(axis=1)
    denominator = w_pos.sum(axis=1) * w_neg.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denominator > 0, numerator / denominator, np.nan)


def macro_auroc(y_true: np.ndarray, scores: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Mean AUROC over labels (shape (n, L), (n, L) with NaN for an unscored item, (B, n) -> (B,)); a label
    counts where its scored items have weight in both classes. NaN where no label does."""
    weights = np.atleast_2d(weights)
    per_label = []
    for j in range(y_true.shape[1]):
        scored = np.isfinite(scores[:, j])
        if scored.any():
            per_label.append(weighted_auroc(y_true[scored, j], scores[scored, j], weights[:, scored]))
    if not per_label:
        return np.full(weights.shape[0], np.nan)
    stacked = np.stack(per_label, axis=1)
    counted = np.isfinite(stacked).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counted > 0, np.nansum(stacked, axis=1) / counted, np.nan)
