"""Helpers shared by the conversation-set tests of tests/data (imported as `sets_helpers`)."""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from pathlib import Path

import pyarrow as pa

from ecgbench.data.store import INDEX_SCHEMA
from ecgbench.resources import SAMPLE_DIR

ECGQA = SAMPLE_DIR / "ecgqa"
PULSE_BENCH = SAMPLE_DIR / "pulse_ecgbench" / "ptb_report_generation_test.json"

# ECG-Chat (YubaoZhao/ECG-Chat, llava/llava/train/train.py + constants.py): a JSON list of
# {"id", "ecg": <WFDB path relative to the MIMIC-IV-ECG root>, "conversations": [{"from": "human"|"gpt",
# "value"}]}, "<ecg>" in the first human turn. The record is the real first MIMIC-IV-ECG study
# (record_list.csv of the bundled sample).
ECG_CHAT_ITEMS = [
    {
        "id": "40689238",
        "ecg": "files/p1000/p10000032/s40689238/40689238",
        "conversations": [
            {"from": "human", "value": "<ecg>\nWhat is the rhythm of this ECG?"},
            {"from": "gpt", "value": "Sinus rhythm."},
            {"from": "human", "value": "Is there an atrial abnormality?"},
            {"from": "gpt", "value": "Possible right atrial abnormality; borderline ECG."},
        ],
    },
    # Same ECG, second conversation with the same id (ids repeat in LLaVA data): kept, numbered.
    {
        "id": "40689238",
        "ecg": "files/p1000/p10000032/s40689238/40689238",
        "conversations": [
            {"from": "human", "value": "Describe this ECG.\n<ecg>"},
            {"from": "gpt", "value": "Sinus rhythm. Possible right atrial abnormality. Borderline ECG."},
        ],
    },
    {
        "id": "no-ecg",
        "conversations": [{"from": "human", "value": "<ecg>\nq"}, {"from": "gpt", "value": "a"}],
    },
    {
        "id": "empty-answer",
        "ecg": "files/p1000/p10000032/s40689238/40689238",
        "conversations": [{"from": "human", "value": "<ecg>\nq"}, {"from": "gpt", "value": "  "}],
    },
    {
        "id": "missing-record",
        "ecg": "files/p1000/p10000099/s49999999/49999999",
        "conversations": [{"from": "human", "value": "<ecg>\nq"}, {"from": "gpt", "value": "a"}],
    },
    "not an object",
]


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


def write_ecgqa(root: Path, corpus: str, ecg_ids: Sequence[Sequence[int]], per_file: int = 12) -> Path:
    """An ECG-QA question folder in the release layout (``<root>/{ptbxl,mimic-iv-ecg}/{template,
    paraphrased}/<split>/<first sample_id>.json`` + ``answers_for_each_template.csv``) from the bundled real
    files: the first ``per_file`` items of each, unchanged but for ``ecg_id``, re-pointed in turn (across the
    files) at ``ecg_ids`` (lists of one or two ids: records of a fixture corpus, since the bundled waveforms
    are not the ECGs the real items ask about). Returns ``root``."""
    folder = {"ptbxl": "ptbxl", "mimic": "mimic-iv-ecg"}[corpus]
    source = ECGQA / folder
    (root / folder).mkdir(parents=True, exist_ok=True)
    shutil.copy(source / "answers_for_each_template.csv", root / folder / "answers_for_each_template.csv")
    k = 0
    for path in sorted(source.glob("*/*/*.json")):
        items = json.loads(path.read_text(encoding="utf-8"))[:per_file]
        for item in items:
            item["ecg_id"] = list(ecg_ids[k % len(ecg_ids)])
            k += 1
        target = root / folder / path.relative_to(source)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(json.dumps(items, indent=4, ensure_ascii=False), encoding="utf-8")
    return root


def write_ecg_chat(path: Path, studies: Sequence[tuple[str, str]], templates: Sequence[dict] = ()) -> Path:
    """An ECG-Chat JSON list (schema: :data:`ECG_CHAT_ITEMS`) with ``templates`` (default: the two real-record
    conversations of :data:`ECG_CHAT_ITEMS`) asked about each MIMIC-IV-ECG (subject, study) of ``studies``."""
    items = []
    for subject, study in studies:
        for template in templates or ECG_CHAT_ITEMS[:2]:
            ecg = f"files/p{subject[:4]}/p{subject}/s{study}/{study}"
            items.append({**template, "id": study, "ecg": ecg})
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(items, indent=2), encoding="utf-8")
    return path


def write_pulse_bench(path: Path, ecg_ids: Sequence[int], per_record: int = 4) -> Path:
    """PULSE's ECGBench ``ptb_report_generation_test.json`` (bundled, real) cut to ``per_record`` items per
    PTB-XL ``ecg_ids``, each item's ``id`` and ``image`` re-pointed at that record the way PULSE names its
    pictures (``test_images/ptb_test_v4/<ecg_id:05d>_hr-0.png``)."""
    real = json.loads(PULSE_BENCH.read_text(encoding="utf-8"))
    items = []
    for k, item in enumerate(real[: per_record * len(ecg_ids)]):
        name = f"{ecg_ids[k % len(ecg_ids)]:05d}_hr-0"
        items.append({**item, "id": f"ptb-report-{name}", "image": f"test_images/ptb_test_v4/{name}.png"})
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(items, indent=4, ensure_ascii=False), encoding="utf-8")
    return path
