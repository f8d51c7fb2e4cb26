"""The record type every corpus reader produces, and the helpers the readers share.

A reader works in two steps so that preparation can run in parallel:

* ``discover()`` (in the parent, cheap): lists the records of a corpus as :class:`RecordRef` objects that
  carry everything known from the corpus's metadata tables (ids, labels, reports, demographics).
* ``load(ref)`` (in a worker, a static method): reads the waveform and returns a :class:`RawRecord`.

A record that cannot be used raises :class:`RecordRejected` with a short machine-readable reason; the
preparation counts reasons and keeps going.
"""

from __future__ import annotations

import csv
import math
import re
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

# The one lead order used everywhere in ecgbench (the peer mixed two orders across corpora).
CANONICAL_LEADS: tuple[str, ...] = ("I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6")
_LEAD_KEYS = {name.lower(): i for i, name in enumerate(CANONICAL_LEADS)}
# Names some devices and corpora use for the standard leads (CODE-15%: DI, DII, DIII).
_LEAD_ALIASES = {"di": "i", "dii": "ii", "diii": "iii", "lead i": "i", "lead ii": "ii", "lead iii": "iii"}
# Leads that are not part of the 12-lead set and are dropped without complaint (Frank XYZ, rhythm strips).
_IGNORED_LEADS = {"vx", "vy", "vz", "x", "y", "z"}

# Physical units to millivolts (matched case-insensitively; WFDB's default unit is mV).
_UNIT_TO_MV = {"mv": 1.0, "uv": 1e-3, "µv": 1e-3, "μv": 1e-3, "v": 1e3, "nu": None}


class RecordRejected(Exception):
    """A record that cannot be prepared; ``reason`` is a short key used for counting."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class RecordRef:
    """One record as listed by a reader's ``discover()``; small and picklable (sent to workers)."""

    reader: str  # key of the reader whose ``load`` reads it
    corpus: str  # value of the index's ``corpus`` column
    record_id: str
    path: str  # absolute path of the record (without extension for WFDB/MATLAB records)
    source_path: str  # relative to the corpus root, without extension
    patient_id: str | None = None
    labels: tuple[str, ...] = ()
    report: str | None = None
    report_original: str | None = None
    age: float | None = None
    sex: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    # Reader-private values the loader needs (e.g. a row number inside an HDF5 file).
    extra: dict[str, Any] = field(default_factory=dict)
    # (reason, detail) of a defect found in the corpus's metadata (a truncated label field, an unknown
    # class, a bad fold): the record is rejected with it, counted and listed, never kept half-labelled.
    problem: tuple[str, str] | None = None


@dataclass
class RawRecord:
    """A waveform as read from disk: leads in the file's own order, values in physical units."""

    ref: RecordRef
    signal: np.ndarray  # (n_leads, n_samples) float64
    lead_names: list[str]
    units: list[str]
    fs: float
    labels: list[str] = field(default_factory=list)
    age: float | None = None
    sex: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_ref(
        cls,
        ref: RecordRef,
        signal: np.ndarray,
        lead_names: list[str],
        units: list[str],
        fs: float,
        **known: Any,
    ) -> RawRecord:
        """A record with the labels, age, sex and meta its ref listed, unless ``known`` overrides them."""
        listed = {"labels": list(ref.labels), "age": ref.age, "sex": ref.sex, "meta": dict(ref.meta)}
        return cls(ref=ref, signal=signal, lead_names=lead_names, units=units, fs=fs, **(listed | known))


