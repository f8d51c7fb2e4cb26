"""ECGs for the demo: uploaded files and prepared-store records, made into exactly what a model reads.

An upload is read with the readers of ``data prepare`` (WFDB through
:func:`~ecgbench.data.readers.base.read_wfdb`, CPSC 2018 ``.mat`` through
:class:`~ecgbench.data.readers.cpsc.CpscReader`) or, for ``.npy`` and CSV, with the sampling rate and
units the user gives, and then goes through :func:`ecgbench.data.signal.process_record` with the signal
settings of the store the model was trained on (its manifest records them): leads to the canonical order
in mV, NaN gaps, anti-aliased resampling, filtering and segmentation, so the model sees what it was
trained on. Everything that can be wrong with a file is a :class:`~ecgbench.errors.UserError` whose
message the page shows as it is.
"""

from __future__ import annotations

import csv
import hashlib
import io
import re
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from ecgbench.data.readers.base import (
    CANONICAL_LEADS,
    RawRecord,
    RecordRef,
    RecordRejected,
    check_sampling_rate,
    read_wfdb,
)
from ecgbench.demo import DEFAULT_MAX_UPLOAD_MB
from ecgbench.errors import CorruptFileError, UserError
from ecgbench.files import read_npy, sha256_file
from ecgbench.settings import DataSettings

#: what the upload box accepts, as the page says it
UPLOAD_KINDS = "WFDB (.hea with its .dat or .mat), a CPSC 2018 .mat, .npy (leads x samples) or .csv"
UPLOAD_SUFFIXES = (".hea", ".dat", ".mat", ".npy", ".csv")
#: units an .npy or CSV upload may be in (scaled to mV as the readers scale header units)
UNITS = ("mV", "uV", "V")
#: CSV columns that hold time, not a lead (dropped)
_TIME_COLUMNS = {"time", "t", "time_s", "time_ms", "seconds", "ms", "sample", "samples", "index", ""}

# Lead-ins for the readers' rejection reasons, so the page says what is wrong in words.
_REASONS = {
    "too_short": "the recording is too short",
    "nan_gap": "too many missing (NaN) samples",
    "missing_leads": "not a complete 12-lead ECG",
    "unknown_lead": "a lead is not one of the 12 standard leads",
    "duplicate_lead": "a lead appears twice",
    "corrupt_file": "the file cannot be read",
    "missing_file": "a file of the record is missing",
    "bad_fs": "the sampling rate is not plausible",
    "unknown_units": "the units cannot be converted to mV",
    "uncalibrated": "the record is not calibrated",
    "format_mismatch": "the signal file does not match its header",
    "checksum_mismatch": "the signal file does not match its header's checksums",
}


def rejection_message(exc: RecordRejected) -> str:
    lead_in = _REASONS.get(exc.reason, exc.reason.replace("_", " "))
    return f"{lead_in}: {exc.detail}" if exc.detail else lead_in


def ecg_sha256(signal: np.ndarray) -> str:
    """The hash of an ECG as a model reads it: its float32 samples."""
    return hashlib.sha256(np.ascontiguousarray(signal, dtype=np.float32).tobytes()).hexdigest()


@dataclass(frozen=True)
class ECG:
    """One ECG as given to a model: (12, samples) float32 in mV at ``fs`` Hz, and where it came from."""

    signal: np.ndarray
    fs: float
    source: dict[str, Any]

    @cached_property
    def sha256(self) -> str:
        return ecg_sha256(self.signal)


# ------------------------------------------------------------------------------------------ signal specs


@dataclass(frozen=True)
class SignalSpec:
    """How the ECGs of one model are made: the ``[data]`` settings of the store it was trained on."""

    data: DataSettings
    origin: str  # the store whose manifest gave the settings, or why defaults are used
    mains_hz: float | None = None  # default power-line frequency of uploads (the store corpus's)
    store: Path | None = None

    @property
    def fs(self) -> float:
        return float(self.data.target_fs)

    @property
    def length(self) -> int:
        return int(self.data.seg_len)


def store_spec(store: Path) -> SignalSpec:
    """The signal settings a segment store was prepared with, from its manifest."""
    from pydantic import ValidationError

    from ecgbench.data.readers import READERS
    from ecgbench.data.store import SegmentStore

    opened = SegmentStore.open(store)
    try:
        data = DataSettings(**opened.manifest["parameters"])
    except (KeyError, TypeError, ValidationError) as exc:
        raise CorruptFileError(f"{store}: its manifest's signal parameters are unusable ({exc})") from None
    reader = READERS.get(opened.corpus)
    return SignalSpec(data, f"store {store}", getattr(reader, "mains_hz", None), Path(store))


