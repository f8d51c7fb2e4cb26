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