class CorpusReader(ABC):
    """Base class of the per-corpus readers."""

    name: ClassVar[str]  # the command-line name (``ecgbench data prepare <name>``)
    corpus: ClassVar[str]  # the index's corpus value
    mains_hz: ClassVar[float | None] = None  # power-line frequency where the corpus was recorded
    expected_fs: ClassVar[tuple[float, ...] | None] = None  # published sampling rates

    def __init__(self, root: Path, **options: Any):
        self.root = Path(root)
        self.options = options
        if not self.root.is_dir():
            from ecgbench.errors import UserError

            raise UserError(f"corpus root is not a directory: {self.root}")

    @abstractmethod
    def discover(self) -> list[RecordRef]:
        """Every record of the corpus under ``root``, in a deterministic order."""

    @staticmethod
    @abstractmethod
    def load(ref: RecordRef) -> RawRecord:
        """Read one record's waveform (runs in a worker process)."""

    def metadata_files(self) -> list[Path]:
        """Tables whose checksums go into the manifest."""
        return []


# ------------------------------------------------------------------------------------- ids and rates

# A patient id made from a record id starts with this; no corpus writes ids like it (they are numbers).
OWN_PATIENT_PREFIX = "record:"
# How tables write a missing value (pandas writes NaN as "nan" or leaves the field empty).
_MISSING = {"", "nan", "na", "n/a", "none", "null", "<na>"}


def own_patient_id(record_id: str) -> str:
    """The patient id of a record whose patient is unknown: the record is its own patient, under an id that
    cannot collide with a real one (PTB-XL record 1 is not patient 1)."""
    return f"{OWN_PATIENT_PREFIX}{record_id}"


def patient_id_string(value: Any) -> str | None:
    """A patient id from a metadata table, or None when the table leaves it missing ("", "nan", ...): a
    missing id must never become one shared id that merges unrelated patients."""
    if value is None:
        return None
    text = str(value).strip()
    if text.lower() in _MISSING or text.startswith(OWN_PATIENT_PREFIX):
        return None
    return id_string(text)


def check_sampling_rate(fs: float, where: str) -> None:
    """Reject a record whose sampling rate is not a plausible ECG rate (see ``wfdb_header.FS_RANGE``)."""
    from ecgbench.data.readers.wfdb_header import HeaderProblem, check_rate

    try:
        check_rate(float(fs), where)
    except HeaderProblem as exc:
        raise RecordRejected(exc.reason, exc.detail) from None


# ---------------------------------------------------------------------------------------------- leads


def canonical_lead_index(name: str) -> int | None:
    """Index of a header lead name in the canonical order (any case); None if not a 12-lead name."""
    key = name.strip().lower()
    key = _LEAD_ALIASES.get(key, key)
    return _LEAD_KEYS.get(key)


def to_canonical_leads(
    signal: np.ndarray, names: list[str], policy: str = "reject"
) -> tuple[np.ndarray, list[str]]:
    """Reorder ``signal`` (n_leads, n) to I II III aVR aVL aVF V1-V6.

    ``policy`` for absent leads: "reject" raises, "derive" computes missing limb leads from I and II
    (Einthoven/Goldberger), "zero" derives what it can and zero-fills the rest. Returns the reordered
    signal and the names of leads that are not measured (derived or zero-filled)."""
    out = np.full((len(CANONICAL_LEADS), signal.shape[1]), np.nan, dtype=np.float64)
    present = [False] * len(CANONICAL_LEADS)
    for row, name in enumerate(names):
        idx = canonical_lead_index(name)
        if idx is None:
            if name.strip().lower() in _IGNORED_LEADS:
                continue
            raise RecordRejected("unknown_lead", f"lead name {name!r} is not one of the 12 standard leads")
        if present[idx]:
            raise RecordRejected("duplicate_lead", f"lead {CANONICAL_LEADS[idx]} appears twice")
        out[idx] = signal[row]
        present[idx] = True
    missing = [CANONICAL_LEADS[i] for i, ok in enumerate(present) if not ok]
    if not missing:
        return out, []
    if policy == "reject":
        raise RecordRejected("missing_leads", "missing " + " ".join(missing))
    not_measured = _derive_limb_leads(out, present)
    still = [CANONICAL_LEADS[i] for i, ok in enumerate(present) if not ok]
    if still and policy == "derive":
        raise RecordRejected("missing_leads", "cannot derive " + " ".join(still))
    for name in still:
        out[CANONICAL_LEADS.index(name)] = 0.0
    return out, not_measured + still


