"""CODE-15% (Zenodo record 4916206): ``exams.csv`` + ``exams_part{i}.hdf5``.

Each HDF5 file holds ``tracings`` of shape (N, 4096, 12) float32 at 400 Hz, leads in the order DI, DII,
DIII, AVR, AVL, AVF, V1-V6, and ``exam_id`` of shape (N,) naming the exam of each row. Recordings of 7 s
(2800 samples) or 10 s (4000 samples) were centred and zero-padded on both sides to 4096 samples; the
reader strips that padding so it never becomes signal (the peer kept it).

Amplitude unit: the authors' documentation is ambiguous ("scale 1e-4V" next to "multiply by 1000");
values are taken as millivolts, which is the reading the authors' own models use (record this in the
manifest notes when comparing amplitudes across corpora)."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import numpy as np

from ecgbench.data.readers.base import (
    CorpusReader,
    RawRecord,
    RecordRef,
    RecordRejected,
    id_string,
    parse_age,
    patient_id_string,
    read_csv_rows,
)
from ecgbench.errors import CorruptFileError

LEADS = ["DI", "DII", "DIII", "AVR", "AVL", "AVF", "V1", "V2", "V3", "V4", "V5", "V6"]
FS = 400.0
_LABEL_COLUMNS = {
    "1dAVb": "1st degree av block",
    "RBBB": "right bundle branch block",
    "LBBB": "left bundle branch block",
    "SB": "sinus bradycardia",
    "ST": "sinus tachycardia",
    "AF": "atrial fibrillation",
}


_TRUE = ("true", "1", "1.0")
_FALSE = ("false", "0", "0.0")


def _true(value: str | None) -> bool:
    return (value or "").strip().lower() in _TRUE


def _label_problem(exam: dict[str, str]) -> tuple[str, str] | None:
    """A label column that is neither true nor false would silently drop (or invent) a label."""
    for column in (*_LABEL_COLUMNS, "normal_ecg"):
        value = (exam.get(column) or "").strip()
        if value.lower() not in (*_TRUE, *_FALSE):
            return (
                "bad_labels",
                f"exams.csv: {column} {value!r} of exam {exam['exam_id']} is not True or False",
            )
    return None


def _sex(is_male: str | None) -> str | None:
    """The ``is_male`` column as M / F; blank is unknown."""
    return ("M" if _true(is_male) else "F") if (is_male or "").strip() else None


@functools.lru_cache(maxsize=4)
def _open_hdf5(path: str) -> Any:
    """One open handle per file per worker process (exams of a file are read in row order)."""
    import h5py

    return h5py.File(path, "r")


def strip_zero_padding(signal: np.ndarray) -> tuple[np.ndarray, int, int]:
    """Drop leading and trailing samples where every lead is exactly zero; returns the signal and the
    number of samples removed at each end."""
    active = np.flatnonzero(np.any(signal != 0, axis=0))
    if active.size == 0:
        return signal[:, :0], signal.shape[1], 0
    start, stop = int(active[0]), int(active[-1]) + 1
    return signal[:, start:stop], start, signal.shape[1] - stop


class Code15Reader(CorpusReader):
    name = "code15"
    corpus = "code15"
    mains_hz = 60.0  # recorded in Brazil
    expected_fs = (FS,)

    def metadata_files(self) -> list[Path]:
        return [self.root / "exams.csv"]

    def discover(self) -> list[RecordRef]:
        exams = read_csv_rows(self.root / "exams.csv", ("exam_id", "patient_id", "trace_file"))
        rows_by_file: dict[str, dict[str, int]] = {}
        refs = []
        for exam in exams:
            trace_file = exam["trace_file"].strip()
            if trace_file not in rows_by_file:
                rows_by_file[trace_file] = self._exam_rows(self.root / trace_file)
            exam_id = id_string(exam["exam_id"])
            labels = tuple(name for column, name in _LABEL_COLUMNS.items() if _true(exam.get(column)))
            if _true(exam.get("normal_ecg")):
                labels = ("normal ecg", *labels)
            meta: dict[str, Any] = {"trace_file": trace_file}
            for column in ("nn_predicted_age", "death", "timey"):
                if (exam.get(column) or "").strip():
                    meta[column] = exam[column].strip()
            refs.append(
                RecordRef(
                    reader=self.name,
                    corpus=self.corpus,
                    record_id=exam_id,
                    path=str(self.root / trace_file),
                    source_path=f"{Path(trace_file).stem}/{exam_id}",
                    patient_id=patient_id_string(exam["patient_id"]),
                    labels=labels,
                    age=parse_age(exam.get("age")),
                    sex=_sex(exam.get("is_male")),
                    meta=meta,
                    extra={"row": rows_by_file[trace_file].get(exam_id)},
                    problem=_label_problem(exam),
                )
            )
        # Read each HDF5 file front to back.
        return sorted(refs, key=lambda r: (r.path, r.extra["row"] if r.extra["row"] is not None else -1))

    @staticmethod
    def _exam_rows(path: Path) -> dict[str, int]:
        """exam_id -> row number in one HDF5 file ({} when the file is missing: its exams are counted)."""
        if not path.is_file():
            return {}
        try:
            ids = np.asarray(_open_hdf5(str(path))["exam_id"][:])
        except (OSError, KeyError) as exc:
            raise CorruptFileError(
                f"{path} is not a CODE-15% HDF5 file with an exam_id dataset: {exc}"
            ) from None
        return {str(int(v)): i for i, v in enumerate(ids)}

    @staticmethod
    def load(ref: RecordRef) -> RawRecord:
        if not Path(ref.path).is_file():
            raise RecordRejected("missing_file", f"{ref.path} not found")
        row = ref.extra.get("row")
        if row is None:
            raise RecordRejected("missing_record", f"exam {ref.record_id} is not in {Path(ref.path).name}")
        try:
            tracing = np.asarray(_open_hdf5(ref.path)["tracings"][row], dtype=np.float64)
        except (OSError, KeyError, ValueError) as exc:
            raise RecordRejected("corrupt_file", f"{Path(ref.path).name} row {row}: {exc}") from None
        if tracing.shape != (4096, 12) and (tracing.ndim != 2 or tracing.shape[1] != 12):
            raise RecordRejected("corrupt_file", f"tracing of exam {ref.record_id} has shape {tracing.shape}")
        signal, before, after = strip_zero_padding(tracing.T)
        if signal.shape[1] == 0:
            raise RecordRejected("empty_signal", f"exam {ref.record_id} is all zeros")
        meta = dict(ref.meta, row=row, padding_stripped=[before, after])
        return RawRecord.from_ref(ref, signal, list(LEADS), ["mV"] * 12, FS, meta=meta)
