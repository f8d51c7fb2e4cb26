"""Preference sets: (prompt, chosen, rejected) pairs about an ECG, for DPO.

One Parquet row per pair, in the conversational layout trl's DPO data uses (``prompt`` a list of messages,
``chosen`` and ``rejected`` one assistant message each), plus the ECG the pair is about and who judged it:

=================  =============================  ===================================================
column             type                           meaning
=================  =============================  ===================================================
prompt             list<struct<role, content>>    the conversation up to the question (``<ecg>`` in it)
chosen             list<struct<role, content>>    the preferred answer
rejected           list<struct<role, content>>    the other answer
system             string                         system prompt (null: none)
ecg_sha256         string                         SHA-256 of the float32 samples model A read
ecg_path           string                         that ECG as .npy (12, samples) float32 mV
ecg_fs             float64                        its sampling rate, Hz
ecg_refs           list<list<string>>             [[corpus, record_id]] of a store record, else empty
ecg_source         string (JSON)                  the upload's files and hashes, or the store segment
chosen_model       string                         checkpoint id, or ``human`` for a corrected answer
rejected_model     string                         checkpoint id
judge              string                         ``human``, or the model judge's id (``reference:rouge-l``,
                                                  ``llm:MODEL``, ``reward:MODEL``: ``judge compare | rank``)
judge_version      string                         what recorded the judgement (``ecgbench 0.x``), or the
                                                  judge's prompt / method version
score_chosen       float64                        the judge's score of each answer (1 better, 0 worse;
score_rejected     float64                        a rated answer: 1 up, 0 down)
kind               string                         ``preference`` (A/B pick) or ``correction``
feedback_id        string                         the feedback line it came from
timestamp          string                         when it was judged (UTC, ISO 8601)
decoding           string (JSON)                  how the answers were decoded (``judge compare | rank``:
                                                  ``{"chosen": {...}, "rejected": {...}}``)
=================  =============================  ===================================================

From a demo feedback log: a side-by-side pick gives (picked, other); a tie gives no pair. A rating with a
corrected answer gives (correction, the model's answer); a rating alone gives no pair. Pairs whose two
answers are the same text teach nothing and are left out. The ECG is the one model A read: both models read
the same one unless they were trained on stores of another rate or length (the log keeps both).
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ecgbench.errors import UserError

PREFERENCES_FORMAT = "ecgbench-preferences"
PREFERENCES_VERSION = 1
HUMAN = "human"


def preference_schema() -> Any:
    import pyarrow as pa

    message = pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))
    return pa.schema(
        [
            ("prompt", message),
            ("chosen", message),
            ("rejected", message),
            ("system", pa.string()),
            ("ecg_sha256", pa.string()),
            ("ecg_path", pa.string()),
            ("ecg_fs", pa.float64()),
            ("ecg_refs", pa.list_(pa.list_(pa.string()))),
            ("ecg_source", pa.string()),
            ("chosen_model", pa.string()),
            ("rejected_model", pa.string()),
            ("judge", pa.string()),
            ("judge_version", pa.string()),
            ("score_chosen", pa.float64()),
            ("score_rejected", pa.float64()),
            ("kind", pa.string()),
            ("feedback_id", pa.string()),
            ("timestamp", pa.string()),
            ("decoding", pa.string()),
        ],
        metadata={"format": PREFERENCES_FORMAT, "version": str(PREFERENCES_VERSION)},
    )


@dataclass
class ExportResult:
    rows: list[dict[str, Any]] = field(default_factory=list)
    left_out: Counter[str] = field(default_factory=Counter)  # reason -> lines
    missing_ecgs: int = 0


def _answer(text: str) -> list[dict[str, str]]:
    return [{"role": "assistant", "content": text}]


def preference_row(record: dict[str, Any], log_dir: Path) -> tuple[dict[str, Any] | None, str | None]:
    """The pair a feedback line gives, or the reason it gives none."""
    answers, checkpoints = record["answers"], record["checkpoints"]
    choice = record["choice"]
    if record["mode"] == "side_by_side":
        if choice == "tie":
            return None, "ties"
        other = "b" if choice == "a" else "a"
        chosen, rejected = answers[choice], answers[other]
        models = checkpoints[choice], checkpoints[other]
        scores, kind = (1.0, 0.0), "preference"
    else:
        corrected = record.get("corrected")
        if not corrected:
            return None, "ratings without a corrected answer"
        chosen, rejected = corrected, answers["a"]
        models = HUMAN, checkpoints["a"]
        scores, kind = (1.0, 1.0 if choice == "up" else 0.0), "correction"
    if not isinstance(chosen, str) or not isinstance(rejected, str):
        return None, "damaged lines"
    if chosen.strip() == rejected.strip():
        return None, "pairs of identical answers"
    source = record["ecg"]["source"] or {}
    ecg = record["ecg"]["a"]
    refs = [[source["corpus"], source["record_id"]]] if source.get("kind") == "store" else []
    row = {
        "prompt": [{"role": t["role"], "content": t["content"]} for t in record["turns"]],
        "chosen": _answer(chosen),
        "rejected": _answer(rejected),
        "system": record.get("system"),
        "ecg_sha256": ecg["sha256"],
        "ecg_path": str((log_dir / ecg["file"]).resolve()),
        "ecg_fs": float(ecg["fs"]),
        "ecg_refs": refs,
        "ecg_source": json.dumps(source, sort_keys=True),
        "chosen_model": models[0],
        "rejected_model": models[1],
        "judge": HUMAN,
        "judge_version": record.get("written_by") or "ecgbench",
        "score_chosen": scores[0],
        "score_rejected": scores[1],
        "kind": kind,
        "feedback_id": record["id"],
        "timestamp": record["timestamp"],
        "decoding": json.dumps(record.get("decoding"), sort_keys=True),
    }
    return row, None


def export_feedback(logs: list[Path]) -> ExportResult:
    """Every pair the feedback logs give, in log order."""
    from ecgbench.demo.feedback import read_feedback

    result = ExportResult()
    for log in logs:
        records, damaged = read_feedback(log)
        result.left_out["damaged lines"] += len(damaged)
        for record in records:
            try:
                row, reason = preference_row(record, Path(log).parent)
            except (KeyError, TypeError, AttributeError):
                row, reason = None, "damaged lines"
            if row is None:
                result.left_out[reason or "damaged lines"] += 1
                continue
            if not Path(row["ecg_path"]).is_file():
                result.missing_ecgs += 1
            result.rows.append(row)
    return result


def check_preferences_path(out: Path) -> Path:
    if Path(out).suffix.lower() != ".parquet":
        raise UserError(f"--out must end in .parquet: {out}")
    return Path(out)


def write_preferences(rows: list[dict[str, Any]], out: Path) -> Path:
    import pyarrow as pa

    from ecgbench.files import write_parquet

    return write_parquet(check_preferences_path(out), pa.Table.from_pylist(rows, schema=preference_schema()))
