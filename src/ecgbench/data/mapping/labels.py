"""The ``labels`` conversation set: questions about each record of a segment store, built from the store's
own labels and reports (no source file), in the style of ECG-QA's single-ECG templates.

Question kinds (``question_type``: question -> answer; ``answer_options``):

- ``single-verify``: "Does this ECG show X?" -> yes | no; ``["yes", "no"]``
- ``single-choose``: "Which does this ECG show, A or B?" -> the one it has; ``[A, B]``
- ``single-query``: "Which conditions does this ECG show? List them all." -> its names, ", "-joined;
  the label space (below)
- ``report``: "Describe this ECG." -> the store's (English) report; ``[]``

Labels are asked about by name (``sinus rhythm``, not ``SR`` or ``426783006``). Names come from the
tables the readers use: PTB-XL SCP codes from ``scp_statements.csv`` (``description``, lower-cased as
ECG-QA does), Challenge SNOMED-CT codes from ``resources/labels/snomed_ct_ecg.csv``; every other corpus
(CPSC, Chapman-Shaoxing/Ningbo, CODE-15%) is stored with names already.

A "no" is only as good as the annotation it rests on: a CPSC record was labelled with nine classes, so
"does it show T-wave inversion?" -> "no" would be unfounded. Negatives and distractors are therefore drawn
from the record's *label space*: the names seen on records of the same corpus and coding (PTB-XL records
with SCP codes and PTB-XL Challenge copies with SNOMED names are two spaces). The query's
``answer_options`` are that space, and its answer lists the record's names in the space's (alphabetical)
order; names may contain commas, so ``meta["answer"]`` keeps the list.

One conversation per question, about a record (corpus, record_id) like every other set; the trainer
picks its segment, and ``data split`` places it with the record's patient. Questions are drawn with a
random generator seeded by (seed, corpus, record_id): the same seed gives the same set, and a record's
questions change only when its own labels or its label space's names change.
"""

from __future__ import annotations

import functools
import math
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import pyarrow as pa

from ecgbench.data.conversations import ECG_PLACEHOLDER, Conversation, EcgRef, conversation_table, with_info
from ecgbench.data.mapping.common import MappingReport
from ecgbench.data.readers.challenge import snomed_names
from ecgbench.data.readers.ptbxl import load_statements
from ecgbench.data.splits import record_heads
from ecgbench.errors import UserError
from ecgbench.resources import SAMPLE_DIR

LABELS_SET = "labels"
# The full, unmodified PTB-XL v1.0.3 statements table (its SHA-256 matches PhysioNet's SHA256SUMS.txt).
SCP_STATEMENTS = SAMPLE_DIR / "ptbxl" / "scp_statements.csv"
_SNOMED_PREFIX = "snomed:"  # how the readers keep a code missing from the SNOMED table

VERIFY, CHOOSE, QUERY, REPORT = "single-verify", "single-choose", "single-query", "report"
YES_NO = ["yes", "no"]


@functools.cache
def scp_names() -> dict[str, str]:
    """PTB-XL SCP code -> statement name (the ``description`` column, lower-cased like ECG-QA's classes)."""
    return {code: row["description"].strip().lower() for code, row in load_statements(SCP_STATEMENTS).items()}


def label_space(corpus: str, labels: Sequence[str]) -> str:
    """The annotation a record's labels come from: its corpus, and for PTB-XL also the coding."""
    if corpus == "ptbxl" and any(label in scp_names() for label in labels):
        return "ptbxl:scp"
    return corpus


def label_name(corpus: str, label: str) -> str | None:
    """The human-readable name of a stored label, or None when no table names it."""
    label = label.strip()
    if corpus == "ptbxl" and label in scp_names():
        return scp_names()[label]
    if label.startswith(_SNOMED_PREFIX):
        # Unnamed when the store was prepared; the table may know it now.
        return snomed_names().get(label.removeprefix(_SNOMED_PREFIX))
    return label.lower() or None


@dataclass
class _Record:
    corpus: str
    record_id: str
    space: str
    names: list[str]  # distinct label names, in stored order
    report: str | None
    unnamed: list[str] = field(default_factory=list)


@dataclass
class _Question:
    kind: str
    question: str
    answer: list[str]
    options: list[str]
    attribute: list[str]


def _records(indexes: Sequence[pa.Table]) -> list[_Record]:
    columns = ["corpus", "record_id", "labels", "report"]
    # Record-level fields repeat on every segment: read each record's first row (first store wins).
    heads = record_heads(pa.concat_tables([index.select(columns) for index in indexes]))
    records = []
    for corpus, record_id, labels, text in zip(*(heads.column(c).to_pylist() for c in columns), strict=True):
        labels = labels or []
        names: list[str] = []
        unnamed: list[str] = []
        for label in labels:
            name = label_name(corpus, label)
            if name is None:
                unnamed.append(label)
            elif name not in names:
                names.append(name)
        text = (text or "").strip() or None
        records.append(_Record(corpus, record_id, label_space(corpus, labels), names, text, unnamed))
    return records


def _vocabularies(records: Sequence[_Record]) -> dict[str, list[str]]:
    spaces: dict[str, set[str]] = {}
    for record in records:
        spaces.setdefault(record.space, set()).update(record.names)
    return {space: sorted(names) for space, names in spaces.items()}


