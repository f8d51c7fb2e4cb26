"""GEM ECG-Grounding (lanxiang1017/GEM, dataset LANSG/ECG-Grounding ``ecg_jsons/``).

Three JSON lists in the same LLaVA-style schema: ``grounding_train_30k.json`` (``ecg-grounding``),
``ECG_Grounding_30k.json`` (``ecg-grounding-pulse``: the 30k grounding items plus PULSE ECGInstruct
conversations) and ``ecg-grounding-test.json`` (``ecg-grounding-test``, the evaluation set). GEM's training
code reads, per item, ``ecg`` -- a WFDB record path under its time-series root whose first folder names the
corpus (``mimic-iv/files/p1000/p10000032/s40689238/40689238``,
``ecg_ptbxl_benchmarking/.../records500/00000/00001_hr``, ``code15/.../<exam_id>``) -- ``image`` and
``conversations`` (``{"from": "human" | "gpt", "value"}``, ``<image>`` in the first question). The test file
also carries ``machine_measurements`` and ``report``, kept in ``meta`` for evaluation. Items without
``ecg`` (PULSE conversations in the mixed file) are resolved from ``image``.
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

from ecgbench.data.conversations import Conversation
from ecgbench.data.mapping.common import (
    MappingReport,
    RecordLookup,
    SkipItem,
    item_id,
    json_files,
    load_json_items,
    map_file_items,
    normalise_turns,
)

_KEPT_FOR_EVALUATION = ("machine_measurements", "report")


def _conversation(
    item: Any, fallback_id: str, source_split: str | None, lookup: RecordLookup, report: MappingReport
) -> Conversation:
    if not isinstance(item, dict):
        raise SkipItem("malformed item")
    paths = [item.get(k) for k in ("ecg", "image")]
    paths = [p for p in paths if isinstance(p, str) and p.strip()]
    if not paths:
        raise SkipItem("missing ECG")
    # The signal path when there is one; the image path only as a fallback.
    ref = lookup.resolve_path(paths[0])
    turns = normalise_turns(item.get("conversations"), 1, report)
    meta: dict[str, Any] = {k: item[k] for k in ("ecg", "image") if isinstance(item.get(k), str)}
    meta |= {k: item[k] for k in _KEPT_FOR_EVALUATION if k in item}
    return Conversation(
        source=report.source,
        source_id=item_id(item, fallback_id),
        source_split=source_split,
        turns=turns,
        ecgs=[ref],
        meta=meta,
    )


def _map(
    source: Path, lookup: RecordLookup, report: MappingReport, split: str | None
) -> Iterator[Conversation]:
    build = partial(_conversation, source_split=split, lookup=lookup, report=report)
    for path in json_files(source):
        yield from map_file_items(path, load_json_items(path), build, report)


def map_ecg_grounding(source: Path, lookup: RecordLookup, report: MappingReport) -> Iterator[Conversation]:
    return _map(source, lookup, report, None)


def map_ecg_grounding_test(
    source: Path, lookup: RecordLookup, report: MappingReport
) -> Iterator[Conversation]:
    return _map(source, lookup, report, "test")
