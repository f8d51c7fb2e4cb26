"""Helpers for the infer tests: paths of the real texts used and the prediction-item schema."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ecgbench.resources import SAMPLE_DIR

PULSE_REPORTS = SAMPLE_DIR / "pulse_ecgbench" / "ptb_report_generation_test.json"
ECGQA_PTBXL = SAMPLE_DIR / "ecgqa" / "ptbxl"


def prediction_item(
    conversation_id: str,
    reference: str,
    prediction: str | None,
    *,
    turn: int = 1,
    question_type: str | None = None,
    answer_options: list[str] | None = None,
    source: str = "test",
    ecg_mode: str = "real",
    **extra: Any,
) -> dict[str, Any]:
    """One prediction item as ``infer generate`` writes it."""
    return {
        "conversation_id": conversation_id,
        "turn": turn,
        "source": source,
        "question_type": question_type,
        "answer_options": answer_options or [],
        "reference": reference,
        "prediction": prediction,
        "ecg_mode": ecg_mode,
        **extra,
    }


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path