def _derive_limb_leads(out: np.ndarray, present: list[bool]) -> list[str]:
    """Fill absent limb leads in place: any two of I, II, III give the third, and I and II give the
    augmented leads (Einthoven and Goldberger). Returns the names of the leads it derived."""
    derived: list[str] = []
    if not present[0] and present[1] and present[2]:
        out[0] = out[1] - out[2]
        present[0] = True
        derived.append("I")
    elif not present[1] and present[0] and present[2]:
        out[1] = out[0] + out[2]
        present[1] = True
        derived.append("II")
    if not (present[0] and present[1]):
        return derived
    formulas = {
        2: lambda: out[1] - out[0],  # III
        3: lambda: -(out[0] + out[1]) / 2,  # aVR
        4: lambda: out[0] - out[1] / 2,  # aVL
        5: lambda: out[1] - out[0] / 2,  # aVF
    }
    for idx, formula in formulas.items():
        if not present[idx]:
            out[idx] = formula()
            present[idx] = True
            derived.append(CANONICAL_LEADS[idx])
    return derived


def to_millivolts(signal: np.ndarray, units: list[str]) -> np.ndarray:
    """Scale each lead to mV from its header unit."""
    scale = np.empty(len(units))
    for k, unit in enumerate(units):
        key = (unit or "mV").strip().lower()
        factor = _UNIT_TO_MV.get(key)
        if factor is None:
            raise RecordRejected("unknown_units", f"unit {unit!r} of lead {k} cannot be converted to mV")
        scale[k] = factor
    return signal * scale[:, None]


# ------------------------------------------------------------------------------------------ WFDB files


def read_wfdb(path: str) -> tuple[np.ndarray, list[str], list[str], float, list[str]]:
    """Read a WFDB record (``.hea`` + ``.dat``/``.mat``, any wfdb-supported format) as (leads, samples).

    Returns signal, lead names, units, sampling rate and header comments. The header is checked first
    (:mod:`~ecgbench.data.readers.wfdb_header`: sampling rate, calibration, MATLAB signal files, file
    sizes) and the samples against its initial values and checksums. Format-16 records (nearly all 12-lead
    corpora) are read by :mod:`ecgbench.data.readers.wfdb_fast`, which gives wfdb's values ten times
    faster; everything else goes through wfdb. Problems become :class:`RecordRejected` with a reason
    (missing_file, corrupt_file, bad_fs, uncalibrated, format_mismatch, checksum_mismatch) and a detail
    that names the file, the field and its value."""
    from ecgbench.data.readers.wfdb_fast import read_format16
    from ecgbench.data.readers.wfdb_header import HeaderProblem, check_samples

    header = Path(path + ".hea")
    facts = _checked_header(header)
    try:
        fast = read_format16(path, facts[1])
    except OSError:  # an unreadable signal file: let wfdb report it the way it always has
        fast = None
    if fast is None:
        return _read_wfdb_with_wfdb(path, header, facts)
    try:
        check_samples(fast.digital, facts[0])
    except HeaderProblem as exc:
        raise RecordRejected(exc.reason, exc.detail) from None
    return fast.signal, fast.sig_name, fast.units, fast.fs, fast.comments


def _checked_header(header: Path) -> tuple[Any, str]:
    """(checked header, its text), or the rejection that says what is wrong with it."""
    from ecgbench.data.readers.wfdb_header import HeaderProblem, check_header, read_header_text

    if not header.is_file():
        raise RecordRejected("missing_file", f"{header} not found")
    try:
        text = read_header_text(header)
    except OSError as exc:
        raise RecordRejected("corrupt_file", f"{header.name} cannot be read: {exc.strerror or exc}") from None
    try:
        return check_header(text, header), text
    except HeaderProblem as exc:
        raise RecordRejected(exc.reason, exc.detail) from None


