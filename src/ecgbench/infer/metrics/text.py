"""Answer normalisation and the string metrics built on it: exact match, normalised match, SQuAD token F1."""

from __future__ import annotations

import re
import string
import unicodedata
from collections import Counter

_SPACES = re.compile(r"\s+")
_ARTICLES = re.compile(r"\b(a|an|the)\b")
_SQUAD_PUNCTUATION = set(string.punctuation)


def is_empty(prediction: str) -> bool:
    """No answer at all: nothing but whitespace."""
    return not prediction.strip()


def normalize_answer(text: str) -> str:
    """Case-folded, every punctuation character replaced by a space, whitespace collapsed.

    Punctuation becomes a space rather than vanishing so that ``st/t change`` and ``st-t change`` agree and
    ``rhythm,sinus`` stays two words.
    """
    text = unicodedata.normalize("NFKC", text).casefold()
    text = "".join(" " if unicodedata.category(ch).startswith("P") else ch for ch in text)
    return _SPACES.sub(" ", text).strip()


def exact_match(reference: str, prediction: str) -> float:
    """The peer's accuracy: 1.0 when prediction and reference are equal after stripping outer whitespace."""
    if is_empty(prediction):
        return 0.0
    return float(prediction.strip() == reference.strip())


def normalized_match(reference: str, prediction: str) -> float:
    """1.0 when the answers agree up to case, punctuation and whitespace (``normalize_answer``)."""
    if is_empty(prediction):
        return 0.0
    return float(normalize_answer(prediction) == normalize_answer(reference))


def squad_normalize(text: str) -> str:
    """The SQuAD v1.1 evaluation script's normalisation: lower case, ASCII punctuation deleted, articles
    removed, whitespace collapsed."""
    text = "".join(ch for ch in text.lower() if ch not in _SQUAD_PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def token_f1(reference: str, prediction: str) -> float:
    """SQuAD-style token F1: harmonic mean of bag-of-token precision and recall after ``squad_normalize``."""
    if is_empty(prediction):
        return 0.0
    predicted = squad_normalize(prediction).split()
    gold = squad_normalize(reference).split()
    same = sum((Counter(predicted) & Counter(gold)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(predicted), same / len(gold)
    return 2 * precision * recall / (precision + recall)
