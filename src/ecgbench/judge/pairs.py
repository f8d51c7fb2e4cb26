"""Preference pairs from predictions: ``judge compare`` (two runs) and ``judge rank`` (N answers each).

Inputs are ``predictions.jsonl`` files of ``ecgbench infer generate`` (one JSON object a line with
``conversation_id``, ``turn``, ``question``, ``reference``, ``ecg_refs``, ``checkpoint``, ``decoding``,
``prediction``; ``ecg_mode`` when present). A line that is not JSON or lacks one of these fields is an error
naming the file and line: a predictions file is written whole by its command, so damage means the wrong file.

Items are matched by (``conversation_id``, ``turn``). An item missing from some of the files is counted and
left out; the files must share at least one item. Matched items must agree on ``question``, ``reference``
and ``ecg_refs`` (otherwise the files answer different sets: an error naming the item).

The prompt of a pair is the conversation's turns up to the answered one, read from ``--sets`` (the sets the
predictions were generated from). Without ``--sets`` it is the question alone, which is only right for a
first turn: an item answering a later turn then asks for ``--sets``.

Each judged item is judged in both answer orders (position bias); a pair is written where the judge prefers
one answer. Left out, and counted: ties, disagreements between the two orders (ties or dropped, as
``--on-disagreement`` says; counted apart from true ties either way), unparsable verdicts, and pairs of
identical answers (compared texts after stripping outer whitespace; never sent to the judge). The summary
line also says how many comparisons changed with the answer order or were unparsable. Rows follow
:func:`ecgbench.judge.export.preference_schema`: no ECG file (``ecg_sha256``/``ecg_path``/``ecg_fs``/
``ecg_source``/``system``/``feedback_id`` null), the ECG named by ``ecg_refs``, and ``decoding`` holding
``{"chosen": {...}, "rejected": {...}}``, each answer's decoding with its ``ecg_mode``. The output is
replaced atomically, as ``judge export`` does; every error comes before it is written.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ecgbench.errors import CorruptFileError, UserError
from ecgbench.files import require_file
from ecgbench.judge.judges import Judge, JudgeItem, OnDisagreement, RankQuestion, judge_both_orders, rank_many

Key = tuple[str, int]
REQUIRED_FIELDS = ("conversation_id", "turn", "question", "reference", "ecg_refs", "checkpoint", "decoding",
                   "prediction")  # fmt: skip
CHUNK = 64  # items per judge call between progress updates


@dataclass(frozen=True)
class Prediction:
    """One line of a predictions file."""

    conversation_id: str
    turn: int
    question: str
    reference: str | None
    ecg_refs: list[list[str]]
    checkpoint: str
    decoding: dict[str, Any]
    ecg_mode: str | None
    prediction: str

    @property
    def key(self) -> Key:
        return (self.conversation_id, self.turn)


def _check_types(row: dict[str, Any]) -> str | None:
    """The first field of a predictions line with the wrong type, if any."""
    checks: dict[str, Callable[[Any], bool]] = {
        "conversation_id": lambda v: isinstance(v, str),
        "turn": lambda v: type(v) is int and v >= 1,
        "question": lambda v: isinstance(v, str),
        "reference": lambda v: v is None or isinstance(v, str),
        "ecg_refs": lambda v: isinstance(v, list) and all(isinstance(r, list) for r in v),
        "checkpoint": lambda v: isinstance(v, str),
        "decoding": lambda v: isinstance(v, dict),
        "prediction": lambda v: isinstance(v, str),
    }
    return next((name for name, ok in checks.items() if not ok(row[name])), None)


def read_predictions(path: Path) -> dict[Key, Prediction]:
    """The predictions of one file by (conversation_id, turn), with one-line errors for damaged lines."""
    path = require_file(Path(path), "predictions file")
    out: dict[Key, Prediction] = {}
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        raise CorruptFileError(f"{path} is not a predictions file (not UTF-8 text)") from None
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise CorruptFileError(f"{path} line {number}: not valid JSON ({exc.msg})") from None
        if not isinstance(row, dict):
            raise CorruptFileError(f"{path} line {number}: not a JSON object")
        missing = [name for name in REQUIRED_FIELDS if name not in row]
        if missing:
            raise CorruptFileError(
                f"{path} line {number}: missing {', '.join(missing)} (not a predictions.jsonl of "
                "`ecgbench infer generate`)"
            )
        wrong = _check_types(row)
        if wrong is not None:
            raise CorruptFileError(f"{path} line {number}: {wrong} has the wrong type ({row[wrong]!r})")
        prediction = Prediction(**{name: row[name] for name in REQUIRED_FIELDS}, ecg_mode=row.get("ecg_mode"))
        if prediction.key in out:
            raise CorruptFileError(
                f"{path} line {number}: a second answer to {prediction.conversation_id} "
                f"turn {prediction.turn}"
            )
        out[prediction.key] = prediction
    if not out:
        raise UserError(f"{path} holds no predictions")
    return out


@dataclass
class Matched:
    """The items every file answers, in the first file's order, and how many were left out."""

    keys: list[Key]
    only_in: Counter[str] = field(default_factory=Counter)  # file -> items not answered by every other file


