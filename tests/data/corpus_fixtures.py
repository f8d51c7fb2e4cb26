"""Corpora with no real waveform in the bundled sample, written in their exact published layouts from
real signals of other sample records.

* MIMIC-IV-ECG v1.0 (PhysioNet, doi:10.13026/4nqg-sb35): ``record_list.csv`` and
  ``machine_measurements.csv`` are the real rows bundled in the sample; the waveform is a WFDB record
  ``files/p1000/p10000032/s40689238/40689238`` (.hea + format-16 .dat, 500 Hz, 5000 samples, gain
  200 adu/mV) with MIMIC's lead order I II III aVR aVF aVL V1-V6, written with wfdb from the real
  500 Hz PTB-XL record HR06000.
* CODE-15% (Zenodo 4916206 README): ``exams.csv`` with the published columns and
  ``exams_part0.hdf5`` holding ``tracings`` (N, 4096, 12) float32 at 400 Hz (leads DI DII DIII AVR AVL
  AVF V1-V6, recordings centred and zero-padded to 4096 samples) and ``exam_id`` (N,), written from
  real 500 Hz Chapman-Shaoxing/Ningbo records resampled to 400 Hz.
"""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import h5py
import numpy as np
import wfdb
from scipy import signal as sps

from ecgbench.resources import SAMPLE_DIR

MIMIC_LEADS = ["I", "II", "III", "aVR", "aVF", "aVL", "V1", "V2", "V3", "V4", "V5", "V6"]
MIMIC_RECORD = "files/p1000/p10000032/s40689238/40689238"
CODE15_COLUMNS = [
    "exam_id",
    "age",
    "is_male",
    "nn_predicted_age",
    "1dAVb",
    "RBBB",
    "LBBB",
    "SB",
    "ST",
    "AF",
    "patient_id",
    "death",
    "timey",
    "normal_ecg",
    "trace_file",
]


def real_record(name: str) -> wfdb.Record:
    return wfdb.rdrecord(str(SAMPLE_DIR / name))


def write_mimic(root: Path, nan_span: tuple[int, int, int] | None = None) -> Path:
    """A MIMIC-IV-ECG root with the real metadata rows and one waveform; ``nan_span`` (lead index in
    MIMIC order, start, stop) blanks samples the way MIMIC's NaN stretches look when read."""
    root.mkdir(parents=True, exist_ok=True)
    for table in ("record_list.csv", "machine_measurements.csv"):
        shutil.copy(SAMPLE_DIR / "mimic_iv_ecg" / table, root / table)
    source = real_record("ptbxl_cinc2021/HR06000")
    by_name = {name: source.p_signal[:, i] for i, name in enumerate(source.sig_name)}
    signal = np.stack([by_name[name] for name in MIMIC_LEADS], axis=1)
    if nan_span is not None:
        lead, start, stop = nan_span
        signal[start:stop, lead] = np.nan
    folder = root / Path(MIMIC_RECORD).parent
    folder.mkdir(parents=True, exist_ok=True)
    wfdb.wrsamp(
        "40689238",
        fs=500,
        units=["mV"] * 12,
        sig_name=MIMIC_LEADS,
        p_signal=signal,
        fmt=["16"] * 12,
        adc_gain=[200.0] * 12,
        baseline=[0] * 12,
        write_dir=str(folder),
    )
    return root


def to_code15(name: str, seconds: int) -> np.ndarray:
    """A real 500 Hz record as a CODE-15% tracing: 400 Hz, ``seconds`` long, zero-padded to 4096."""
    record = real_record(name)
    at_400 = sps.resample_poly(record.p_signal, 4, 5, axis=0)[: seconds * 400]
    pad = (4096 - at_400.shape[0]) // 2
    tracing = np.zeros((4096, 12), dtype=np.float32)
    tracing[pad : pad + at_400.shape[0]] = at_400
    return tracing


