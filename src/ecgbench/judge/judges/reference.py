"""A judge from our metrics: the answer closer to the set's gold answer wins.

Each answer is scored against ``item.reference`` with one metric of :mod:`ecgbench.infer.metrics`; the
higher score wins and equal scores tie. Deterministic and symmetric, so both answer orders always agree.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from ecgbench.errors import UserError
from ecgbench.judge.judges.base import JudgeItem, Verdict

REFERENCE_VERSION = "reference-v1"
DEFAULT_METRIC = "rouge-l"


def _rouge(field: str) -> Callable[[str, str], float]:
    def score(reference: str, prediction: str) -> float:
        from ecgbench.infer.metrics import rouge

        return float(getattr(rouge(reference, prediction), field))

    return score


def _bleu(reference: str, prediction: str) -> float:
    """Sentence BLEU-4 (nltk's method1 smoothing, as the corpus BLEU of one item)."""
    import math

    from ecgbench.infer.metrics import bleu_from_totals, bleu_stats

    value = float(bleu_from_totals(bleu_stats(reference, prediction))[0])
    return 0.0 if math.isnan(value) else value  # an empty answer has no n-grams: no corpus, score 0


def _metric(name: str) -> Callable[[str, str], float]:
    def score(reference: str, prediction: str) -> float:
        from ecgbench.infer import metrics

        return float(getattr(metrics, name)(reference, prediction))

    return score


METRICS: dict[str, Callable[[str, str], float]] = {
    "rouge-l": _rouge("rougeL"),
    "rouge-1": _rouge("rouge1"),
    "rouge-2": _rouge("rouge2"),
    "bleu": _bleu,
    "meteor": _metric("meteor"),
    "token-f1": _metric("token_f1"),
    "exact-match": _metric("exact_match"),
    "normalized-match": _metric("normalized_match"),
}


class ReferenceJudge:
    """``reference[:METRIC]``: the answer with the higher METRIC against the gold answer wins."""

    def __init__(self, metric: str = DEFAULT_METRIC) -> None:
        if metric not in METRICS:
            raise UserError(f"unknown reference metric {metric!r} (allowed: {', '.join(METRICS)})")
        self.metric = metric
        self.id = f"reference:{metric}"
        self.version = REFERENCE_VERSION
        self._score = METRICS[metric]

    def judge(self, items: Sequence[JudgeItem]) -> list[Verdict]:
        missing = sum(item.reference is None for item in items)
        if missing:
            raise UserError(
                f"the {self.id} judge needs a gold answer, and {missing} of {len(items)} items have none: "
                "use a set with reference answers, or an llm: or reward: judge"
            )
        out = []
        for item in items:
            assert item.reference is not None
            a, b = self._score(item.reference, item.answer_a), self._score(item.reference, item.answer_b)
            out.append(Verdict("a" if a > b else "b" if b > a else "tie", a, b))
        return out
