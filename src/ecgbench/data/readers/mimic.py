"""MIMIC-IV-ECG (PhysioNet v1.0): ``record_list.csv`` (subject_id, study_id, file_name, ecg_time, path)
joined with ``machine_measurements.csv`` on (subject_id, study_id); waveforms are WFDB records under
``files/pNNNN/p<subject>/s<study>/<study>`` (500 Hz, 10 s, 12 leads). The report is the non-empty
``report_0`` ... ``report_17`` machine statements joined in order.

Some MIMIC-IV-ECG records contain NaN stretches; they are handled by the preparation's NaN policy
(short gaps interpolated and counted, long ones rejected), never silently zeroed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ecgbench.data.readers.base import (
    CorpusReader,
    RawRecord,
    RecordRef,
    id_string,
    patient_id_string,
    read_csv_rows,
    read_wfdb,
)

_REPORT_COLUMNS = [f"report_{i}" for i in range(18)]
_MEASUREMENT_COLUMNS = (
    "cart_id",
    "bandwidth",
    "filtering",
    "rr_interval",
    "p_onset",
    "p_end",
    "qrs_onset",
    "qrs_end",
    "t_end",
    "p_axis",
    "qrs_axis",
    "t_axis",
)


def machine_report(row: dict[str, str]) -> str | None:
    """The machine statements of one measurements row, joined as sentences."""
    lines = [row[c].strip() for c in _REPORT_COLUMNS if (row.get(c) or "").strip()]
    if not lines:
        return None
    return " ".join(line if line.endswith((".", "!", "?")) else f"{line}." for line in lines)


class MimicReader(CorpusReader):
    name = "mimic"
    corpus = "mimic"
    mains_hz = 60.0  # recorded in Boston
    expected_fs = (500.0,)

    def metadata_files(self) -> list[Path]:
        return [
            p for p in (self.root / "record_list.csv", self.root / "machine_measurements.csv") if p.is_file()
        ]

    def discover(self) -> list[RecordRef]:
        records = read_csv_rows(self.root / "record_list.csv", ("subject_id", "study_id", "path"))
        measurements: dict[tuple[str, str], dict[str, str]] = {}
        table = self.root / "machine_measurements.csv"
        if table.is_file():
            for row in read_csv_rows(table):
                measurements[(id_string(row["subject_id"]), id_string(row["study_id"]))] = row
        refs = []
        for row in records:
            subject, study = patient_id_string(row["subject_id"]), id_string(row["study_id"])
            problem = None
            if not study.isdigit():
                problem = ("bad_metadata", f"record_list.csv: study_id {row['study_id']!r} is not an integer")
            measured = measurements.get((subject, study), {}) if subject is not None else {}
            meta: dict[str, Any] = {"subject_id": subject, "ecg_time": row.get("ecg_time") or None}
            # measurements join on (subject, study); an unknown subject joins nothing
            for column in _MEASUREMENT_COLUMNS:
                if (measured.get(column) or "").strip():
                    meta[column] = measured[column].strip()
            relative = row["path"].strip().removesuffix(".hea")
            refs.append(
                RecordRef(
                    reader=self.name,
                    corpus=self.corpus,
                    record_id=study,
                    path=str(self.root / relative),
                    source_path=relative,
                    patient_id=subject,  # None when missing: the record is then its own patient
                    report=machine_report(measured),
                    meta=meta,
                    problem=problem,
                )
            )
        return refs

    @staticmethod
    def load(ref: RecordRef) -> RawRecord:
        signal, names, units, fs, _ = read_wfdb(ref.path)
        return RawRecord.from_ref(ref, signal, names, units, fs)
