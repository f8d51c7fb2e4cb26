"""CPSC 2018 (the ICBEB 2018 challenge training set) in both published forms:

* original: MATLAB files with a struct ``ECG`` (fields ``sex``, ``age``, ``data`` = 12 x N float64 in
  mV at 500 Hz, leads I II III aVR aVL aVF V1-V6) and ``REFERENCE.csv``
  (``Recording,First_label,Second_label,Third_label`` with classes 1-9);
* PhysioNet/CinC Challenge 2020 copy: ``.hea`` + ``.mat`` with SNOMED-CT ``# Dx:`` codes.

Labels of both forms use the same condition names (the Challenge's SNOMED mapping of the nine classes)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ecgbench.data.readers.base import (
    CANONICAL_LEADS,
    CorpusReader,
    RawRecord,
    RecordRef,
    RecordRejected,
    parse_age,
    parse_sex,
    read_csv_rows,
)
from ecgbench.data.readers.challenge import list_headers, load_challenge_record, snomed_label
from ecgbench.errors import UserError

FS = 500.0
# REFERENCE.csv classes -> the SNOMED-CT codes the Challenge 2020 used for the same recordings.
CLASS_CODES = {
    "1": "426783006",  # Normal -> sinus rhythm
    "2": "164889003",  # AF
    "3": "270492004",  # I-AVB
    "4": "164909002",  # LBBB
    "5": "59118001",  # RBBB
    "6": "284470004",  # PAC
    "7": "164884008",  # PVC -> ventricular ectopics
    "8": "429622005",  # STD
    "9": "164931005",  # STE
}


def _matlab_scalar(value: Any) -> Any:
    """Unwrap scipy.io's nested object arrays (``array([[52]])``, ``array(['Male'])``)."""
    while isinstance(value, np.ndarray) and value.size == 1:
        value = value.reshape(-1)[0]
    return value.item() if isinstance(value, np.generic) else value


class CpscReader(CorpusReader):
    name = "cpsc"
    corpus = "cpsc"
    mains_hz = 50.0  # recorded in China
    expected_fs = (FS,)

    def metadata_files(self) -> list[Path]:
        reference = self.root / "REFERENCE.csv"
        return [reference] if reference.is_file() else []

    def discover(self) -> list[RecordRef]:
        headers = list_headers(self.root)
        if headers:
            return [
                RecordRef(
                    reader=self.name,
                    corpus=self.corpus,
                    record_id=h.stem,
                    path=str(h.with_suffix("")),
                    source_path=h.relative_to(self.root).with_suffix("").as_posix(),
                    extra={"form": "challenge"},
                )
                for h in headers
            ]
        reference = self.root / "REFERENCE.csv"
        if not reference.is_file():
            raise UserError(
                f"{self.root} is not a CPSC 2018 folder: expected REFERENCE.csv with .mat files, "
                "or Challenge-2020 .hea/.mat records"
            )
        mat_files = {p.stem: p for p in sorted(self.root.rglob("*.mat"))}
        refs = []
        for row in read_csv_rows(reference, ("Recording", "First_label")):
            record = (row.get("Recording") or "").strip()
            if not record:
                continue
            classes = [(row.get(c) or "").strip() for c in ("First_label", "Second_label", "Third_label")]
            classes = [c for c in classes if c]
            unknown = [c for c in classes if c not in CLASS_CODES]
            problem = None
            if unknown:
                problem = (
                    "bad_labels",
                    f"{reference.name}: class {unknown[0]!r} of {record} is not one of 1-9",
                )
            elif not classes:
                problem = ("missing_labels", f"{reference.name}: {record} has no class")
            path = mat_files.get(record, self.root / f"{record}.mat")
            refs.append(
                RecordRef(
                    reader=self.name,
                    corpus=self.corpus,
                    record_id=record,
                    path=str(path),
                    source_path=path.relative_to(self.root).with_suffix("").as_posix(),
                    labels=tuple(snomed_label(CLASS_CODES[c]) for c in classes if c in CLASS_CODES),
                    meta={"cpsc_classes": [int(c) for c in classes if c in CLASS_CODES]},
                    extra={"form": "original"},
                    problem=problem,
                )
            )
        return refs

    @staticmethod
    def load(ref: RecordRef) -> RawRecord:
        if ref.extra.get("form") == "challenge":
            return load_challenge_record(ref, require_labels=True)
        return _load_original(ref)


def _load_original(ref: RecordRef) -> RawRecord:
    import scipy.io

    path = Path(ref.path)
    if not path.is_file():
        raise RecordRejected("missing_file", f"{path} not found")
    try:
        content = scipy.io.loadmat(str(path))
        ecg = content["ECG"][0, 0]
        data = np.asarray(ecg["data"], dtype=np.float64)
        sex, age = _matlab_scalar(ecg["sex"]), _matlab_scalar(ecg["age"])
    except Exception as exc:  # scipy raises ValueError/TypeError/KeyError/IndexError on bad files
        raise RecordRejected("corrupt_file", f"{path.name}: {type(exc).__name__}: {exc}") from None
    if data.ndim != 2 or data.shape[0] != len(CANONICAL_LEADS):
        raise RecordRejected("corrupt_file", f"{path.name}: data has shape {data.shape}, expected (12, N)")
    return RawRecord.from_ref(
        ref, data, list(CANONICAL_LEADS), ["mV"] * 12, FS, age=parse_age(age), sex=parse_sex(sex)
    )