def _read_wfdb_with_wfdb(
    path: str, header: Path, facts: tuple[Any, str] | None = None
) -> tuple[np.ndarray, list[str], list[str], float, list[str]]:
    """Any record wfdb reads (other formats, multi-segment records), checked as :func:`read_wfdb` checks
    the records it reads itself."""
    import wfdb

    from ecgbench.data.readers.wfdb_header import HeaderProblem, check_samples

    checked = (facts or _checked_header(header))[0]
    try:
        # Digital first where the header's checksums apply, then wfdb's own conversion (what
        # rdrecord(physical=True) does), so the values are wfdb's.
        record = wfdb.rdrecord(path, physical=checked.multi_segment)
        if not checked.multi_segment and record.d_signal is not None:
            check_samples(np.asarray(record.d_signal), checked)
            record.dac(expanded=False, return_res=64, inplace=True)
    except HeaderProblem as exc:
        raise RecordRejected(exc.reason, exc.detail) from None
    except FileNotFoundError as exc:
        raise RecordRejected("missing_file", f"{exc.filename or exc}: signal file not found") from None
    except Exception as exc:  # wfdb raises many types (ValueError, IndexError, struct errors) on bad files
        raise RecordRejected(
            "corrupt_file", f"{header.name}: wfdb cannot read this record ({type(exc).__name__}: {exc})"
        ) from None
    if record.p_signal is None or record.p_signal.ndim != 2 or record.p_signal.shape[0] == 0:
        raise RecordRejected("corrupt_file", f"{header.name}: no samples")
    if record.sig_len and record.p_signal.shape[0] < record.sig_len:
        raise RecordRejected("corrupt_file", f"{header.name}: signal file shorter than the header says")
    units = list(record.units or ["mV"] * record.n_sig)
    signal = record.p_signal.T.astype(np.float64)
    return signal, list(record.sig_name), units, float(record.fs), list(record.comments or [])


def parse_header_comments(comments: list[str]) -> dict[str, str]:
    """``# Key: value`` comment lines (Challenge headers) as a dict with lower-case keys."""
    values: dict[str, str] = {}
    for line in comments:
        key, sep, value = line.partition(":")
        if sep:
            values.setdefault(key.strip().lower(), value.strip())
    return values


def parse_age(value: Any) -> float | None:
    try:
        age = float(value)
    except (TypeError, ValueError):
        return None
    return age if math.isfinite(age) and 0 <= age < 150 else None


def parse_sex(value: Any) -> str | None:
    text = str(value).strip().lower()
    if text in ("m", "male", "man"):
        return "M"
    if text in ("f", "female", "woman"):
        return "F"
    return None


def id_string(value: Any) -> str:
    """A numeric id read from a CSV ("15709.0") as its integer string ("15709")."""
    text = str(value).strip()
    if re.fullmatch(r"-?\d+\.0*", text):
        return text.split(".")[0]
    return text


def read_csv_rows(path: Path, required: tuple[str, ...] = ()) -> list[dict[str, str]]:
    """All rows of a CSV table; a missing or unreadable table, or one without the ``required``
    columns, is a user error."""
    from ecgbench.errors import CorruptFileError, UserError

    if not path.is_file():
        raise UserError(f"metadata table not found: {path}")
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            rows = list(reader)
            columns = set(reader.fieldnames or ())
    except (UnicodeDecodeError, csv.Error) as exc:
        raise CorruptFileError(f"cannot read {path}: {exc}") from None
    missing = [c for c in required if c not in columns]
    if missing:
        raise UserError(f"{path} lacks the columns {', '.join(missing)}")
    for number, row in enumerate(rows, start=1):
        # DictReader fills the fields of a short row with None: a truncated table, not empty values
        if None in row.values():
            raise CorruptFileError(f"{path}: data row {number} is shorter than the header (truncated?)")
    return rows