def match_items(files: Sequence[Path], predictions: Sequence[dict[Key, Prediction]]) -> Matched:
    common = set(predictions[0]).intersection(*predictions[1:])
    if not common:
        raise UserError(
            f"{', '.join(map(str, files))} have no question in common (matched by conversation and turn)"
        )
    keys = [key for key in predictions[0] if key in common]
    matched = Matched(keys)
    for path, preds in zip(files, predictions, strict=True):
        if extra := len(preds) - len(common):
            matched.only_in[str(path)] = extra
    first = predictions[0]
    for key in keys:
        for path, preds in zip(files[1:], predictions[1:], strict=True):
            for name in ("question", "reference", "ecg_refs"):
                if getattr(preds[key], name) != getattr(first[key], name):
                    raise UserError(
                        f"{key[0]} turn {key[1]} has another {name} in {path} than in {files[0]}: the files "
                        "answer different conversation sets"
                    )
    return matched


def prompts_for(
    keys: Sequence[Key], predictions: dict[Key, Prediction], sets: Sequence[Path] | None, source: Path
) -> dict[Key, list[dict[str, str]]]:
    """Each item's prompt: its conversation's turns before the answered one (see the module notes)."""
    if not sets:
        later = next((key for key in keys if key[1] != 1), None)
        if later is not None:
            raise UserError(
                f"{later[0]} turn {later[1]} in {source} answers a later turn of a conversation: give --sets "
                "(the sets the predictions were generated from) so its earlier turns are in the prompt"
            )
        return {key: [{"role": "user", "content": predictions[key].question}] for key in keys}
    import pyarrow as pa
    import pyarrow.compute as pc

    from ecgbench.data.conversations import read_conversation_set

    wanted = pa.array(sorted({key[0] for key in keys}), type=pa.string())
    turns: dict[str, list[dict[str, str]]] = {}
    for path in sets:
        table = read_conversation_set(Path(path), columns=["conversation_id", "turns"])
        table = table.filter(pc.is_in(table.column("conversation_id"), value_set=wanted))
        for row in table.to_pylist():
            turns.setdefault(row["conversation_id"], row["turns"])
    out = {}
    for key in keys:
        conversation, turn = key
        if conversation not in turns:
            raise UserError(f"{conversation} (answered in {source}) is in none of the --sets")
        history = turns[conversation]
        asked = predictions[key].question
        if (
            turn >= len(history)
            or history[turn]["role"] != "assistant"
            or history[turn - 1]["content"] != asked
        ):
            raise UserError(
                f"{conversation} turn {turn} in {source} does not match its conversation in --sets (another "
                "question there): give the sets the predictions were generated from"
            )
        out[key] = [{"role": t["role"], "content": t["content"]} for t in history[:turn]]
    return out


@dataclass
class Inputs:
    """Predictions files read, matched and given their prompts: everything checked before a judge loads."""

    files: list[Path]
    predictions: list[dict[Key, Prediction]]
    matched: Matched
    prompts: dict[Key, list[dict[str, str]]]


