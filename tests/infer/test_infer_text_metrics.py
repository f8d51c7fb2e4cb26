"""String metrics against hand-computed values."""

from __future__ import annotations

import pytest

from ecgbench.infer.metrics import (
    exact_match,
    is_empty,
    normalize_answer,
    normalized_match,
    squad_normalize,
    token_f1,
)


def test_normalize_answer_folds_case_punctuation_and_whitespace() -> None:
    assert normalize_answer("  Sinus   Rhythm.\n") == "sinus rhythm"
    assert normalize_answer("ST/T change") == normalize_answer("st-t  change") == "st t change"
    assert normalize_answer("rhythm,sinus") == "rhythm sinus"
    assert normalize_answer("…«Yes»!") == "yes"  # Unicode punctuation too


def test_exact_match_is_the_peers_strip_equality() -> None:
    assert exact_match("yes", "  yes\n") == 1.0
    assert exact_match("yes", "Yes") == 0.0  # case counts for the peer's ACC
    assert exact_match("yes", "") == 0.0
    assert exact_match("", "   ") == 0.0  # an empty answer is never right


def test_normalized_match() -> None:
    assert normalized_match("Sinus rhythm.", "sinus rhythm") == 1.0
    assert normalized_match("sinus rhythm", "sinus tachycardia") == 0.0
    assert normalized_match("...", "") == 0.0
    assert is_empty(" \t\n") and not is_empty(" a ")


def test_squad_normalize_drops_articles_and_ascii_punctuation() -> None:
    assert squad_normalize("The ECG shows a Q-wave.") == "ecg shows qwave"


@pytest.mark.parametrize(
    ("reference", "prediction", "expected"),
    [
        # 2 of 3 predicted tokens shared with 4 reference tokens: P = 2/3, R = 2/4, F1 = 2PR/(P+R) = 4/7
        ("left axis deviation present", "left axis normal", 4 / 7),
        ("sinus rhythm", "Sinus rhythm.", 1.0),
        ("the sinus rhythm", "a sinus rhythm", 1.0),  # articles do not count
        # repeated tokens are clipped: prediction "st st st" vs reference "st change": 1 shared of 3 and of 2
        ("st change", "st st st", 2 * (1 / 3) * (1 / 2) / (1 / 3 + 1 / 2)),
        ("sinus rhythm", "atrial fibrillation", 0.0),
        ("sinus rhythm", "", 0.0),
    ],
)
def test_token_f1_hand_computed(reference: str, prediction: str, expected: float) -> None:
    assert token_f1(reference, prediction) == pytest.approx(expected)
