"""ECG-QA aware scoring: question kinds, option matching, set comparison, on real ECG-QA items and options."""

from __future__ import annotations

from typing import Any

import pytest
from infer_helpers import ECGQA_PTBXL

from ecgbench.data.mapping.ecgqa import answer_options
from ecgbench.infer.metrics import normalize_answer, question_kind, score_closed
from ecgbench.infer.metrics.ecgqa import mentioned, split_reference, vocabulary

BIGEMINY = "bigeminal pattern (unknown origin, supraventricular, or ventricular)"


def test_question_kinds() -> None:
    assert question_kind("single-verify") == "verify"
    assert question_kind("comparison_consecutive-query") == "query"
    assert question_kind("single-choose") == "choose"
    assert question_kind("report") is None and question_kind(None) is None and question_kind("") is None


def test_every_bundled_item_scores_itself_correct(ecgqa_questions: list[dict[str, Any]]) -> None:
    kinds = set()
    for item in ecgqa_questions:
        kind = question_kind(item["question_type"])
        kinds.add(kind)
        score = score_closed(kind, item["reference"], item["reference"], item["answer_options"])
        assert score.parsed and score.correct == 1.0, item
        assert sorted(score.reference) == sorted(normalize_answer(a) for a in item["answer"])
        assert not score.reference_outside_options
        if kind == "query":
            assert score.precision == score.recall == score.f1 == 1.0
    assert kinds == {"verify", "query"}  # what the bundled sample has


def test_options_with_commas_are_split_back_whole() -> None:
    options = answer_options(ECGQA_PTBXL)
    assert any(BIGEMINY in found for found in options.values())  # the real PTB-XL class
    known = vocabulary("query", [BIGEMINY, "qrs duration", "pr interval"])
    assert split_reference(f"qrs duration, {BIGEMINY}", known) == [
        "qrs duration",
        vocabulary("query", [BIGEMINY])[0],
    ]
    # pieces that are no known label stay as they are
    assert split_reference("qrs duration, something else", known) == ["qrs duration", "something else"]


def test_longer_options_win_and_words_are_whole() -> None:
    verify = vocabulary("verify", ["no", "not sure", "yes"])
    assert mentioned("I am not sure.", verify) == ["not sure"]  # not "no"
    assert mentioned("None of them", vocabulary("query", ["qt interval"])) == ["none"]
    assert mentioned("The answer is nothing", verify) == []  # "no" only as a whole word
    assert mentioned("QT-interval and QRS duration", ["qrs duration", "qt interval"]) == [
        "qt interval",
        "qrs duration",
    ]


@pytest.mark.parametrize(
    ("prediction", "correct", "parsed"),
    [
        ("yes", 1.0, True),
        ("Yes, there is no static noise.", 1.0, True),  # the first option mentioned is the answer
        ("No.", 0.0, True),
        ("not sure", 0.0, True),
        ("The ECG shows static noise in lead aVL", 0.0, False),
        ("", 0.0, False),
    ],
)
def test_verify(prediction: str, correct: float, parsed: bool) -> None:
    score = score_closed("verify", "yes", prediction, ["no", "not sure", "yes"])
    assert (score.correct, score.parsed) == (correct, parsed)
    assert score.precision is None


def test_verify_without_options_reads_yes_and_no() -> None:
    assert score_closed("verify", "no", "No, it does not.", []).correct == 1.0


def test_choose_is_constrained_to_the_options() -> None:
    options = ["left bundle branch block", "right bundle branch block"]
    assert (
        score_closed("choose", "right bundle branch block", "Right bundle branch block.", options).correct
        == 1.0
    )
    both = score_closed(
        "choose",
        "right bundle branch block",
        "left bundle branch block or right bundle branch block",
        options,
    )
    assert both.parsed and both.correct == 0.0
    outside = score_closed("choose", "right bundle branch block", "atrial fibrillation", options)
    assert not outside.parsed and outside.correct == 0.0


def test_query_sets_precision_recall_f1() -> None:
    options = ["qrs duration", "rr interval", "p duration", "qt interval"]
    score = score_closed("query", "qrs duration, rr interval", "QRS duration and QT interval", options)
    # predicted {qrs duration, qt interval} vs reference {qrs duration, rr interval}: one hit of two each way
    assert (score.correct, score.precision, score.recall, score.f1) == (0.0, 0.5, 0.5, 0.5)
    exact = score_closed("query", "qrs duration, rr interval", "rr interval, qrs duration", options)
    assert (exact.correct, exact.f1) == (1.0, 1.0)  # order does not matter
    none = score_closed("query", "qrs duration", "none", options)
    assert none.parsed and none.predicted == ["none"] and none.f1 == 0.0
    empty = score_closed("query", "qrs duration", "", options)
    assert not empty.parsed and (empty.precision, empty.recall, empty.f1) == (0.0, 0.0, 0.0)


def test_query_without_options_splits_like_the_reference() -> None:
    score = score_closed(
        "query", "sinus rhythm, left axis deviation", "Left axis deviation, sinus rhythm", []
    )
    assert score.correct == 1.0


def test_reference_outside_the_options_is_flagged() -> None:
    score = score_closed(
        "choose", "atrial flutter", "atrial flutter", ["sinus rhythm", "atrial fibrillation"]
    )
    assert score.reference_outside_options and score.correct == 1.0
