"""Corpus BLEU-4 exactly as nltk's ``corpus_bleu`` with ``SmoothingFunction().method1`` and uniform
weights (the peer's setting), computed from per-item sufficient statistics so that a bootstrap resample of
the items is a weighted sum of rows instead of a re-tokenisation.

Per item (whitespace tokens, one reference): hypothesis length, reference length, then for n = 1..4 the
clipped n-gram matches and ``max(1, hypothesis n-grams)`` (nltk's ``modified_precision`` denominator).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import numpy as np

MAX_ORDER = 4
EPSILON = 0.1  # SmoothingFunction's default epsilon for method1
N_STATS = 2 + 2 * MAX_ORDER


def _ngrams(tokens: Sequence[str], n: int) -> Counter[tuple[str, ...]]:
    return Counter(zip(*(tokens[i:] for i in range(n)), strict=False))


def bleu_stats(reference: str, prediction: str) -> np.ndarray:
    """The ``N_STATS`` sufficient statistics of one item (float64, integer valued)."""
    hyp, ref = prediction.split(), reference.split()
    out = np.zeros(N_STATS)
    out[0], out[1] = len(hyp), len(ref)
    for n in range(1, MAX_ORDER + 1):
        hyp_counts = _ngrams(hyp, n) if len(hyp) >= n else Counter()
        ref_counts = _ngrams(ref, n) if len(ref) >= n else Counter()
        out[2 * n] = sum(min(count, ref_counts[gram]) for gram, count in hyp_counts.items())
        out[2 * n + 1] = max(1, sum(hyp_counts.values()))
    return out


def bleu_from_totals(totals: np.ndarray) -> np.ndarray:
    """Corpus BLEU-4 from summed statistics: one row per corpus (shape (B, N_STATS) -> (B,))."""
    totals = np.atleast_2d(np.asarray(totals, dtype=np.float64))
    hyp_len, ref_len = totals[:, 0], totals[:, 1]
    matches, counts = totals[:, 2::2], totals[:, 3::2]
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(matches == 0, EPSILON / counts, matches / counts)
        log_precision = np.log(precision).sum(axis=1) / MAX_ORDER
        brevity = np.where(
            hyp_len > ref_len, 1.0, np.where(hyp_len == 0, 0.0, np.exp(1 - ref_len / np.maximum(hyp_len, 1)))
        )
        score = brevity * np.exp(log_precision)
    # nltk returns 0 when no unigram matches at all (before smoothing); an empty resample has no corpus.
    score = np.where(matches[:, 0] == 0, 0.0, score)
    return np.where(counts[:, 0] == 0, np.nan, score)


def corpus_bleu(references: Sequence[str], predictions: Sequence[str]) -> float:
    """Corpus BLEU-4 of aligned references and predictions (whitespace tokens, one reference each)."""
    if len(references) != len(predictions):
        raise ValueError("references and predictions differ in length")
    if not references:
        return float("nan")
    totals = np.sum([bleu_stats(r, p) for r, p in zip(references, predictions, strict=True)], axis=0)
    return float(bleu_from_totals(totals)[0])