def write_code15(root: Path) -> Path:
    """exams.csv + exams_part0.hdf5: a 7 s exam (648 zeros each side), a 10 s exam (48 zeros each
    side), a row of zeros whose exam_id is 0 (not in the CSV), and an exam listed in the CSV whose
    HDF5 file is absent."""
    root.mkdir(parents=True, exist_ok=True)
    tracings = np.stack(
        [
            to_code15("chapman_shaoxing_ningbo_cinc2021/JS00666", 7),
            to_code15("chapman_shaoxing_ningbo_cinc2021/JS20001", 10),
            np.zeros((4096, 12), dtype=np.float32),
        ]
    )
    with h5py.File(root / "exams_part0.hdf5", "w") as handle:
        handle.create_dataset("tracings", data=tracings)
        handle.create_dataset("exam_id", data=np.array([1169160, 2873686, 0], dtype=np.int64))
    rows = [
        [1169160, 38, "True", 40.16, "False", "False", "False", "False", "True", "False", 523632, "False",
         2.09, "False", "exams_part0.hdf5"],
        [2873686, 73, "True", 67.57, "False", "True", "False", "False", "False", "False", 1724173, "", "",
         "False", "exams_part0.hdf5"],
        [168405, 67, "True", 80.57, "False", "False", "False", "False", "False", "True", 1099183, "", "",
         "False", "exams_part1.hdf5"],
    ]  # fmt: skip
    with (root / "exams.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(CODE15_COLUMNS)
        writer.writerows(rows)
    return root


def copy_record(name: str, target: Path) -> Path:
    """Copy a sample record's .hea and signal files into ``target``; returns the new header path."""
    target.mkdir(parents=True, exist_ok=True)
    source = SAMPLE_DIR / name
    for file in source.parent.glob(source.name + ".*"):
        shutil.copy(file, target / file.name)
    return target / (source.name + ".hea")


# Rows 6002-6004 of PTB-XL 1.0.3's ptbxl_database.csv with its header: raw lines of the official file, as
# in shared/data/ptbxl_cinc2021/ptbxl_database_rows.csv (see its README: read from xxender13/TrustECG
# data/ptb-xl/ptbxl_database.csv, commit d453df6, and checked there); the bundled sample has rows 1, 6000 and
# 6001. PTB-XL is CC BY 4.0 (Wagner et al., Sci Data 7, 154 (2020)).
PTBXL_ROWS_6002_6004 = Path(__file__).parent / "ptbxl_database_rows_6002-6004.csv"


def write_ptbxl(root: Path) -> Path:
    """A PTB-XL 1.0.3 root in its published layout (``ptbxl_database.csv``, ``scp_statements.csv``,
    ``records100/``, ``records500/``) with the bundled real records and their real metadata rows: ecg_id 1
    (the real ``records100/00000/00001_lr`` files) and 6000-6004 (``records500/06000/0600x_hr``, format-16
    WFDB written with wfdb from their real Challenge-2021 copies HR06000-HR06004). Six patients, five of them
    with NORM as first statement."""
    root.mkdir(parents=True, exist_ok=True)
    shutil.copy(SAMPLE_DIR / "ptbxl" / "scp_statements.csv", root / "scp_statements.csv")
    copy_record("ptbxl/records100/00000/00001_lr", root / "records100" / "00000")
    tables = [SAMPLE_DIR / "ptbxl" / "ptbxl_database.csv",
              SAMPLE_DIR / "ptbxl_cinc2021" / "ptbxl_database_rows.csv", PTBXL_ROWS_6002_6004]  # fmt: skip
    header, rows = None, []
    for table in tables:
        with table.open(newline="") as handle:
            first, *more = list(csv.reader(handle))
        assert header in (None, first)
        header = first
        rows += more
    assert header is not None
    with (root / "ptbxl_database.csv").open("w", newline="") as handle:
        csv.writer(handle).writerows([header, *rows])
    column = header.index("filename_hr")
    for row in rows[1:]:
        record = real_record(f"ptbxl_cinc2021/HR{int(row[0]):05d}")
        target = root / row[column]
        target.parent.mkdir(parents=True, exist_ok=True)
        wfdb.wrsamp(
            target.name,
            fs=500,
            units=["mV"] * 12,
            sig_name=record.sig_name,
            p_signal=record.p_signal,
            fmt=["16"] * 12,
            adc_gain=[1000.0] * 12,
            baseline=[0] * 12,
            write_dir=str(target.parent),
        )
    return root


# Real sample records whose signals stand in for the extra MIMIC-IV-ECG studies of write_mimic_cohort.
_COHORT_SIGNALS = [f"ptbxl_cinc2021/HR0600{k}" for k in range(1, 5)] + [
    f"chapman_shaoxing_ningbo_cinc2021/JS2000{k}" for k in range(5)
]


def write_mimic_cohort(root: Path, subjects: int = 5) -> list[tuple[str, str]]:
    """A MIMIC-IV-ECG root as :func:`write_mimic` with two studies for each of ``subjects`` patients: the real
    subject 10000032 / study 40689238 (its real rows) and studies under made-up ids of the published form
    (8-digit subject and study ids, ``files/p<first 4>/p<subject>/s<study>/<study>``) whose metadata rows copy
    the real rows with the ids changed and whose waveforms are further real sample records (HR06001-HR06004,
    JS20000-JS20004) written as MIMIC does (500 Hz, MIMIC's lead order, gain 200 adu/mV). Returns (subject,
    study) of every study, in order; a patient's two studies are next to each other."""
    write_mimic(root)
    studies = [("10000032", "40689238")]
    for k in range(2 * subjects - 1):
        studies.append(("10000032" if k == 0 else f"{19999900 + (k + 1) // 2}", f"{49999901 + k}"))
    with (root / "record_list.csv").open(newline="") as handle:
        (record_header, real_record_row) = list(csv.reader(handle))
    with (root / "machine_measurements.csv").open(newline="") as handle:
        (measure_header, real_measure_row) = list(csv.reader(handle))
    records, measures = [real_record_row], [real_measure_row]
    for (subject, study), name in zip(studies[1:], _COHORT_SIGNALS, strict=False):
        path = f"files/p{subject[:4]}/p{subject}/s{study}/{study}"
        records.append([subject, study, study, real_record_row[3], path])
        measures.append([subject, study, *real_measure_row[2:]])
        source = real_record(name)
        by_name = {n.upper(): source.p_signal[:, i] for i, n in enumerate(source.sig_name)}
        signal = np.stack([by_name[n.upper()] for n in MIMIC_LEADS], axis=1)
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        wfdb.wrsamp(study, fs=500, units=["mV"] * 12, sig_name=MIMIC_LEADS, p_signal=signal[:5000],
                    fmt=["16"] * 12, adc_gain=[200.0] * 12, baseline=[0] * 12,
                    write_dir=str((root / path).parent))  # fmt: skip
    for name, header, rows in (("record_list.csv", record_header, records),
                               ("machine_measurements.csv", measure_header, measures)):  # fmt: skip
        with (root / name).open("w", newline="") as handle:
            csv.writer(handle).writerows([header, *rows])
    return studies[: len(records)]