def load_inputs(files: Sequence[Path], sets: Sequence[Path] | None = None) -> Inputs:
    files = [Path(f) for f in files]
    predictions = [read_predictions(path) for path in files]
    matched = match_items(files, predictions)
    return Inputs(files, predictions, matched, prompts_for(matched.keys, predictions[0], sets, files[0]))


def missing_references(inputs: Inputs) -> int:
    """How many matched items have no gold answer (the reference judge needs one for each)."""
    return sum(inputs.predictions[0][key].reference is None for key in inputs.matched.keys)


def _decoding(prediction: Prediction) -> dict[str, Any]:
    return {**prediction.decoding, "ecg_mode": prediction.ecg_mode}


def pair_row(
    prompt: list[dict[str, str]],
    chosen: Prediction,
    rejected: Prediction,
    scores: tuple[float, float],
    judge: Judge,
    timestamp: str,
) -> dict[str, Any]:
    """One preference row (see :func:`ecgbench.judge.export.preference_schema`)."""
    return {
        "prompt": prompt,
        "chosen": [{"role": "assistant", "content": chosen.prediction}],
        "rejected": [{"role": "assistant", "content": rejected.prediction}],
        "system": None,
        "ecg_sha256": None,
        "ecg_path": None,
        "ecg_fs": None,
        "ecg_refs": chosen.ecg_refs,
        "ecg_source": None,
        "chosen_model": chosen.checkpoint,
        "rejected_model": rejected.checkpoint,
        "judge": judge.id,
        "judge_version": judge.version,
        "score_chosen": float(scores[0]),
        "score_rejected": float(scores[1]),
        "kind": "preference",
        "feedback_id": None,
        "timestamp": timestamp,
        "decoding": json.dumps(
            {"chosen": _decoding(chosen), "rejected": _decoding(rejected)}, sort_keys=True
        ),
    }


@dataclass
class PairsResult:
    rows: list[dict[str, Any]]
    judged: int  # items sent to the judge
    common: int  # items all files answer
    left_out: Counter[str]  # reason -> items
    only_in: Counter[str]  # file -> items the other files do not answer
    comparisons: Counter[str] = field(default_factory=Counter)  # made, disagreements, unparsable


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def _check_parsed(judge: Judge, judged: int, left_out: Counter[str]) -> None:
    if judged and left_out["unparsable verdicts"] == judged:
        raise UserError(
            f"the judge {judge.id} gave no parsable verdict on any of the {judged} items it judged: "
            "nothing written"
        )


def _with_different_answers(inputs: Inputs, left_out: Counter[str], reason: str) -> list[Key]:
    """The matched items whose answers are not all the same text (the others are counted under
    ``reason``: a judge cannot prefer one of two equal answers)."""
    todo = []
    for key in inputs.matched.keys:
        if len({p[key].prediction.strip() for p in inputs.predictions}) < 2:
            left_out[reason] += 1
        else:
            todo.append(key)
    return todo


def _chunks(todo: list[Key], progress: Callable[[int, int], None] | None) -> Iterator[list[Key]]:
    """``todo`` in judge calls of ``CHUNK`` items, ``progress`` told after each."""
    if progress is not None:
        progress(0, len(todo))
    for start in range(0, len(todo), CHUNK):
        chunk = todo[start : start + CHUNK]
        yield chunk
        if progress is not None:
            progress(len(chunk), len(todo))


