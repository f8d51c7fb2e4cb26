"""ECG-Chat (YubaoZhao/ECG-Chat): ``ecg_instruct_45k.json`` and ``pretrain_mimic.json``.

Both are LLaVA-style JSON lists; their training code (``llava/train/train.py``) reads, per item, ``ecg`` -- a
WFDB record path relative to the MIMIC-IV-ECG root such as ``files/p1000/p10000032/s40689238/40689238`` --
and ``conversations``, a list of ``{"from": "human" | "gpt", "value": str}`` whose first human turn holds
the ``<ecg>`` placeholder. ``id`` is kept as the source id when present.
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


def _conversation(item: Any, fallback_id: str, lookup: RecordLookup, report: MappingReport) -> Conversation:
    if not isinstance(item, dict):
        raise SkipItem("malformed item")
    ecg = item.get("ecg")
    if not isinstance(ecg, str) or not ecg.strip():
        raise SkipItem("missing ECG")
    ref = lookup.resolve_path(ecg)
    turns = normalise_turns(item.get("conversations"), 1, report)
    return Conversation(
        source=report.source,
        source_id=item_id(item, fallback_id),
        turns=turns,
        ecgs=[ref],
        meta={"ecg": ecg},
    )


def map_ecg_chat(source: Path, lookup: RecordLookup, report: MappingReport) -> Iterator[Conversation]:
    for path in json_files(source):
        build = partial(_conversation, lookup=lookup, report=report)
        yield from map_file_items(path, load_json_items(path), build, report)
