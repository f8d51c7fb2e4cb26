"""Macro F1 and AUROC as functions of item weights, against scikit-learn on explicit corpora."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import f1_score, roc_auc_score

from ecgbench.infer.metrics import f1_stats, indicator, macro_auroc, macro_f1_from_totals, weighted_auroc

LABELS = ["sinus rhythm", "atrial fibrillation", "left axis deviation", "first degree av block"]


def test_indicator_rows() -> None:
    rows = indicator([["sinus rhythm"], [], ["left axis deviation", "sinus rhythm"]], LABELS)
    assert rows.astype(int).tolist() == [[1, 0, 0, 0], [0, 0, 0, 0], [1, 0, 1, 0]]


def test_macro_f1_hand_computed() -> None:
    y_true = indicator([["sinus rhythm"], ["sinus rhythm"], ["atrial fibrillation"]], LABELS)
    y_pred = indicator([["sinus rhythm"], ["atrial fibrillation"], []], LABELS)
    # sinus rhythm: tp 1, fn 1 -> F1 2/3; atrial fibrillation: fp 1, fn 1 -> 0; the other two never occur
    totals = f1_stats(y_true, y_pred).sum(axis=0)
    assert macro_f1_from_totals(totals)[0] == pytest.approx((2 / 3 + 0) / 2)


def test_macro_f1_equals_sklearn_multiclass_and_multilabel() -> None:
    rng = np.random.default_rng(0)
    truth = rng.integers(0, 4, 200)
    guess = np.where(rng.random(200) < 0.6, truth, rng.integers(0, 4, 200))
    guess[:7] = -1  # unparsable: no predicted label
    y_true = indicator([[LABELS[t]] for t in truth], LABELS)
    y_pred = indicator([[LABELS[g]] if g >= 0 else [] for g in guess], LABELS)
    ours = macro_f1_from_totals(f1_stats(y_true, y_pred).sum(axis=0))[0]
    assert ours == pytest.approx(f1_score(truth, guess, labels=[0, 1, 2, 3], average="macro"))
    multi_true, multi_pred = rng.random((150, 4)) < 0.3, rng.random((150, 4)) < 0.3
    ours = macro_f1_from_totals(f1_stats(multi_true, multi_pred).sum(axis=0))[0]
    assert ours == pytest.approx(f1_score(multi_true, multi_pred, average="macro"))


def test_weighted_auroc_is_the_auroc_of_the_repeated_corpus() -> None:
    rng = np.random.default_rng(1)
    y = rng.random(60) < 0.4
    scores = np.round(rng.random(60) + y * 0.3, 1)  # rounded: many ties
    assert weighted_auroc(y, scores, np.ones(60))[0] == pytest.approx(roc_auc_score(y, scores))
    weights = rng.multinomial(60, np.full(60, 1 / 60), size=4).astype(float)
    for row, value in zip(weights, weighted_auroc(y, scores, weights), strict=True):
        repeated = np.repeat(np.arange(60), row.astype(int))
        assert value == pytest.approx(roc_auc_score(y[repeated], scores[repeated]))
    assert np.isnan(weighted_auroc(np.ones(5, bool), np.arange(5.0), np.ones(5))[0])  # one class only


def test_macro_auroc_skips_unscored_items_and_one_class_labels() -> None:
    rng = np.random.default_rng(2)
    y = rng.random((80, 3)) < 0.5
    y[:, 2] = True  # a label without negatives has no AUROC
    scores = rng.random((80, 3)) + y * 0.5
    scores[:10, 0] = np.nan  # items without a score for label 0
    expected = np.mean([roc_auc_score(y[10:, 0], scores[10:, 0]), roc_auc_score(y[:, 1], scores[:, 1])])
    assert macro_auroc(y, scores, np.ones((1, 80)))[0] == pytest.approx(expected)