def compare_pairs(
    inputs: Inputs,
    judge: Judge,
    *,
    on_disagreement: OnDisagreement = "tie",
    progress: Callable[[int, int], None] | None = None,
) -> PairsResult:
    """Pairs from two predictions files on the same questions (see the module notes). ``progress(done,
    total)`` is called with the items judged since the last call."""
    if len(inputs.files) != 2:
        raise UserError(f"judge compare reads two predictions files, not {len(inputs.files)}")
    first, second = inputs.predictions
    matched, prompts = inputs.matched, inputs.prompts
    left_out: Counter[str] = Counter()
    todo = _with_different_answers(inputs, left_out, "pairs of identical answers")
    rows, timestamp = [], _now()
    comparisons: Counter[str] = Counter()
    for chunk in _chunks(todo, progress):
        items = [
            JudgeItem(prompts[k], first[k].prediction, second[k].prediction, first[k].reference)
            for k in chunk
        ]
        verdicts = judge_both_orders(judge, items, on_disagreement=on_disagreement, counts=comparisons)
        comparisons["made"] += len(items)
        for key, verdict in zip(chunk, verdicts, strict=True):
            if verdict is None:
                left_out["disagreements between the answer orders (dropped)"] += 1
            elif verdict.winner is None:
                left_out["unparsable verdicts"] += 1
            elif verdict.winner == "tie":
                left_out["ties"] += 1
            elif verdict.winner is not None:
                a, b = first[key], second[key]
                chosen, rejected = (a, b) if verdict.winner == "a" else (b, a)
                scores = (verdict.score_a, verdict.score_b)
                rows.append(pair_row(prompts[key], chosen, rejected, scores if chosen is a else scores[::-1],
                                     judge, timestamp))  # fmt: skip
    if on_disagreement == "tie":  # the ties that came from disagreeing orders, apart
        left_out["ties"] -= comparisons["disagreements"]
        left_out["disagreements between the answer orders (ties)"] += comparisons["disagreements"]
    _check_parsed(judge, len(todo), left_out)
    return PairsResult(rows, len(todo), len(matched.keys), left_out, matched.only_in, comparisons)


def rank_pairs(
    inputs: Inputs,
    judge: Judge,
    *,
    on_disagreement: OnDisagreement = "tie",
    progress: Callable[[int, int], None] | None = None,
) -> PairsResult:
    """One (best, worst) pair per question from N predictions files answering the same questions."""
    if len(inputs.files) < 2:
        raise UserError("judge rank needs at least two predictions files")
    predictions, matched, prompts = inputs.predictions, inputs.matched, inputs.prompts
    left_out: Counter[str] = Counter()
    todo = _with_different_answers(inputs, left_out, "questions whose answers are all the same")
    rows, timestamp = [], _now()
    comparisons: Counter[str] = Counter()
    for chunk in _chunks(todo, progress):
        questions = [
            RankQuestion(prompts[k], [p[k].prediction for p in predictions], predictions[0][k].reference)
            for k in chunk
        ]
        all_scores = rank_many(judge, questions, on_disagreement=on_disagreement, counts=comparisons)
        comparisons["made"] += sum(math.comb(len({c.strip() for c in q.candidates}), 2) for q in questions)
        for key, scores in zip(chunk, all_scores, strict=True):
            rated = [(s, i) for i, s in enumerate(scores) if not math.isnan(s)]
            if not rated:
                left_out["unparsable verdicts"] += 1
                continue
            (best_score, best), (worst_score, worst) = (
                max(rated, key=lambda r: r[0]),
                min(rated, key=lambda r: r[0]),
            )
            if best_score == worst_score:
                left_out["ties"] += 1
                continue
            chosen, rejected = predictions[best][key], predictions[worst][key]
            rows.append(pair_row(prompts[key], chosen, rejected, (best_score, worst_score), judge, timestamp))
    _check_parsed(judge, len(todo), left_out)
    return PairsResult(rows, len(todo), len(matched.keys), left_out, matched.only_in, comparisons)


def summary(result: PairsResult, path: Path, judge: Judge) -> str:
    """The one line a command prints after writing."""
    left = [f"{n} {reason}" for reason, n in sorted(result.left_out.items()) if n]
    left += [
        f"{n} items of {name} that another file does not answer" for name, n in result.only_in.items() if n
    ]
    line = f"wrote {path}: {len(result.rows)} pairs from {result.common} questions (judge {judge.id}, "
    line += f"{judge.version})" + (f"; left out {', '.join(left)}" if left else "")
    comparisons = result.comparisons
    flipped, unparsable = comparisons["disagreements"], comparisons["unparsable"]
    if flipped or unparsable:  # how reliable the judge was, comparison by comparison
        line += f"; of {comparisons['made']} comparisons, {flipped} changed with the answer order"
        line += f" and {unparsable} were unparsable"
    return line
