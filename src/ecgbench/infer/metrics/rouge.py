"""ROUGE-1/2/L F-scores from the ``rouge`` package (1.0.1), the peer's ROUGE: case-sensitive, sentences
split at '.', ROUGE-L at summary level. ``Rouge().get_scores(..., avg=True)`` is the mean of the per-item
scores, so scoring item by item gives the peer's number and a per-item value for the bootstrap."""

from __future__ import annotations

import functools
from typing import Any, NamedTuple


class RougeScores(NamedTuple):
    rouge1: float
    rouge2: float
    rougeL: float
    scored: bool  # False: the package refused the pair (an empty hypothesis), scored 0


@functools.cache
def _scorer() -> Any:
    from rouge import Rouge

    return Rouge()


def rouge(reference: str, prediction: str) -> RougeScores:
    """ROUGE F-scores of one item; a pair the package rejects (``Hypothesis is empty.``: nothing but dots and
    whitespace) scores 0 and is flagged so the report can count it."""
    try:
        scores = _scorer().get_scores(prediction, reference)[0]
    except ValueError:
        return RougeScores(0.0, 0.0, 0.0, False)
    return RougeScores(scores["rouge-1"]["f"], scores["rouge-2"]["f"], scores["rouge-l"]["f"], True)