def _questions(record: _Record, vocabulary: list[str], n: int, rng: random.Random) -> list[_Question]:
    """Up to ``n`` distinct questions, the kinds taken in turn from a seeded start."""
    has = set(record.names)
    positives = rng.sample(record.names, len(record.names))
    # No record is asked about more than n labels it lacks: draw only those (a store has ~70 names).
    negatives = [name for name in vocabulary if name not in has]
    negatives = rng.sample(negatives, min(n, len(negatives)))
    kinds = []
    if positives:
        kinds += [VERIFY, CHOOSE, QUERY] if negatives else [VERIFY, QUERY]
    if record.report:
        kinds.append(REPORT)
    start = rng.randrange(len(kinds)) if kinds else 0
    kinds = kinds[start:] + kinds[:start]
    said_yes = rng.random() < 0.5  # the first verify answer is a coin; then they alternate
    verify_yes, verify_no = list(positives), list(negatives)
    # The i-th choice pairs positives[i % p] with negatives[i % q]: distinct pairs for i < lcm(p, q).
    chosen = 0
    max_chosen = math.lcm(len(positives), len(negatives)) if positives and negatives else 0
    asked: set[str] = set()

    def draw(kind: str) -> _Question | None:
        nonlocal said_yes, chosen
        if kind == VERIFY:
            yes = not said_yes if (verify_yes and verify_no) else bool(verify_yes)
            pool = verify_yes if yes else verify_no
            if not pool:
                return None
            said_yes = yes
            name = pool.pop()
            answer = "yes" if yes else "no"
            return _Question(VERIFY, f"Does this ECG show {name}?", [answer], list(YES_NO), [name])
        if kind == CHOOSE:
            if chosen >= max_chosen:
                return None
            shown, absent = positives[chosen % len(positives)], negatives[chosen % len(negatives)]
            chosen += 1
            options = [shown, absent] if rng.random() < 0.5 else [absent, shown]
            question = f"Which does this ECG show, {options[0]} or {options[1]}?"
            return _Question(CHOOSE, question, [shown], options, options)
        if kind in asked:  # query and report: once per record
            return None
        asked.add(kind)
        if kind == QUERY:
            answer = [name for name in vocabulary if name in has]
            question = "Which conditions does this ECG show? List them all."
            return _Question(QUERY, question, answer, list(vocabulary), [])
        return _Question(REPORT, "Describe this ECG.", [record.report or ""], [], [])

    out: list[_Question] = []
    turn = 0
    while len(out) < n and kinds:
        kind = kinds[turn % len(kinds)]
        question = draw(kind)
        if question is None:
            kinds.remove(kind)  # used up; the next kind moves into this turn
            continue
        out.append(question)
        turn += 1
    return out


def _conversation(record: _Record, number: int, question: _Question) -> Conversation:
    return Conversation(
        source=LABELS_SET,
        source_id=f"{record.corpus}/{record.record_id}/{number}",
        turns=[
            {"role": "user", "content": f"{ECG_PLACEHOLDER}\n{question.question}"},
            {"role": "assistant", "content": ", ".join(question.answer)},
        ],
        ecgs=[EcgRef(record.corpus, record.record_id)],
        question_type=question.kind,
        answer_options=question.options,
        meta={"label_space": record.space, "attribute": question.attribute, "answer": question.answer},
    )


def _conversations(
    records: Sequence[_Record], n: int, seed: int, report: MappingReport
) -> Iterator[Conversation]:
    vocabularies = _vocabularies(records)
    for record in records:
        report.items += 1
        if record.unnamed:
            report.repair("label without a name left out")
        if not record.names and not record.report:
            report.skip("no named labels and no report")
            continue
        rng = random.Random(f"{seed}/{record.corpus}/{record.record_id}")
        questions = _questions(record, vocabularies[record.space], n, rng)
        report.commit()
        for number, question in enumerate(questions):
            yield _conversation(record, number, question)


def map_store_labels(
    indexes: Sequence[pa.Table], *, questions_per_record: int, seed: int
) -> tuple[pa.Table, MappingReport]:
    """The ``labels`` conversation set of one or more segment store indexes, with its mapping report.

    ``report.items`` counts records; each mapped record gives up to ``questions_per_record``
    conversations (fewer when it has fewer distinct questions to ask).
    """
    if questions_per_record < 1:
        raise UserError(f"invalid value for --questions-per-record: {questions_per_record} (at least 1)")
    if not indexes:
        raise UserError("give at least one --store")
    report = MappingReport(source=LABELS_SET)
    records = _records(indexes)
    conversations = list(_conversations(records, questions_per_record, seed, report))
    if not conversations:
        raise UserError(
            f"the store has no labels and no reports ({len(records)} records): "
            f"set {LABELS_SET!r} has nothing to ask about"
        )
    # The options go with the counts, so they survive mixing sets (mix merges the mapping objects).
    mapping = {**report.as_dict(), "options": {"questions_per_record": questions_per_record, "seed": seed}}
    table = with_info(conversation_table(conversations), sources=[LABELS_SET], mapping={LABELS_SET: mapping})
    return table, report