def model_spec(fs: float, length: int, stores: Sequence[Path]) -> SignalSpec:
    """The settings of the first store that holds ECGs of the model's rate and length; ecgbench's defaults at
    that rate and length when no such store is known (a checkpoint folder given without its run)."""
    for store in stores:
        spec = store_spec(Path(store))
        if spec.fs == float(fs) and spec.length == int(length):
            return spec
    from pydantic import ValidationError

    high = DataSettings.model_fields["bandpass_high"].default
    if high >= 0.45 * fs:  # the default top of the band lies beyond what this rate can hold
        high = 0.4 * fs
    try:
        data = DataSettings(target_fs=round(fs), seg_len=int(length), bandpass_high=high)
    except ValidationError as exc:
        raise UserError(f"the ELM reads ECGs at {fs:g} Hz, a rate ecgbench cannot prepare: {exc}") from None
    return SignalSpec(
        data,
        f"ecgbench's default [data] settings, band-pass {data.bandpass_low:g}-{data.bandpass_high:g} Hz "
        "(no store of the model's rate and length)",
    )


# ---------------------------------------------------------------------------------------------- uploads


@dataclass
class Upload:
    """A record read from uploaded files, before the signal processing of any one model."""

    raw: RawRecord
    source: dict[str, Any]


def _clean(message: str, folder: Path) -> str:
    """A reader's message without the temporary folder the upload was copied into."""
    return message.replace(f"{folder}/", "").replace(str(folder), "")


def read_upload(
    paths: Sequence[str | Path],
    *,
    fs: float | None = None,
    units: str = "mV",
    max_bytes: int = DEFAULT_MAX_UPLOAD_MB * 1_000_000,
) -> Upload:
    """Read one record from uploaded files (their original names must be kept: a WFDB header names its
    signal files). ``fs`` and ``units`` apply to ``.npy`` and CSV uploads, which carry neither."""
    files = [Path(p) for p in paths if p]
    if not files:
        raise UserError(f"no file uploaded: give {UPLOAD_KINDS}")
    missing = [f.name for f in files if not f.is_file()]
    if missing:
        raise UserError(f"{missing[0]} is not a file (it may have been removed: upload it again)")
    total = sum(f.stat().st_size for f in files)
    if total > max_bytes:
        raise UserError(
            f"the upload is {total / 1e6:.3g} MB; the demo reads at most {max_bytes / 1e6:.3g} MB "
            "(one ECG record; --max-upload-mb raises the limit)"
        )
    names = [f.name for f in files]
    if len(set(names)) != len(names):
        raise UserError("two uploaded files have the same name; upload one record at a time")
    wrong = [n for n in names if Path(n).suffix.lower() not in UPLOAD_SUFFIXES]
    if wrong:
        raise UserError(f"{wrong[0]} is not a file the demo reads; upload {UPLOAD_KINDS}")
    folder = Path(tempfile.mkdtemp(prefix="ecgbench-upload-"))
    try:
        for f in files:
            shutil.copyfile(f, folder / f.name)
        copies = [folder / n for n in names]
        raw, kind = _read_record(copies, fs=fs, units=units)
        check_sampling_rate(raw.fs, raw.ref.source_path)
    except RecordRejected as exc:
        raise UserError(_clean(rejection_message(exc), folder)) from None
    except UserError as exc:
        raise type(exc)(_clean(str(exc), folder)) from None
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    source = {
        "kind": "upload",
        "format": kind,
        "files": {f.name: sha256_file(f) for f in files},
        "source_fs": raw.fs,
    }
    if kind in ("npy", "csv"):
        source["units"] = units
    return Upload(raw, source)


def _read_record(files: list[Path], *, fs: float | None, units: str) -> tuple[RawRecord, str]:
    by_suffix: dict[str, list[Path]] = {}
    for f in files:
        by_suffix.setdefault(f.suffix.lower(), []).append(f)
    headers = by_suffix.get(".hea", [])
    if len(headers) > 1:
        raise UserError("several WFDB headers uploaded; upload one record (one .hea with its signal files)")
    if headers:
        return _read_wfdb_upload(headers[0], files), "wfdb"
    if len(files) > 1:
        raise UserError(
            f"{len(files)} files uploaded without a WFDB header; upload one record: {UPLOAD_KINDS}"
        )
    only = files[0]
    suffix = only.suffix.lower()
    if suffix == ".dat":
        raise UserError(f"{only.name} is a WFDB signal file: upload it together with its .hea header")
    if suffix == ".mat":
        return _read_cpsc_mat(only), "cpsc-mat"
    if suffix == ".npy":
        return _read_npy(only, fs=fs, units=units), "npy"
    return _read_csv(only, fs=fs, units=units), "csv"


