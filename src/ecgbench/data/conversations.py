"""Conversation sets: the one normalised form of every ECG question / instruction set.

A conversation set is a Parquet file with one row per conversation. ``ecgbench data map`` writes it from a
source set (ECG-QA, ECG-Chat, PULSE, GEM), ``ecgbench data split`` fills ``split`` and ``fold``, and the
data path (``ecgbench.data.dataset``) resolves each ECG reference to a record of the segment stores.

Columns:

================  ==========================================  =============================================
name              type                                        meaning
================  ==========================================  =============================================
conversation_id   string                                      unique in a set: ``<source>/<source_id>``
source            string                                      set name, e.g. ``ecg-qa-ptbxl``
source_id         string                                      the item's id in the source file
source_split      string, null                                the source's own split (ECG-QA train/valid/test)
turns             list<struct<role: string, content: string>> roles system | user | assistant; user text
                                                              holds one ``<ecg>`` placeholder per ECG
ecgs              list<struct<corpus: string,                 store records, in placeholder order
                  record_id: string>>
question_type     string, null                                e.g. ``single-verify``; null if none in source
answer_options    list<string>                                closed answer set; empty if the source has none
split             string, null                                train | val | test, filled by ``data split``
fold              int32, null                                 patient-grouped fold, filled by ``data split``
meta              string                                      JSON object of source-specific fields
================  ==========================================  =============================================

The Parquet schema metadata key ``ecgbench`` holds a JSON object: ``format`` ("conversation_set"),
``version``, ``sources`` (set names), ``stores`` (segment stores the ECG references were checked against)
and ``mapping`` (mapped / repaired / skipped counts per source).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from ecgbench.errors import CorruptFileError, UserError
from ecgbench.files import read_parquet, write_parquet

FORMAT_NAME = "conversation_set"
FORMAT_VERSION = 1
METADATA_KEY = b"ecgbench"
ECG_PLACEHOLDER = "<ecg>"
SPLITS = ("train", "val", "test")

TURN_TYPE = pa.struct([("role", pa.string()), ("content", pa.string())])
ECG_REF_TYPE = pa.struct([("corpus", pa.string()), ("record_id", pa.string())])
SCHEMA = pa.schema(
    [
        ("conversation_id", pa.string()),
        ("source", pa.string()),
        ("source_id", pa.string()),
        ("source_split", pa.string()),
        ("turns", pa.list_(TURN_TYPE)),
        ("ecgs", pa.list_(ECG_REF_TYPE)),
        ("question_type", pa.string()),
        ("answer_options", pa.list_(pa.string())),
        ("split", pa.string()),
        ("fold", pa.int32()),
        ("meta", pa.string()),
    ]
)


@dataclass(frozen=True)
class EcgRef:
    """One ECG of a conversation: a record of a segment store."""

    corpus: str
    record_id: str


@dataclass
class Conversation:
    source: str
    source_id: str
    turns: list[dict[str, str]]
    ecgs: list[EcgRef]
    source_split: str | None = None
    question_type: str | None = None
    answer_options: list[str] = field(default_factory=list)
    split: str | None = None
    fold: int | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def conversation_id(self) -> str:
        return f"{self.source}/{self.source_id}"

    def row(self) -> dict[str, Any]:
        return {
            "conversation_id": self.conversation_id,
            "source": self.source,
            "source_id": self.source_id,
            "source_split": self.source_split,
            "turns": self.turns,
            "ecgs": [{"corpus": e.corpus, "record_id": e.record_id} for e in self.ecgs],
            "question_type": self.question_type,
            "answer_options": list(self.answer_options),
            "split": self.split,
            "fold": self.fold,
            "meta": json.dumps(self.meta, ensure_ascii=False, sort_keys=True),
        }


def conversation_table(conversations: Iterable[Conversation]) -> pa.Table:
    rows = [c.row() for c in conversations]
    return pa.Table.from_pylist(rows, schema=SCHEMA)


def iter_conversations(table: pa.Table) -> Iterator[Conversation]:
    for row in table.to_pylist():
        yield Conversation(
            source=row["source"],
            source_id=row["source_id"],
            turns=row["turns"],
            ecgs=[EcgRef(e["corpus"], e["record_id"]) for e in row["ecgs"]],
            source_split=row["source_split"],
            question_type=row["question_type"],
            answer_options=row["answer_options"] or [],
            split=row["split"],
            fold=row["fold"],
            meta=json.loads(row["meta"]) if row["meta"] else {},
        )


def set_info(table: pa.Table) -> dict[str, Any]:
    """The ``ecgbench`` metadata object of a conversation set table (empty if absent)."""
    raw = (table.schema.metadata or {}).get(METADATA_KEY)
    return json.loads(raw) if raw else {}


def with_info(table: pa.Table, **info: Any) -> pa.Table:
    merged = {"format": FORMAT_NAME, "version": FORMAT_VERSION, **set_info(table), **info}
    return table.replace_schema_metadata({METADATA_KEY: json.dumps(merged, sort_keys=True).encode()})


def write_conversation_set(path: Path, table: pa.Table) -> Path:
    """Write atomically, so an interrupted run never leaves half a file."""
    path = Path(path)
    if table.schema.remove_metadata() != SCHEMA:
        raise ValueError(f"not a conversation set table: {table.schema}")
    ids = table.column("conversation_id")
    if pc.count_distinct(ids).as_py() != len(ids):
        raise UserError(f"{path}: conversation ids are not unique (was a set mixed in twice?)")
    return write_parquet(path, with_info(table))


def read_conversation_set(path: Path, columns: Sequence[str] | None = None) -> pa.Table:
    """A conversation set, checked; ``columns`` reads only those (a set of millions opens faster
    without the columns its reader does not use)."""
    path = Path(path)
    names = list(SCHEMA.names if columns is None else columns)
    unknown = [name for name in names if name not in SCHEMA.names]
    if unknown:
        raise ValueError(f"not conversation set columns: {unknown}")
    table = read_parquet(path, "conversation set", columns=names)
    info = set_info(table)
    if info.get("format") != FORMAT_NAME:
        raise CorruptFileError(f"{path} is not a conversation set (no ecgbench metadata)")
    if info.get("version", 0) > FORMAT_VERSION:
        raise UserError(f"{path} was written by a newer ecgbench (version {info['version']})")
    missing = [name for name in names if name not in table.schema.names]
    if missing:
        raise CorruptFileError(f"{path} lacks conversation set columns: {', '.join(missing)}")
    schema = pa.schema([SCHEMA.field(name) for name in names])
    return table.select(names).cast(schema).replace_schema_metadata(table.schema.metadata)


def mix_conversation_sets(tables: Sequence[pa.Table]) -> pa.Table:
    """One set holding every conversation of ``tables`` (metadata merged: sources, stores, mapping)."""
    if not tables:
        raise UserError("nothing to mix: no conversation sets given")
    infos = [set_info(t) for t in tables]
    sources = [s for info in infos for s in info.get("sources", [])]
    duplicated = sorted({s for s in sources if sources.count(s) > 1})
    if duplicated:
        raise UserError(f"set {', '.join(duplicated)} given more than once to mix")
    stores = sorted({s for info in infos for s in info.get("stores", [])})
    mapping = {k: v for info in infos for k, v in info.get("mapping", {}).items()}
    mixed = pa.concat_tables([t.replace_schema_metadata(None) for t in tables])
    return with_info(mixed, sources=sources, stores=stores, mapping=mapping)


def count_placeholders(turns: Sequence[Mapping[str, str]]) -> int:
    return sum(t["content"].count(ECG_PLACEHOLDER) for t in turns if t["role"] == "user")
