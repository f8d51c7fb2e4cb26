"""`ecgbench judge export`: demo feedback -> preference pairs in trl's conversational DPO layout plus the ECG.

The log is written by the demo's own FeedbackLog, in the schema documented in ecgbench.demo.feedback, about a
real segment of the bundled sample store."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
from typer.testing import CliRunner

from ecgbench.cli import app
from ecgbench.data.store import SegmentStore
from ecgbench.demo.feedback import FeedbackLog
from ecgbench.demo.inputs import StoreCatalog
from ecgbench.judge.export import preference_schema

runner = CliRunner()
QUESTION = [{"role": "user", "content": "<ecg>\nIs this ECG normal?"}]
A, B = "runs/e2e/best#614f42c67c0d158d", "runs/ef/best#0952898a1268ac6c"


def write_log(path: Path, store: Path) -> tuple[FeedbackLog, list[dict[str, Any]]]:
    log = FeedbackLog(path)
    ecg = StoreCatalog([store]).read("ptbxl/1 #0")
    saved = {"source": ecg.source, "a": log.save_ecg(ecg), "b": log.save_ecg(ecg)}
    single = {"source": ecg.source, "a": log.save_ecg(ecg), "b": None}

    def pair(choice: str, a: str, b: str) -> dict[str, Any]:
        return {
            "session": "s1", "mode": "side_by_side", "checkpoints": {"a": A, "b": B}, "ecg": saved,
            "system": "You read ECGs.", "decoding": {"strategy": "greedy", "max_new_tokens": 6},
            "turns": QUESTION, "answers": {"a": a, "b": b}, "choice": choice, "corrected": None,
        }  # fmt: skip

    def rating(choice: str, answer: str, corrected: str | None) -> dict[str, Any]:
        return {
            "session": "s2", "mode": "single", "checkpoints": {"a": A, "b": None}, "ecg": single,
            "system": None, "decoding": {"strategy": "greedy", "max_new_tokens": 6},
            "turns": QUESTION, "answers": {"a": answer, "b": None}, "choice": choice, "corrected": corrected,
        }  # fmt: skip

    lines = [
        log.append(pair("a", "Sinus rhythm.", "Atrial fibrillation.")),
        log.append(pair("b", "Normal.", "Sinus rhythm, normal ECG.")),
        log.append(pair("tie", "Normal.", "Normal ECG.")),
        log.append(pair("a", "Normal.", "Normal. ")),  # the same answer: nothing to learn
        log.append(rating("up", "Normal ECG.", None)),
        log.append(rating("down", "Normal ECG.", "Sinus rhythm with left axis deviation.")),
        log.append(rating("up", "Normal ECG.", "Normal ECG.")),  # a correction that changes nothing
    ]
    with path.open("a", encoding="utf-8") as handle:
        handle.write('{"format": "ecgbench-demo-feedback", "version": 1, "id": "cut sh')  # a crash mid-line
    return log, lines


def test_export_writes_the_pairs(tmp_path: Path, sample_store: Path) -> None:
    log, lines = write_log(tmp_path / "fb" / "feedback.jsonl", sample_store)
    out = tmp_path / "preferences.parquet"
    result = runner.invoke(app, ["judge", "export", str(log.path), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == (
        f"wrote {out}: 3 pairs (2 picks, 1 corrections); left out 1 damaged lines, 2 pairs of identical "
        "answers, 1 ratings without a corrected answer, 1 ties"
    )
    table = pq.read_table(out)
    schema = preference_schema()  # Parquet names list items "element": same types otherwise
    assert table.schema.names == schema.names and table.schema.metadata == schema.metadata
    assert table.cast(schema).schema.equals(schema, check_metadata=True)
    rows = table.to_pylist()
    assert [r["feedback_id"] for r in rows] == [lines[0]["id"], lines[1]["id"], lines[5]["id"]]
    first, second, correction = rows
    # trl's conversational preference layout: message lists with role and content
    assert first["prompt"] == QUESTION and first["system"] == "You read ECGs."
    assert first["chosen"] == [{"role": "assistant", "content": "Sinus rhythm."}]
    assert first["rejected"] == [{"role": "assistant", "content": "Atrial fibrillation."}]
    assert (first["chosen_model"], first["rejected_model"], first["kind"]) == (A, B, "preference")
    assert (second["chosen"][0]["content"], second["chosen_model"]) == ("Sinus rhythm, normal ECG.", B)
    assert (first["score_chosen"], first["score_rejected"]) == (1.0, 0.0)
    assert correction["chosen"][0]["content"] == "Sinus rhythm with left axis deviation."
    assert (correction["chosen_model"], correction["rejected_model"], correction["kind"]) == (
        "human",
        A,
        "correction",
    )
    assert (correction["score_chosen"], correction["score_rejected"]) == (1.0, 0.0)
    store_ecg = SegmentStore.open(sample_store).read(0)
    for row in rows:
        assert row["judge"] == "human" and row["judge_version"].startswith("ecgbench ")
        assert row["ecg_refs"] == [["ptbxl", "1"]] and row["ecg_fs"] == 250.0
        assert json.loads(row["ecg_source"])["segment_index"] == 0
        np.testing.assert_array_equal(np.load(row["ecg_path"], allow_pickle=False), store_ecg)
        assert Path(row["ecg_path"]).stem == row["ecg_sha256"]
        assert json.loads(row["decoding"]) == {"strategy": "greedy", "max_new_tokens": 6}


def test_export_refuses_what_it_cannot_use(tmp_path: Path, sample_store: Path) -> None:
    empty = FeedbackLog(tmp_path / "ties.jsonl")
    ecg = StoreCatalog([sample_store]).read("ptbxl/1 #0")
    empty.append(
        {
            "session": "s",
            "mode": "side_by_side",
            "checkpoints": {"a": A, "b": B},
            "ecg": {"source": ecg.source, "a": empty.save_ecg(ecg), "b": empty.save_ecg(ecg)},
            "system": None,
            "decoding": {},
            "turns": QUESTION,
            "answers": {"a": "x", "b": "y"},
            "choice": "tie",
            "corrected": None,
        }
    )
    for args, message in (
        ([str(empty.path), "--out", str(tmp_path / "p.parquet")], "no preference pairs in"),
        ([str(tmp_path / "missing.jsonl"), "--out", str(tmp_path / "p.parquet")], "feedback log not found"),
        ([str(empty.path), "--out", str(tmp_path / "p.csv")], "must end in .parquet"),
        ([str(empty.path), "--out", str(sample_store / "p.parquet")], "inside the segment store"),
    ):
        result = runner.invoke(app, ["judge", "export", *args])
        assert result.exit_code == 2, result.output
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and message in lines[0], result.stderr
    assert not (tmp_path / "p.parquet").exists()
