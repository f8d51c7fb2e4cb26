"""PULSE (AIMedLab/PULSE): ECGInstruct (training) and ECGBench (evaluation), JSON or Parquet.

PULSE works on ECG images; each item names the picture, and the picture's path encodes the source record:

- ECGInstruct (``ECGInstruct.json``): LLaVA-style ``{"id", "image", "conversations": [{"from": "human" |
  "gpt", "value"}]}`` with images such as ``mimic_v4/p1000/p10000032/s40689238/40689238-0.png``,
  ``ptb-xl/.../07190_hr-0.png`` or ``code15_v4/.../<exam_id>-0.png``.
- ECGBench evaluation JSON (``evaluation/*.json`` of the PULSE repository, sample bundled):
  ``{"id": "ptb-report-07190_hr-0", "image": "test_images/ptb_test_v4/07190_hr-0.png", "conversation":
  [{"from": "user" | "assistant", "value"}]}`` -- key ``conversation``, roles user/assistant.
- ECGBench on the Hugging Face hub (``PULSE-ECG/ECGBench``, one Parquet folder per subset such as
  ``ptb-test-report``, ``cpsc-test``, ``ecgqa-test``): rows with ``image_path`` and ``conversations``; in
  ``ecgqa-test`` some turn values are lists of single characters.

Images are mapped back to (corpus, record_id); an image whose record is unknown or missing from the store is
a counted skip. The file stem or Parquet subset folder is kept as ``question_type`` for ECGBench.
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

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
from ecgbench.errors import CorruptFileError

_IMAGE_KEYS = ("image", "image_path", "file_path")
_TURN_KEYS = ("conversations", "conversation")
_PARQUET_COLUMNS = ("id", *_IMAGE_KEYS, *_TURN_KEYS)


def _image_path(item: dict[str, Any]) -> str:
    for key in _IMAGE_KEYS:
        value = item.get(key)
        if isinstance(value, str) and value.strip():
            return value
    raise SkipItem("missing ECG")


def _conversation(
    item: Any,
    fallback_id: str,
    subset: str | None,
    source_split: str | None,
    lookup: RecordLookup,
    report: MappingReport,
) -> Conversation:
    if not isinstance(item, dict):
        raise SkipItem("malformed item")
    image = _image_path(item)
    ref = lookup.resolve_path(image)
    raw_turns = next((item[k] for k in _TURN_KEYS if k in item), None)
    turns = normalise_turns(raw_turns, 1, report)
    return Conversation(
        source=report.source,
        source_id=item_id(item, fallback_id),
        source_split=source_split,
        turns=turns,
        ecgs=[ref],
        question_type=subset,
        meta={"image": image} | ({"subset": subset} if subset else {}),
    )


def _parquet_items(path: Path) -> list[dict[str, Any]]:
    try:
        schema = pq.read_schema(path)
        columns = [c for c in _PARQUET_COLUMNS if c in schema.names]
        # Image bytes are never read: only the path tells which record the picture shows.
        if "image" in columns and not pa.types.is_string(schema.field("image").type):
            columns.remove("image")
        return pq.read_table(path, columns=columns).to_pylist()
    except (pa.ArrowInvalid, OSError) as exc:
        raise CorruptFileError(f"{path} is not a readable Parquet file: {exc}") from None


def _items(path: Path) -> list[Any]:
    return _parquet_items(path) if path.suffix == ".parquet" else load_json_items(path)


def _subset(path: Path, source: Path) -> str:
    """ECGBench subset: the Parquet folder below the source (``ptb-test-report/...``) or the file stem."""
    if path.suffix == ".parquet" and path.parent != source:
        return path.relative_to(source).parts[0] if source.is_dir() else path.parent.name
    return path.stem


def _map(
    source: Path, lookup: RecordLookup, report: MappingReport, *, benchmark: bool
) -> Iterator[Conversation]:
    for path in json_files(source, ("*.json", "*.parquet", "**/*.parquet")):
        subset = _subset(path, source) if benchmark else None
        split = "test" if benchmark else None
        build = partial(_conversation, subset=subset, source_split=split, lookup=lookup, report=report)
        yield from map_file_items(path, _items(path), build, report)


def map_ecg_instruct_pulse(
    source: Path, lookup: RecordLookup, report: MappingReport
) -> Iterator[Conversation]:
    return _map(source, lookup, report, benchmark=False)


def map_ecg_bench_pulse(source: Path, lookup: RecordLookup, report: MappingReport) -> Iterator[Conversation]:
    return _map(source, lookup, report, benchmark=True)
