"""Baselines under the same harness as the ELMs: each answers every assistant turn of a split and writes a
``predictions.jsonl`` in the schema ``infer generate`` writes, so ``infer evaluate``, ``compare`` and
``report`` treat it as one more run.

- ``majority``: per question type, the answer most often given on the train split. A question with answer
  options gets the option answered most often for its type (ties: the first option), so a "which of A or B"
  question is answered with A or B; a type never seen in training gets the most common answer overall.
- ``nearest``: the answer of the nearest training ECG among the training conversations asked the same
  question text (with as many ECGs), by Euclidean distance of z-scored signal features; the majority
  answer where no training conversation asked it (``answer_from`` in each line says which). Features per
  lead: mean, standard deviation, 5/25/50/75/95th percentiles, and the log power in bands of the spectrum
  (phase-free: two recordings of one rhythm rarely start at the same point of a beat, so a downsampled
  trace would mostly measure the offset).

The third baseline, the same LLM without any ECG, is ``infer generate --ecg none``.

The train split is what the baselines learn from, so it must share no record and no patient with the
split answered (``data split`` splits by patient); a leaking split is refused, because a neighbour could
then be the question's own recording.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ecgbench.data.conversations import ECG_PLACEHOLDER, EcgRef
from ecgbench.data.dataset import ConversationDataset, ConversationItem
from ecgbench.errors import UserError
from ecgbench.files import atomic_write, sha256_file
from ecgbench.infer.generate import PREDICTIONS_FILE, prediction_row

BASELINES = ("majority", "nearest")
Progress = Callable[[str, int], None]
FIT_SPLIT = "train"
PERCENTILES = (5, 25, 50, 75, 95)
#: spectrum bands (Hz) whose log power is a feature: heart-rate harmonics, QRS and T-wave energy
BANDS = ((0.5, 1.0), (1.0, 1.5), (1.5, 2.0), (2.0, 3.0), (3.0, 4.0), (4.0, 6.0), (6.0, 8.0), (8.0, 12.0),
         (12.0, 16.0), (16.0, 24.0), (24.0, 40.0))  # fmt: skip
FEATURES = (
    "per lead: mean, std, percentiles " + "/".join(map(str, PERCENTILES)) + ", log band power "
    + ", ".join(f"{lo:g}-{hi:g}" for lo, hi in BANDS) + " Hz; z-scored on the train split; Euclidean"
)  # fmt: skip


# ------------------------------------------------------------------------------------------- majority


@dataclass
class MajorityAnswers:
    """Answer counts of the train split, per question type and overall."""

    by_type: dict[str | None, Counter[str]] = field(default_factory=dict)
    overall: Counter[str] = field(default_factory=Counter)

    def add(self, question_type: str | None, answer: str) -> None:
        self.by_type.setdefault(question_type, Counter())[answer] += 1
        self.overall[answer] += 1

    def answer(self, question_type: str | None, options: list[str]) -> str:
        counts = self.by_type.get(question_type) or self.overall
        if options:
            # max keeps the first of equal counts: ties go to the first option
            return max(options, key=lambda option: counts.get(option, 0))
        # most common, ties by the answer's text (Counter order would depend on the set's row order)
        return min(counts.items(), key=lambda kv: (-kv[1], kv[0]))[0]


def asked_turns(dataset: ConversationDataset) -> Iterator[tuple[ConversationItem, list[int]]]:
    """Every conversation (read once, ECGs included) with the indices of its assistant turns."""
    for i in range(len(dataset)):
        item = dataset[i]
        yield item, [k for k, t in enumerate(item.turns) if t["role"] == "assistant"]


def fit_majority(train: ConversationDataset) -> MajorityAnswers:
    counts = MajorityAnswers()
    for item, turns in asked_turns(train):
        for turn in turns:
            counts.add(item.question_type, item.turns[turn]["content"])
    if not counts.overall:
        raise UserError(f"the {FIT_SPLIT} split holds no assistant turn to learn answers from")
    return counts


# -------------------------------------------------------------------------------------------- nearest


def ecg_features(ecg: np.ndarray, fs: float) -> np.ndarray:
    """Signal features of one (12, samples) ECG (see the module notes), float64."""
    ecg = np.asarray(ecg, dtype=np.float64)
    stats = [ecg.mean(axis=1), ecg.std(axis=1), *np.percentile(ecg, PERCENTILES, axis=1)]
    power = np.abs(np.fft.rfft(ecg - ecg.mean(axis=1, keepdims=True), axis=1)) ** 2
    freqs = np.fft.rfftfreq(ecg.shape[1], d=1.0 / fs)
    bands = [power[:, (freqs >= lo) & (freqs < hi)].sum(axis=1) for lo, hi in BANDS]
    return np.concatenate([*stats, *(np.log1p(b) for b in bands)])


def _asked_ecgs(turns: list[dict[str, str]], turn: int) -> int:
    """ECGs the history up to ``turn`` refers to (the ones the question is about)."""
    return sum(t["content"].count(ECG_PLACEHOLDER) for t in turns[:turn] if t["role"] == "user")


@dataclass
class Neighbour:
    conversation_id: str
    answer: str


class NearestAnswers:
    """Training answers keyed by (question text, number of ECGs), each with the rows of its ECGs in one
    table of features (one row per training record, however many questions were asked about it)."""

    def __init__(self, train: ConversationDataset, fs: float, progress: Progress | None = None):
        self.fs = fs
        row_of: dict[EcgRef, int] = {}
        features: list[np.ndarray] = []
        asked: dict[tuple[str, int], tuple[list[tuple[int, ...]], list[Neighbour]]] = {}
        for item, turns in asked_turns(train):
            rows = []
            for ref, ecg in zip(item.ecg_refs, item.ecgs, strict=True):
                if ref not in row_of:
                    row_of[ref] = len(features)
                    features.append(ecg_features(ecg, fs))
                rows.append(row_of[ref])
            for turn in turns:
                n = min(_asked_ecgs(item.turns, turn), len(rows))
                if n:
                    group = asked.setdefault((item.turns[turn - 1]["content"], n), ([], []))
                    group[0].append(tuple(rows[:n]))
                    group[1].append(Neighbour(item.conversation_id, item.turns[turn]["content"]))
            if progress is not None:
                progress("fitting", len(turns))
        if not asked:
            raise UserError(f"the {FIT_SPLIT} split holds no question about an ECG to take an answer from")
        table = np.stack(features)
        self.mean = table.mean(axis=0)
        spread = table.std(axis=0)
        self.scale = np.where(spread > 0, spread, 1.0)  # a constant feature (a flat lead) adds nothing
        self.table = ((table - self.mean) / self.scale).astype(np.float32)
        self.groups = {key: (np.array(rows, dtype=np.int64), nbs) for key, (rows, nbs) in asked.items()}

    def nearest(self, question: str, ecgs: list[np.ndarray]) -> Neighbour | None:
        """The training answer to ``question`` nearest to ``ecgs``; None where none was asked it."""
        group = self.groups.get((question, len(ecgs))) if ecgs else None
        if group is None:
            return None
        rows, neighbours = group
        query = (np.stack([ecg_features(e, self.fs) for e in ecgs]) - self.mean) / self.scale
        distances = ((self.table[rows] - query.astype(np.float32)) ** 2).sum(axis=(1, 2))
        return neighbours[int(np.argmin(distances))]


# ---------------------------------------------------------------------------------------------- split


def _patients(dataset: ConversationDataset) -> dict[tuple[str, str], str | None]:
    """(corpus, record_id) -> patient id, from the stores' indexes."""
    out: dict[tuple[str, str], str | None] = {}
    for store in dataset.records.stores:
        table = store.index.select(["corpus", "record_id", "patient_id"])
        for corpus, record, patient in zip(
            *(table.column(c).to_pylist() for c in table.column_names), strict=True
        ):
            out[(corpus, record)] = patient
    return out


