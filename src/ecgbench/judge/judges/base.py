"""The judge interface and what every judge shares: both answer orders, round-robin ranking.

A judge reads a question (the chat turns up to it, ``<ecg>`` placeholders kept: no judge sees the ECG)
and two answers, and says which is better. Position bias (a judge that prefers whichever answer comes
first) is removed by judging each pair in both orders: :func:`judge_both_orders` keeps a verdict only when
the two orders agree. :func:`rank_candidates` scores N answers by a round robin of such comparisons.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, replace
from itertools import combinations
from typing import Literal, Protocol

Winner = Literal["a", "b", "tie"]
OnDisagreement = Literal["tie", "drop"]


@dataclass(frozen=True)
class JudgeItem:
    """One question with two answers."""

    prompt: list[dict[str, str]]  # chat turns up to the question (role/content), '<ecg>' placeholders kept
    answer_a: str
    answer_b: str
    reference: str | None = None  # gold answer when the set has one


@dataclass(frozen=True)
class Verdict:
    winner: Winner | None  # None = unparsable (counted, never guessed)
    score_a: float
    score_b: float


UNPARSABLE = Verdict(None, math.nan, math.nan)


class Judge(Protocol):
    id: str  # e.g. "reference:rouge-l", "llm:/path/to/smollm2", "reward:/path"
    version: str  # judging prompt / method version (bumped when the prompt changes)

    def judge(self, items: Sequence[JudgeItem]) -> list[Verdict]: ...


def swapped(item: JudgeItem) -> JudgeItem:
    return replace(item, answer_a=item.answer_b, answer_b=item.answer_a)


def _flip(verdict: Verdict) -> Verdict:
    """A verdict on (b, a) read as one on (a, b)."""
    winner = {"a": "b", "b": "a"}.get(verdict.winner or "", verdict.winner)
    return Verdict(winner, verdict.score_b, verdict.score_a)  # type: ignore[arg-type]


def judge_both_orders(
    judge: Judge,
    items: Sequence[JudgeItem],
    *,
    on_disagreement: OnDisagreement,
    counts: Counter[str] | None = None,
) -> list[Verdict | None]:
    """Each item judged as (a, b) and as (b, a), in one call to the judge.

    The two orders agree: that winner, scores averaged over the orders. They disagree (one says a, the other
    b or tie): a tie (``on_disagreement="tie"``) or None (``"drop"``). Either order unparsable: the
    unparsable verdict (winner None). ``counts`` (if given) gets ``disagreements`` and ``unparsable`` added.
    """
    if on_disagreement not in ("tie", "drop"):
        raise ValueError(f"on_disagreement must be 'tie' or 'drop', not {on_disagreement!r}")
    verdicts = judge.judge([*items, *(swapped(item) for item in items)])
    if len(verdicts) != 2 * len(items):
        raise RuntimeError(f"judge {judge.id} returned {len(verdicts)} verdicts for {2 * len(items)} items")
    counts = counts if counts is not None else Counter()
    out: list[Verdict | None] = []
    for first, second in zip(verdicts[: len(items)], map(_flip, verdicts[len(items) :]), strict=True):
        if first.winner is None or second.winner is None:
            counts["unparsable"] += 1
            out.append(UNPARSABLE)
            continue
        score_a, score_b = (first.score_a + second.score_a) / 2, (first.score_b + second.score_b) / 2
        if first.winner == second.winner:
            out.append(Verdict(first.winner, score_a, score_b))
            continue
        counts["disagreements"] += 1
        out.append(Verdict("tie", score_a, score_b) if on_disagreement == "tie" else None)
    return out


@dataclass(frozen=True)
class RankQuestion:
    prompt: list[dict[str, str]]
    candidates: list[str]
    reference: str | None = None


def rank_many(
    judge: Judge,
    questions: Sequence[RankQuestion],
    *,
    on_disagreement: OnDisagreement = "tie",
    counts: Counter[str] | None = None,
) -> list[list[float]]:
    """:func:`rank_candidates` for many questions, every comparison of every question in one judge call.

    A candidate's score is its win rate over the comparisons it took part in (win 1, tie 0.5), in [0, 1];
    NaN where none of its comparisons gave a usable verdict. Candidates with the same text (after stripping
    outer whitespace) are compared once and share one score; a comparison of two equal texts is not made.
    """
    counts = counts if counts is not None else Counter()
    items: list[JudgeItem] = []
    owners: list[tuple[int, int, int]] = []  # (question, unique i, unique j)
    uniques: list[list[str]] = []
    for q, question in enumerate(questions):
        texts = list(dict.fromkeys(c.strip() for c in question.candidates))
        uniques.append(texts)
        for i, j in combinations(range(len(texts)), 2):
            items.append(JudgeItem(question.prompt, texts[i], texts[j], question.reference))
            owners.append((q, i, j))
    verdicts = (
        judge_both_orders(judge, items, on_disagreement=on_disagreement, counts=counts) if items else []
    )
    points = [[0.0] * len(texts) for texts in uniques]
    games = [[0] * len(texts) for texts in uniques]
    for (q, i, j), verdict in zip(owners, verdicts, strict=True):
        if verdict is None or verdict.winner is None:
            continue
        won_i = {"a": 1.0, "b": 0.0, "tie": 0.5}[verdict.winner]
        points[q][i] += won_i
        points[q][j] += 1.0 - won_i
        games[q][i] += 1
        games[q][j] += 1
    out = []
    for q, question in enumerate(questions):
        rate = {
            text: (points[q][k] / games[q][k] if games[q][k] else math.nan)
            for k, text in enumerate(uniques[q])
        }
        out.append([rate[c.strip()] for c in question.candidates])
    return out


def rank_candidates(
    judge: Judge,
    prompt: list[dict[str, str]],
    candidates: list[str],
    reference: str | None = None,
    *,
    on_disagreement: OnDisagreement = "tie",
    counts: Counter[str] | None = None,
) -> list[float]:
    """Scores of N candidate answers to one question: pairwise round robin, each pair in both orders
    (see :func:`rank_many`), so a caller picks the best (highest) and worst (lowest)."""
    (scores,) = rank_many(
        judge,
        [RankQuestion(prompt, list(candidates), reference)],
        on_disagreement=on_disagreement,
        counts=counts,
    )
    return scores
