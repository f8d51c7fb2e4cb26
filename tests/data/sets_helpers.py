"""Helpers shared by the conversation-set tests of tests/data (imported as `sets_helpers`)."""

from __future__ import annotations

import json
from collections.abc import Sequence

import pyarrow as pa

from ecgbench.data.store import INDEX_SCHEMA
from ecgbench.resources import SAMPLE_DIR

ECGQA = SAMPLE_DIR / "ecgqa"
PULSE_BENCH = SAMPLE_DIR / "pulse_ecgbench" / "ptb_report_generation_test.json"


def index_table(records: Sequence[dict]) -> pa.Table:
    """An index listing ``records`` (dicts with corpus, record_id and optional patient_id, labels,
    source_path, segments, meta), one row per segment as `data prepare` writes it.

    The bundled sample has waveforms for none of the PTB-XL / MIMIC-IV-ECG records that the bundled
    ECG-QA and PULSE files ask about, so their mapping is tested against an index that lists them.
    """
    rows = []
    for rec in records:
        for k in range(rec.get("segments", 1)):
            rows.append(
                {
                    "segment_id": len(rows),
                    "corpus": rec["corpus"],
                    "record_id": rec["record_id"],
                    "patient_id": rec.get("patient_id", rec["record_id"]),
                    "segment_index": k,
                    "shard": 0,
                    "offset": len(rows),
                    "fs": 250,
                    "n_samples": 1250,
                    "labels": rec.get("labels", []),
                    "report": None,
                    "report_original": None,
                    "age": rec.get("age"),
                    "sex": rec.get("sex"),
                    "source_path": rec.get("source_path", ""),
                    "flat_leads": [],
                    "saturated": False,
                    "nan_filled": 0,
                    "meta": json.dumps(rec.get("meta", {})),
                    "duration_s": 5.0,
                    "start_s": 5.0 * k,
                    "source_fs": 500.0,
                    "source_sha256": "",
                }
            )
    return pa.Table.from_pylist(rows, schema=INDEX_SCHEMA)


def ecgqa_ids(folder: str) -> set[int]:
    ids: set[int] = set()
    for path in (ECGQA / folder).glob("*/*/*.json"):
        for item in json.loads(path.read_text()):
            ids.update(item["ecg_id"])
    return ids
