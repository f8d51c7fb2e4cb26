"""The feedback log: appended, never rewritten; concurrent writers never interleave partial lines; a line a
crash cut short is counted as damaged and the next one starts on a fresh line."""

from __future__ import annotations

import json
import multiprocessing
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ecgbench.data.store import SegmentStore
from ecgbench.demo.feedback import FeedbackLog, read_feedback
from ecgbench.demo.inputs import ECG
from ecgbench.errors import UserError

ANSWER_CHARS = 300_000  # a line far larger than a pipe or page buffer: a split write would show


def judgement(writer: str, k: int, ecg: dict[str, Any] | None = None) -> dict[str, Any]:
    """A feedback record as the demo writes it (see ecgbench.demo.feedback) with a long answer that names
    its writer in every character block."""
    block = f"[{writer}:{k}]"
    return {
        "session": writer,
        "mode": "side_by_side",
        "checkpoints": {"a": "runs/a/best#0", "b": "runs/b/best#1"},
        "ecg": ecg or {"source": {"kind": "upload"}, "a": None, "b": None},
        "system": None,
        "decoding": {"strategy": "greedy", "max_new_tokens": 6},
        "turns": [{"role": "user", "content": "<ecg>\nIs this ECG normal?"}],
        "answers": {"a": block * (ANSWER_CHARS // len(block)), "b": "no"},
        "choice": "a",
        "corrected": None,
    }


def write_many(path: str, writer: str, count: int) -> None:
    log = FeedbackLog(Path(path))
    for k in range(count):
        log.append(judgement(writer, k))


def test_concurrent_writers_append_whole_lines(tmp_path: Path) -> None:
    path = tmp_path / "feedback.jsonl"
    context = multiprocessing.get_context("spawn")
    processes = [context.Process(target=write_many, args=(str(path), f"p{i}", 15)) for i in range(2)]
    threads = [threading.Thread(target=write_many, args=(str(path), f"t{i}", 15)) for i in range(2)]
    for worker in [*processes, *threads]:
        worker.start()
    for thread in threads:
        thread.join(timeout=120)
    for process in processes:
        process.join(timeout=120)
        assert process.exitcode == 0
    records, damaged = read_feedback(path)
    assert damaged == [] and len(records) == 60 and len({r["id"] for r in records}) == 60
    for record in records:
        block = f"[{record['session']}:"
        assert record["answers"]["a"].count(block) == record["answers"]["a"].count("[")  # one writer's text
    seen = {(r["session"], int(r["answers"]["a"].split(":")[1].split("]")[0])) for r in records}
    assert seen == {(w, k) for w in ("p0", "p1", "t0", "t1") for k in range(15)}


def test_a_cut_line_is_counted_and_the_next_starts_afresh(tmp_path: Path) -> None:
    path = tmp_path / "feedback.jsonl"
    log = FeedbackLog(path)
    first = log.append(judgement("s", 0))
    text = path.read_text(encoding="utf-8")
    path.write_text(text + text[: len(text) // 2], encoding="utf-8")  # a crash in the middle of a write
    third = log.append(judgement("s", 2))
    records, damaged = read_feedback(path)
    assert [r["id"] for r in records] == [first["id"], third["id"]] and damaged == [2]
    assert path.read_text(encoding="utf-8").startswith(text)  # what was there is kept as it was


def test_judged_ecgs_are_kept_once_as_plain_npy(tmp_path: Path, sample_store: Path) -> None:
    signal = SegmentStore.open(sample_store).read(0)
    log = FeedbackLog(tmp_path / "log" / "feedback.jsonl")
    ecg = ECG(signal, 250.0, {"kind": "store"})
    saved = log.save_ecg(ecg)
    assert saved == {"sha256": ecg.sha256, "file": f"ecgs/{ecg.sha256}.npy", "fs": 250.0, "samples": 1250}
    file = tmp_path / "log" / saved["file"]
    stamp = file.stat().st_mtime_ns
    assert log.save_ecg(ECG(signal.copy(), 250.0, {})) == saved and file.stat().st_mtime_ns == stamp
    np.testing.assert_array_equal(np.load(file, allow_pickle=False), signal)


def test_bad_records_and_paths(tmp_path: Path, sample_store: Path) -> None:
    log = FeedbackLog(tmp_path / "feedback.jsonl")
    for wrong in (
        {"choice": "up"},  # a rating in side-by-side mode
        {"mode": "single", "choice": "a"},
        {"turns": [{"role": "assistant", "content": "x"}]},
    ):
        with pytest.raises(ValueError):
            log.append({**judgement("s", 0), **wrong})
    assert not log.path.exists()
    with pytest.raises(UserError, match="is a folder"):
        FeedbackLog(tmp_path)
    with pytest.raises(UserError, match="inside the segment store"):
        FeedbackLog(sample_store / "feedback.jsonl")
    with pytest.raises(UserError, match="not found"):
        read_feedback(tmp_path / "missing.jsonl")
    other = tmp_path / "other.jsonl"
    other.write_text(json.dumps({"format": "something-else"}) + "\n" + "not json\n", encoding="utf-8")
    assert read_feedback(other) == ([], [1, 2])