def check_disjoint(train: ConversationDataset, answered: ConversationDataset, split: str) -> None:
    """Refuse a train split sharing a record or a patient with the answered split."""
    patients = _patients(train)

    def records(dataset: ConversationDataset) -> set[tuple[str, str]]:
        return {(r.corpus, r.record_id) for i in range(len(dataset)) for r in dataset.ecg_refs(i)}

    train_records, answered_records = records(train), records(answered)
    shared = sorted(train_records & answered_records)
    if shared:
        raise UserError(
            f"the {FIT_SPLIT} and {split} splits share {len(shared)} record(s) (e.g. {'/'.join(shared[0])}): "
            "a baseline would answer from the question's own ECG; split by patient with `ecgbench data split`"
        )
    train_patients = {(c, patients[(c, r)]) for c, r in train_records if patients.get((c, r))}
    leaked = sorted(
        {(c, patients[(c, r)]) for c, r in answered_records if patients.get((c, r))} & train_patients
    )
    if leaked:
        raise UserError(
            f"the {FIT_SPLIT} and {split} splits share {len(leaked)} patient(s) (e.g. {leaked[0][0]} patient "
            f"{leaked[0][1]}): split by patient with `ecgbench data split`"
        )


# ----------------------------------------------------------------------------------------------- runs


