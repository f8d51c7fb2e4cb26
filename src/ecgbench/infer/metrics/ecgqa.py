"""ECG-QA aware scoring of closed questions: verify (yes/no), choose (one of the options), query (a set of
labels).

Question types end in their kind: ``single-verify``, ``comparison_consecutive-query``, ``single-choose``,
... (ECG-QA, and the ``labels`` sets of this project); ``report`` and unknown types are free text, scored by
the text metrics only. References are written as the conversation sets write them: the answer list joined
with ", ", where a label may itself contain a comma (PTB-XL's "bigeminal pattern (unknown origin,
supraventricular, or ventricular)"), so references are split back along the options.

A prediction is read against the question's options (plus "none" for choose and query, as ECG-QA's own LLM
evaluation offers it): every option mentioned as whole words, longest options first and without overlaps, so
"not sure" is not read as "no" and "none" is not "no" (ECG-QA's regex alternation got both wrong). A verify
answer is the option mentioned first ("Yes, there is no noise" is a yes); choose and query compare the set
of options mentioned with the reference set. A prediction that mentions no option is unparsable: wrong, and
counted. A reference label missing from the options is looked for too, and the item is flagged (a data
problem). Without options, a choose or query prediction is split like the reference.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ecgbench.infer.metrics.text import normalize_answer

VERIFY, CHOOSE, QUERY = "verify", "choose", "query"
CLOSED_KINDS = (VERIFY, CHOOSE, QUERY)
DEFAULT_VERIFY_OPTIONS = ("yes", "no")
NONE_ANSWER = "none"
_SEPARATOR = ", "  # how the conversation sets join an answer list


def question_kind(question_type: str | None) -> str | None:
    """``verify`` | ``choose`` | ``query`` from a question type's suffix; None for free text."""
    if not question_type:
        return None
    kind = question_type.rsplit("-", 1)[-1]
    return kind if kind in CLOSED_KINDS else None


def vocabulary(kind: str, options: Sequence[str]) -> list[str]:
    """The normalised answers a prediction is read against, in the options' order."""
    if kind == VERIFY and not options:
        options = DEFAULT_VERIFY_OPTIONS
    out: list[str] = []
    for option in [*options, *([NONE_ANSWER] if kind != VERIFY else [])]:
        norm = normalize_answer(option)
        if norm and norm not in out:
            out.append(norm)
    return out


def split_reference(reference: str, known: Sequence[str]) -> list[str]:
    """The normalised labels of a ", "-joined reference; adjacent pieces are re-joined where together they
    are a known label (labels with commas). Pieces that are no known label are kept as they are."""
    pieces = reference.split(_SEPARATOR)
    known_set = set(known)
    labels: list[str] = []
    i = 0
    while i < len(pieces):
        for j in range(len(pieces), i, -1):  # the longest run of pieces that is a known label
            joined = normalize_answer(_SEPARATOR.join(pieces[i:j]))
            if joined in known_set or j == i + 1:
                if joined and joined not in labels:
                    labels.append(joined)
                i = j
                break
    return labels


def mentioned(text: str, labels: Sequence[str]) -> list[str]:
    """The (normalised) labels that ``text`` mentions as whole words, in order of first mention; longer labels
    are matched first and matched words are not reused."""
    words = normalize_answer(text).split()
    used = [False] * len(words)
    found: list[tuple[int, str]] = []
    for label in sorted(set(labels), key=lambda lab: (-len(lab.split()), lab)):
        pattern = label.split()
        size = len(pattern)
        first = None
        for start in range(len(words) - size + 1):
            if words[start : start + size] == pattern and not any(used[start : start + size]):
                used[start : start + size] = [True] * size
                first = start if first is None else first
        if first is not None:
            found.append((first, label))
    return [label for _, label in sorted(found)]


@dataclass(frozen=True)
class QAScore:
    kind: str
    reference: list[str]  # normalised reference labels
    predicted: list[str]  # normalised predicted labels ([] when unparsable)
    parsed: bool
    correct: float
    precision: float | None  # query only
    recall: float | None
    f1: float | None
    reference_outside_options: bool  # a reference label the options do not list (a data problem, counted)


def score_closed(kind: str, reference: str, prediction: str, options: Sequence[str]) -> QAScore:
    """Score one verify/choose/query item (``kind`` from ``question_kind``)."""
    known = vocabulary(kind, options)
    ref_labels = split_reference(reference, known)
    outside = any(label not in known for label in ref_labels)
    if not options and kind != VERIFY:
        # No option list: the prediction is read like the reference, as a ", "-joined list.
        predicted = split_reference(prediction, known) if prediction.strip() else []
    else:
        found = mentioned(prediction, [*known, *(lab for lab in ref_labels if lab not in known)])
        predicted = found[:1] if kind == VERIFY else found
    parsed = bool(predicted)
    correct = float(parsed and set(predicted) == set(ref_labels))
    precision = recall = f1 = None
    if kind == QUERY:
        hits = len(set(predicted) & set(ref_labels))
        precision = hits / len(predicted) if predicted else 0.0
        recall = hits / len(ref_labels) if ref_labels else 0.0
        f1 = 2 * precision * recall / (precision + recall) if hits else 0.0
    return QAScore(kind, ref_labels, predicted, parsed, correct, precision, recall, f1, outside)