def _ref(path: Path, reader: str, **extra: Any) -> RecordRef:
    return RecordRef(
        reader=reader,
        corpus="upload",
        record_id=path.stem,
        path=str(path),
        source_path=path.name,
        extra=extra,
    )


def _read_wfdb_upload(header: Path, files: list[Path]) -> RawRecord:
    from ecgbench.data.readers.wfdb_header import HeaderProblem, check_header, read_header_text

    try:
        parsed = check_header(read_header_text(header), header)
    except HeaderProblem as exc:
        raise RecordRejected(exc.reason, exc.detail) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise RecordRejected("corrupt_file", f"{header.name} cannot be read ({exc})") from None
    needed = sorted({s.file for s in getattr(parsed, "signals", [])})
    present = {f.name for f in files}
    absent = [name for name in needed if name not in present]
    if absent:
        raise UserError(
            f"{header.name} keeps its samples in {', '.join(absent)}: upload it together with the header"
        )
    record = header.with_suffix("")
    signal, names, units, rate, _ = read_wfdb(str(record))
    return RawRecord(ref=_ref(record, "wfdb"), signal=signal, lead_names=names, units=units, fs=rate)


def _read_cpsc_mat(path: Path) -> RawRecord:
    from ecgbench.data.readers.cpsc import CpscReader

    try:
        return CpscReader.load(_ref(path, CpscReader.name, form="original"))
    except RecordRejected as exc:
        if exc.reason != "corrupt_file":
            raise
        raise UserError(
            f"{path.name} is not a CPSC 2018 .mat file (a MATLAB struct ECG with 12 x N data; a Challenge "
            f"or WFDB .mat needs its .hea uploaded with it): {exc.detail}"
        ) from None


def _given_rate(fs: float | None, name: str) -> float:
    if fs is None or not np.isfinite(fs) or fs <= 0:
        raise UserError(f"{name} carries no sampling rate: give it (Hz) in the sampling-rate box")
    return float(fs)


def _raw_from_array(path: Path, signal: np.ndarray, names: list[str], fs: float, units: str) -> RawRecord:
    if units not in UNITS:
        raise UserError(f"units must be one of {', '.join(UNITS)}, not {units!r}")
    return RawRecord(
        ref=_ref(path, "upload"), signal=signal, lead_names=names, units=[units] * len(names), fs=fs
    )


def _read_npy(path: Path, *, fs: float | None, units: str) -> RawRecord:
    array = read_npy(path, "uploaded .npy file")
    if not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)):
        raise UserError(f"{path.name} holds {array.dtype} values; an ECG needs real numbers")
    if array.ndim != 2:
        raise UserError(
            f"{path.name} holds an array of shape {array.shape}; expected leads x samples (12, N)"
        )
    if array.shape[0] != len(CANONICAL_LEADS):
        hint = " (samples x leads: save array.T instead)" if array.shape[1] == len(CANONICAL_LEADS) else ""
        raise UserError(
            f"{path.name} holds an array of shape {array.shape}; expected leads x samples (12, N) in the "
            f"order {' '.join(CANONICAL_LEADS)}{hint}"
        )
    rate = _given_rate(fs, path.name)
    return _raw_from_array(path, np.asarray(array, dtype=np.float64), list(CANONICAL_LEADS), rate, units)


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def _read_csv(path: Path, *, fs: float | None, units: str) -> RawRecord:
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise CorruptFileError(f"{path.name} is not a text CSV file") from None
    lines = [line for line in text.splitlines() if line.strip()]
    if not lines:
        raise UserError(f"{path.name} is empty")
    delimiter = max(",;\t", key=lines[0].count)
    try:
        rows = list(csv.reader(io.StringIO("\n".join(lines)), delimiter=delimiter))
    except csv.Error as exc:
        raise CorruptFileError(f"{path.name} is not a readable CSV file ({exc})") from None
    first = [cell.strip() for cell in rows[0]]
    has_header = any(_number(cell) is None for cell in first if cell)
    if has_header:
        names, rows = first, rows[1:]
    elif len(first) == len(CANONICAL_LEADS):
        names = list(CANONICAL_LEADS)
    else:
        raise UserError(
            f"{path.name} has {len(first)} columns and no header row; give a header of lead names "
            f"or 12 columns in the order {' '.join(CANONICAL_LEADS)}"
        )
    keep = [k for k, name in enumerate(names) if name.lower() not in _TIME_COLUMNS]
    if not rows:
        raise UserError(f"{path.name} has a header but no samples")
    values = np.empty((len(rows), len(keep)), dtype=np.float64)
    for r, row in enumerate(rows):
        if len(row) != len(names):
            raise UserError(
                f"{path.name}: row {r + 1 + has_header} has {len(row)} fields, the first row {len(names)}"
            )
        for c, k in enumerate(keep):
            cell = row[k].strip()
            number = _number(cell) if cell else float("nan")  # an empty cell is a missing sample
            if number is None:
                raise UserError(
                    f"{path.name}: row {r + 1 + has_header}, column {names[k]!r}: {cell!r} is not a number"
                )
            values[r, c] = number
    rate = _given_rate(fs, path.name)
    return _raw_from_array(path, values.T.copy(), [names[k] for k in keep], rate, units)


