"""ECG-QA (Jwoo5/ecg-qa) for PTB-XL and MIMIC-IV-ECG, template and paraphrased, every question type.

Upstream layout (the ``output/`` folder of the ECG-QA release)::

    {ptbxl,mimic-iv-ecg}/
        answers_for_each_template.csv         template_id,classes  (classes: a Python list literal)
        {template,paraphrased}/{train,valid,test}/<first sample_id>.json

Each JSON file is a list of items ``{template_id, question_id, sample_id, question_type, attribute_type,
question, answer: [str], ecg_id: [int], attribute: [str] | null}``; ``ecg_id`` holds the PTB-XL ecg_id or
the MIMIC-IV-ECG study_id, two of them for the comparison questions (first ECG first). The ECG-QA split is
kept as ``source_split``; template and paraphrased items share sample ids, so the variant is part of the id.
"""

from __future__ import annotations

import ast
import csv
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ecgbench.data.conversations import ECG_PLACEHOLDER, Conversation, EcgRef
from ecgbench.data.mapping.common import (
    MappingReport,
    RecordLookup,
    SkipItem,
    load_json_items,
    map_items,
)
from ecgbench.errors import CorruptFileError, UserError

VARIANTS = ("template", "paraphrased")
SPLITS = ("train", "valid", "test")
_CORPUS_FOLDERS = {"ptbxl": "ptbxl", "mimic": "mimic-iv-ecg"}


def find_root(source: Path, corpus: str) -> Path:
    """The ECG-QA folder of one corpus: ``source`` itself or its ``ptbxl``/``mimic-iv-ecg`` child."""
    folder = _CORPUS_FOLDERS[corpus]
    for candidate in (source, source / folder, source / "output" / folder):
        if any((candidate / variant).is_dir() for variant in VARIANTS):
            return candidate
    raise UserError(f"no ECG-QA {folder} folder (with template/ or paraphrased/) at {source}")


def question_files(source: Path, corpus: str) -> list[tuple[Path, str, str]]:
    """(file, variant, split) of every question file; a single file gets both from its path if it can."""
    if source.is_file():
        parts = source.parts
        variant = parts[-3] if len(parts) >= 3 and parts[-3] in VARIANTS else "template"
        split = parts[-2] if parts[-2] in SPLITS else None
        return [(source, variant, split or "")]
    root = find_root(source, corpus)
    files = [
        (path, variant, split)
        for variant in VARIANTS
        for split in SPLITS
        for path in sorted((root / variant / split).glob("*.json"))
    ]
    if not files:
        raise UserError(
            f"no ECG-QA question files under {root}/{{template,paraphrased}}/{{train,valid,test}}/"
        )
    return files


def answer_options(root: Path) -> dict[int, list[str]]:
    """template_id -> the closed answer set, from ``answers_for_each_template.csv`` ({} if absent)."""
    path = root / "answers_for_each_template.csv"
    if not path.is_file():
        return {}
    options: dict[int, list[str]] = {}
    with path.open(newline="", encoding="utf-8") as fh:
        for line, row in enumerate(csv.DictReader(fh), start=2):
            try:
                classes = ast.literal_eval(row["classes"])  # literals only: never evaluates code
                options[int(row["template_id"])] = [str(c) for c in classes]
            except (KeyError, ValueError, SyntaxError, TypeError):
                raise CorruptFileError(f"{path}:{line}: expected template_id and a list of classes") from None
    return options


def _answer(item: dict[str, Any], report: MappingReport) -> list[str]:
    answer = item.get("answer")
    if isinstance(answer, str):
        report.repair("answer stored as a string")
        answer = [answer]
    if not isinstance(answer, list) or not all(isinstance(a, str) for a in answer):
        raise SkipItem("malformed item")
    answer = [a.strip() for a in answer if a.strip()]
    if not answer:
        raise SkipItem("empty answer")
    return answer


def _conversation(
    item: Any,
    *,
    source: str,
    corpus: str,
    variant: str,
    split: str,
    options: dict[int, list[str]],
    lookup: RecordLookup,
    report: MappingReport,
) -> Conversation:
    if not isinstance(item, dict):
        raise SkipItem("malformed item")
    question, ecg_ids, sample_id = item.get("question"), item.get("ecg_id"), item.get("sample_id")
    if not isinstance(question, str) or not isinstance(ecg_ids, list) or type(sample_id) not in (int, str):
        raise SkipItem("malformed item")
    question_type = item.get("question_type")
    if question_type is not None and not isinstance(question_type, str):
        raise SkipItem("malformed item")
    if not question.strip():
        raise SkipItem("empty question")
    answer = _answer(item, report)
    if not ecg_ids:
        raise SkipItem("missing ECG")
    # ECG-QA writes ecg_id as a list of integers; true or 6002.9 must not become record 1 or 6002.
    if not all(type(ecg_id) is int for ecg_id in ecg_ids):
        raise SkipItem("malformed ECG id")
    refs = [lookup.require(EcgRef(corpus, str(ecg_id))) for ecg_id in ecg_ids]
    template_id = item.get("template_id")
    user = f"{ECG_PLACEHOLDER}\n" * len(refs) + question.strip()
    return Conversation(
        source=source,
        source_id=f"{variant}/{sample_id}",
        source_split=split or None,
        turns=[{"role": "user", "content": user}, {"role": "assistant", "content": ", ".join(answer)}],
        ecgs=refs,
        question_type=question_type,
        answer_options=options.get(template_id, []) if type(template_id) is int else [],
        meta={
            "variant": variant,
            "template_id": template_id,
            "question_id": item.get("question_id"),
            "attribute_type": item.get("attribute_type"),
            "attribute": item.get("attribute"),
            "answer": answer,
        },
    )


def map_ecgqa(
    source: Path, lookup: RecordLookup, report: MappingReport, *, corpus: str
) -> Iterator[Conversation]:
    files = question_files(source, corpus)
    # A single question file <root>/<variant>/<split>/N.json: the options file sits in <root>.
    root = source.parents[2] if source.is_file() and len(source.parents) > 2 else find_root(source, corpus)
    options = answer_options(root)
    for path, variant, split in files:
        yield from map_items(
            load_json_items(path),
            lambda item, variant=variant, split=split: _conversation(
                item,
                source=report.source,
                corpus=corpus,
                variant=variant,
                split=split,
                options=options,
                lookup=lookup,
                report=report,
            ),
            report,
        )
