"""The demo's feedback log: one JSON line per judgement, appended, never rewritten.

::

    FEEDBACK.jsonl               one line per preference (side by side) or rating (single model)
    ecgs/<sha256>.npy            each judged ECG as the model read it: (12, samples) float32 mV

A line holds: ``format``/``version``, ``written_by`` (the ecgbench version), ``id``, ``timestamp`` (UTC),
``session``, ``mode`` (``side_by_side`` or ``single``), ``checkpoints`` (``a``, ``b``: checkpoint ids, ``b``
null in single mode), ``ecg`` (``source``: the upload's file names and hashes or the store record;
``a``/``b``: ``sha256``, ``file``, ``fs``, ``samples`` of what each model read), ``system``, ``decoding``,
``turns`` (the conversation the answers reply to, ending with the user's question), ``answers`` (``a``,
``b``), ``choice`` (``a``, ``b`` or ``tie`` side by side; ``up`` or ``down`` for one model) and
``corrected`` (the user's corrected answer, or null).
``ecgbench judge export`` turns the log into a preference set.

Each line goes out in one ``write`` on a file opened for appending, under an exclusive ``flock``, so the
sessions of one demo, and several demos sharing a log, never interleave partial lines. A line a crash cut
short stays as it is; the next line starts on a fresh line, and readers count the cut one as damaged.
"""

from __future__ import annotations

import fcntl
import json
import os
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from ecgbench import __version__
from ecgbench.demo.inputs import ECG
from ecgbench.errors import CorruptFileError, UserError
from ecgbench.files import atomic_write, refuse_inside_store

FEEDBACK_FORMAT = "ecgbench-demo-feedback"
FEEDBACK_VERSION = 1
ECG_DIR = "ecgs"
PAIRWISE_CHOICES = ("a", "b", "tie")
RATING_CHOICES = ("up", "down")


class FeedbackLog:
    """Appends judgements to ``path`` and keeps the ECGs they were made on beside it."""

    def __init__(self, path: Path):
        self.path = Path(path)
        if self.path.is_dir():
            raise UserError(f"--feedback {self.path} is a folder; give the path of a .jsonl file")
        refuse_inside_store(self.path, "--feedback")
        self.path.parent.mkdir(parents=True, exist_ok=True)

    @property
    def ecg_dir(self) -> Path:
        return self.path.parent / ECG_DIR

    def save_ecg(self, ecg: ECG) -> dict[str, Any]:
        """Keep ``ecg`` (once per content) and describe it for a log line."""
        relative = f"{ECG_DIR}/{ecg.sha256}.npy"
        target = self.path.parent / relative
        signal = np.ascontiguousarray(ecg.signal, dtype=np.float32)
        if not target.is_file():
            atomic_write(target, lambda tmp: _save_npy(tmp, signal))
        return {"sha256": ecg.sha256, "file": relative, "fs": ecg.fs, "samples": int(signal.shape[1])}

    def append(self, record: dict[str, Any]) -> dict[str, Any]:
        """Write one judgement as a new line (``format``, ``version``, ``id`` and ``timestamp`` added)."""
        line = {
            "format": FEEDBACK_FORMAT,
            "version": FEEDBACK_VERSION,
            "written_by": f"ecgbench {__version__}",
            "id": uuid.uuid4().hex,
            "timestamp": datetime.now(UTC).isoformat(timespec="milliseconds"),
            **record,
        }
        check_record(line)
        data = (json.dumps(line, ensure_ascii=False) + "\n").encode("utf-8")
        fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            size = os.fstat(fd).st_size
            if size and os.pread(fd, 1, size - 1) != b"\n":
                data = b"\n" + data  # after a line a crash cut short
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)  # closing releases the lock
        return line


def _save_npy(path: Path, array: np.ndarray) -> None:
    with path.open("wb") as handle:
        np.save(handle, array, allow_pickle=False)


def check_record(record: dict[str, Any]) -> None:
    """A log line has what ``judge export`` needs, with a choice that fits its mode."""
    missing = [
        key
        for key in ("id", "timestamp", "mode", "checkpoints", "ecg", "turns", "answers", "choice")
        if key not in record
    ]
    if missing:
        raise ValueError(f"feedback line lacks {', '.join(missing)}")
    allowed = PAIRWISE_CHOICES if record["mode"] == "side_by_side" else RATING_CHOICES
    if record["mode"] not in ("side_by_side", "single") or record["choice"] not in allowed:
        raise ValueError(f"choice {record['choice']!r} does not fit mode {record['mode']!r}")
    turns = record["turns"]
    if not turns or turns[-1].get("role") != "user":
        raise ValueError("feedback turns must end with the user's question")


def read_feedback(path: Path) -> tuple[list[dict[str, Any]], list[int]]:
    """The log's judgements in order, and the numbers of the lines that are damaged (cut short by a crash,
    edited by hand, or of another format), which are left out."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"feedback log not found: {path}")
    records: list[dict[str, Any]] = []
    damaged: list[int] = []
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        raise CorruptFileError(f"cannot read {path}: {exc.strerror or exc}") from None
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            if not isinstance(record, dict) or record.get("format") != FEEDBACK_FORMAT:
                raise ValueError("not a feedback line")
            if int(record.get("version", 0)) > FEEDBACK_VERSION:
                raise UserError(f"{path} line {number} was written by a newer ecgbench")
            check_record(record)
        except (ValueError, TypeError, AttributeError, KeyError):
            damaged.append(number)
            continue
        records.append(record)
    return records, damaged
