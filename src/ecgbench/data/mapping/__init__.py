"""Source question / instruction sets mapped to conversation sets: one module per source family."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import pyarrow as pa

from ecgbench.data.conversations import Conversation, conversation_table, with_info
from ecgbench.data.mapping.common import MappingReport, RecordLookup
from ecgbench.data.mapping.ecg_chat import map_ecg_chat
from ecgbench.data.mapping.ecgqa import map_ecgqa
from ecgbench.data.mapping.gem import map_ecg_grounding, map_ecg_grounding_test
from ecgbench.data.mapping.labels import LABELS_SET
from ecgbench.data.mapping.pulse import map_ecg_bench_pulse, map_ecg_instruct_pulse
from ecgbench.errors import UserError

Mapper = Callable[[Path, RecordLookup, MappingReport], Iterator[Conversation]]


@dataclass(frozen=True)
class SourceSet:
    name: str
    mapper: Mapper
    description: str


SOURCE_SETS: dict[str, SourceSet] = {
    s.name: s
    for s in (
        SourceSet("ecg-qa-ptbxl", partial(map_ecgqa, corpus="ptbxl"), "ECG-QA on PTB-XL (folder or JSON)"),
        SourceSet(
            "ecg-qa-mimic", partial(map_ecgqa, corpus="mimic"), "ECG-QA on MIMIC-IV-ECG (folder or JSON)"
        ),
        SourceSet("ecg-instruct-45k", map_ecg_chat, "ECG-Chat ecg_instruct_45k.json"),
        SourceSet("pretrain-mimic", map_ecg_chat, "ECG-Chat pretrain_mimic.json"),
        SourceSet("ecg-instruct-pulse", map_ecg_instruct_pulse, "PULSE ECGInstruct JSON or Parquet"),
        SourceSet("ecg-bench-pulse", map_ecg_bench_pulse, "PULSE ECGBench JSON or Parquet folder"),
        SourceSet("ecg-grounding", map_ecg_grounding, "GEM grounding_train_30k.json"),
        SourceSet("ecg-grounding-pulse", map_ecg_grounding, "GEM ECG_Grounding_30k.json"),
        SourceSet("ecg-grounding-test", map_ecg_grounding_test, "GEM ecg-grounding-test.json"),
    )
}


# Sets built from the segment store's own labels and reports: they take no --source.
STORE_SETS: dict[str, str] = {
    LABELS_SET: "verify / choose / query questions on each record's labels, and its report (no --source)"
}


def map_source_set(name: str, source: Path, lookup: RecordLookup) -> tuple[pa.Table, MappingReport]:
    """One source set as a conversation set table, with the report of what was mapped, repaired, skipped."""
    if name not in SOURCE_SETS:
        raise UserError(f"unknown set {name!r} (known: {', '.join(SOURCE_SETS)})")
    source = Path(source)
    if not source.exists():
        raise UserError(f"source not found: {source}")
    report = MappingReport(source=name)
    conversations: list[Conversation] = []
    seen: dict[str, int] = {}
    for conversation in SOURCE_SETS[name].mapper(source, lookup, report):
        # Sources reuse ids (several conversations about one ECG): number the repeats, keep them all.
        count = seen.get(conversation.source_id, 0)
        seen[conversation.source_id] = count + 1
        if count:
            conversation.source_id = f"{conversation.source_id}#{count + 1}"
            report.repaired["repeated id numbered"] += 1
        conversations.append(conversation)
    table = with_info(conversation_table(conversations), sources=[name], mapping={name: report.as_dict()})
    return table, report