def baseline_id(name: str, inputs: list[Path]) -> str:
    """What the baseline's answers depend on: its name and the files it learnt from."""
    digest = hashlib.sha256()
    for path in inputs:
        digest.update(sha256_file(path).encode())
    return f"baseline:{name}#{digest.hexdigest()[:16]}"


def baseline_record(name: str) -> dict[str, Any]:
    """The ``decoding`` field of a baseline's predictions: how its answers are chosen."""
    record: dict[str, Any] = {"strategy": name, "fit_split": FIT_SPLIT}
    if name == "nearest":
        record.update(features=FEATURES, fallback="majority")
    return record


def run_baseline(
    name: str,
    train: ConversationDataset,
    answered: ConversationDataset,
    out: Path,
    *,
    split: str,
    checkpoint_id: str,
    progress: Progress | None = None,
) -> tuple[Path, Counter[str]]:
    """Answer every assistant turn of ``answered`` into ``out/predictions.jsonl``; also how many answers
    came from where (``neighbour`` / ``majority``). ``progress(phase, n)``: n more turns fitted
    (``fitting``, nearest only) or answered (``answering``)."""
    if name not in BASELINES:
        raise UserError(f"unknown baseline {name!r} (allowed: {', '.join(BASELINES)})")
    check_disjoint(train, answered, split)
    majority = fit_majority(train)
    nearest = (
        NearestAnswers(train, float(train.records.check_shapes()[1]), progress) if name == "nearest" else None
    )
    decoding = baseline_record(name)
    ecg_mode = "real" if name == "nearest" else "none"
    rows: list[dict[str, Any]] = []
    sources: Counter[str] = Counter()
    for item, turns in asked_turns(answered):
        for turn in turns:
            row = prediction_row(item, turn, ecg_mode, decoding, checkpoint_id)
            neighbour = None
            if nearest is not None:
                neighbour = nearest.nearest(row["question"], item.ecgs[: _asked_ecgs(item.turns, turn)])
            if neighbour is not None:
                row.update(
                    prediction=neighbour.answer, answer_from="neighbour", neighbour=neighbour.conversation_id
                )
            else:
                answer = majority.answer(item.question_type, item.answer_options)
                row.update(prediction=answer, answer_from="majority")
            sources[row["answer_from"]] += 1
            rows.append(row)
        if progress is not None:
            progress("answering", len(turns))
    if not rows:
        raise UserError(f"the {split} split holds no assistant turn to answer")
    out.mkdir(parents=True, exist_ok=True)
    body = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    atomic_write(out / PREDICTIONS_FILE, lambda tmp: tmp.write_text(body, encoding="utf-8"))
    return out / PREDICTIONS_FILE, sources