def process_upload(upload: Upload, spec: SignalSpec, mains_hz: float | None) -> np.ndarray:
    """The record's segments as ``data prepare`` makes them with ``spec``: (n, 12, length) float32 mV.
    ``mains_hz``: the power-line frequency of the recording (where the store's notch is ``auto``)."""
    from ecgbench.data.signal import process_record

    try:
        return process_record(upload.raw, spec.data, mains_hz).segments
    except RecordRejected as exc:
        raise UserError(rejection_message(exc)) from None


# ------------------------------------------------------------------------------------------ store records

_LABEL = re.compile(r"^(?:\[(?P<store>\d+)\] )?(?P<corpus>[^/]+)/(?P<record>.+) #(?P<segment>\d+)$")


@dataclass
class StoreCatalog:
    """The segments of the prepared stores a user may pick, by label ``corpus/record_id #segment``
    (``[k] `` before it when there are several stores)."""

    stores: list[Path]
    _opened: dict[int, Any] = field(default_factory=dict)

    def store(self, k: int) -> Any:
        from ecgbench.data.store import SegmentStore

        if k not in self._opened:
            self._opened[k] = SegmentStore.open(self.stores[k])
        return self._opened[k]

    def _label(self, k: int, corpus: str, record_id: str, segment: int) -> str:
        prefix = f"[{k}] " if len(self.stores) > 1 else ""
        return f"{prefix}{corpus}/{record_id} #{segment}"

    def choices(self, limit: int = 2000) -> list[str]:
        """Labels of the first ``limit`` segments (any other one can be typed)."""
        out: list[str] = []
        for k in range(len(self.stores)):
            index = self.store(k).index.slice(0, limit - len(out))
            columns = [index.column(c).to_pylist() for c in ("corpus", "record_id", "segment_index")]
            out += [self._label(k, *row) for row in zip(*columns, strict=True)]
            if len(out) >= limit:
                break
        return out

    def read(self, label: str) -> ECG:
        import pyarrow.compute as pc

        match = _LABEL.match((label or "").strip())
        if not match or (len(self.stores) > 1) != (match["store"] is not None):
            raise UserError(f"pick a record from the list (corpus/record_id #segment), not {label!r}")
        k = int(match["store"] or 0)
        if k >= len(self.stores):
            raise UserError(f"there is no store [{k}]")
        store = self.store(k)
        index = store.index
        mask = pc.and_(
            pc.and_(
                pc.equal(index.column("corpus"), match["corpus"]),
                pc.equal(index.column("record_id"), match["record"]),
            ),
            pc.equal(index.column("segment_index"), int(match["segment"])),
        )
        rows = pc.indices_nonzero(mask)
        if len(rows) == 0:
            raise UserError(f"{label} is not a segment of {self.stores[k]}")
        segment_id = int(rows[0].as_py())  # the row of the index is the segment's position in the store
        source = {
            "kind": "store",
            "store": str(Path(self.stores[k]).resolve()),
            "corpus": match["corpus"],
            "record_id": match["record"],
            "segment_index": int(match["segment"]),
            "segment_id": segment_id,
        }
        return ECG(store.read(segment_id), float(store.fs), source)
