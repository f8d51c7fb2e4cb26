"""Corpus BLEU-4 from per-item statistics: hand-computed cases, and nltk corpus_bleu as the peer calls it."""

from __future__ import annotations

import math

import numpy as np
import pytest
from nltk.translate.bleu_score import SmoothingFunction
from nltk.translate.bleu_score import corpus_bleu as nltk_corpus_bleu

from ecgbench.infer.metrics import bleu_from_totals, bleu_stats, corpus_bleu


def peer_bleu(references: list[str], hypotheses: list[str]) -> float:
    """ECG-Bench's calculate_bleu: whitespace tokens, default (uniform) weights, method1 smoothing."""
    return nltk_corpus_bleu(
        [[r.split()] for r in references],
        [h.split() for h in hypotheses],
        smoothing_function=SmoothingFunction().method1,
    )


def test_stats_and_score_hand_computed() -> None:
    ref, hyp = "the cat sat on the mat", "the cat sat on a mat"
    # lengths 6/6; matches/counts: 1-grams 5/6, 2-grams 3/5, 3-grams 2/4, 4-grams 1/3
    assert bleu_stats(ref, hyp).tolist() == [6, 6, 5, 6, 3, 5, 2, 4, 1, 3]
    expected = (5 / 6 * 3 / 5 * 2 / 4 * 1 / 3) ** 0.25  # brevity penalty 1: equal lengths
    assert corpus_bleu([ref], [hyp]) == pytest.approx(expected, rel=1e-12)


def test_smoothing_brevity_and_zero_cases() -> None:
    # "sinus rhythm normal" vs "sinus rhythm normal ecg": 3/3, 2/2, 1/1 matched, no 4-gram (count floored
    # at 1, matches 0 -> 0.1 / 1); brevity penalty exp(1 - 4/3)
    expected = math.exp(1 - 4 / 3) * (1 * 1 * 1 * 0.1) ** 0.25
    assert corpus_bleu(["sinus rhythm normal ecg"], ["sinus rhythm normal"]) == pytest.approx(expected)
    assert corpus_bleu(["sinus rhythm"], ["atrial fibrillation"]) == 0.0  # no unigram match
    assert corpus_bleu(["sinus rhythm"], [""]) == 0.0
    assert math.isnan(corpus_bleu([], []))


def test_equals_nltk_as_the_peer_calls_it(pulse_reports: list[str]) -> None:
    refs = pulse_reports[:60]
    hyps = [r if i % 3 == 0 else pulse_reports[99 - i] for i, r in enumerate(refs)]
    hyps[5] = ""  # empty generations stay in the corpus (the peer dropped them)
    hyps[7] = refs[7].lower()
    assert corpus_bleu(refs, hyps) == pytest.approx(peer_bleu(refs, hyps), rel=1e-12)


def test_weighted_totals_are_the_resampled_corpus(pulse_reports: list[str]) -> None:
    """A bootstrap resample (item i drawn w_i times) scores like the corpus with the items repeated."""
    refs = pulse_reports[:30]
    hyps = [pulse_reports[(i * 7) % 100] if i % 2 else r for i, r in enumerate(refs)]
    item_stats = np.array([bleu_stats(r, h) for r, h in zip(refs, hyps, strict=True)])
    rng = np.random.default_rng(3)
    weights = rng.multinomial(len(refs), np.full(len(refs), 1 / len(refs)), size=5)
    scores = bleu_from_totals(weights @ item_stats)
    for row, score in zip(weights, scores, strict=True):
        repeated = [i for i, count in enumerate(row) for _ in range(count)]
        assert score == pytest.approx(
            peer_bleu([refs[i] for i in repeated], [hyps[i] for i in repeated]), rel=1e-12
        )
