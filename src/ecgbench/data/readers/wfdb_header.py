"""Checks of a WFDB record that wfdb-python does not make, or makes with an error that does not say what is
wrong (``TypeError: '>' not supported between ...``).

Before the samples are read (:func:`check_header`), each field is checked against the header grammar
(https://physionet.org/physiotools/wag/header-5.htm) and the rejection names the field and its value:

* the sampling rate must be a number within :data:`FS_RANGE` (wfdb takes 250 Hz for ``-500`` or ``abc``);
* an ADC gain of 0, or none, marks an uncalibrated signal (wfdb then applies 200 adu/mV and the amplitudes
  are five-fold wrong for a 1000 adu/mV recording), which cannot be stored as mV;
* a MATLAB signal file (the PhysioNet/CinC Challenge ``.mat``) must hold the MATLAB 4 integer matrix the
  header describes: its type, its shape and the byte offset of its data (a ``scipy.io.savemat`` float
  file is not read as int16 noise);
* every signal file must be long enough for the samples the header promises.

After the samples are read (:func:`check_samples`), the header's initial value and 16-bit checksum of each
signal, where the header has them, must match the samples (a signal file copied from another record is
caught here).
"""

from __future__ import annotations

import math
import re
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ecgbench.data.readers.wfdb_fast import BASE_TIME_DATE, valid_base_time_date

# Plausible sampling rates of an ECG, Hz (the slowest Holter channels to the fastest research ECGs).
FS_RANGE = (50.0, 10_000.0)
# Bytes per sample of the WFDB formats with a fixed size (212: 3 bytes per 2 samples, 310/311: 4 per 3).
_BYTES_PER_SAMPLE = {
    8: 1, 16: 2, 24: 3, 32: 4, 61: 2, 80: 1, 160: 2, 212: 1.5, 310: 4 / 3, 311: 4 / 3,
}  # fmt: skip
_FORMATS = {0, 8, 16, 24, 32, 61, 80, 160, 212, 310, 311, 508, 516, 524}
_FORMAT_SPEC = re.compile(r"(?P<fmt>\d+)(?:x(?P<spf>\d+))?(?::(?P<skew>\d+))?(?:\+(?P<offset>\d+))?")
_GAIN_SPEC = re.compile(r"(?P<gain>[^(/]*)(?:\((?P<baseline>[^)]*)\))?(?:/(?P<units>.*))?")
# MATLAB 4 precision digit (the P of the type code MOPT) of the integer type each WFDB format stores.
_MAT_PRECISION = {16: 3, 32: 2, 80: 5}
_MAT_TYPES = {0: "float64", 1: "float32", 2: "int32", 3: "int16", 4: "uint16", 5: "uint8"}


class HeaderProblem(Exception):
    """What is wrong with a record, as a rejection reason and a detail naming the field and value."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass
class SignalLine:
    file: str
    fmt: int
    samples_per_frame: int
    skew: int
    byte_offset: int
    init_value: int | None
    checksum: int | None
    name: str


@dataclass
class Header:
    name: str  # the header file's name, for messages
    n_sig: int
    fs: float
    sig_len: int | None
    multi_segment: bool
    signals: list[SignalLine]


def read_header_text(path: Path) -> str:
    """A header as wfdb reads it: ASCII, other bytes dropped."""
    return path.read_bytes().decode("ascii", errors="ignore")


def check_header(text: str, header: Path) -> Header:
    """The record's header checked field by field; a :class:`HeaderProblem` names the first bad one."""
    name = header.name
    lines = [line.strip() for line in text.splitlines()]
    lines = [line for line in lines if line and not line.startswith("#")]
    if not lines:
        raise HeaderProblem("corrupt_file", f"{name} has no record line")
    fields = lines[0].split()
    segments = fields[0].partition("/")[2]
    multi = bool(segments)
    n_sig = _integer(fields, 1, name, "number of signals")
    if n_sig is None:
        raise HeaderProblem(
            "corrupt_file", f"{name}: the record line {lines[0]!r} gives no number of signals"
        )
    if len(fields) < 3:
        raise HeaderProblem("bad_fs", f"{name} gives no sampling rate (WFDB would assume 250 Hz)")
    fs_text = fields[2].split("/")[0]
    try:
        fs = float(fs_text)
    except ValueError:
        raise HeaderProblem("bad_fs", f"{name}: sampling rate {fs_text!r} is not a number") from None
    check_rate(fs, name)
    sig_len = _integer(fields, 3, name, "number of samples")
    if len(fields) > 4:
        _check_base_time(fields[4:], name)
    if multi:
        return Header(
            name, n_sig, fs, sig_len, True, []
        )  # segments are records of their own; wfdb reads them
    signal_lines = lines[1 : 1 + n_sig] if n_sig else []
    if len(signal_lines) < n_sig:
        raise HeaderProblem(
            "corrupt_file", f"{name} lists {n_sig} signals but has {len(signal_lines)} signal lines"
        )
    signals = [_signal_line(line, k, name) for k, line in enumerate(signal_lines)]
    parsed = Header(name, n_sig, fs, sig_len, False, signals)
    _check_signal_files(parsed, header.parent)
    return parsed


def check_rate(fs: float, where: str) -> None:
    """A sampling rate must be a finite number within :data:`FS_RANGE`."""
    if not math.isfinite(fs) or fs <= 0:
        raise HeaderProblem("bad_fs", f"{where}: sampling rate {fs:g} Hz is not a positive number")
    low, high = FS_RANGE
    if not low <= fs <= high:
        raise HeaderProblem(
            "bad_fs",
            f"{where}: sampling rate {fs:g} Hz is outside the plausible {low:g}-{high:g} Hz of an ECG",
        )


def _integer(fields: list[str], position: int, name: str, what: str) -> int | None:
    if len(fields) <= position:
        return None
    try:
        value = int(fields[position])
    except ValueError:
        raise HeaderProblem(
            "corrupt_file", f"{name}: {what} {fields[position]!r} is not an integer"
        ) from None
    if value < 0:
        raise HeaderProblem("corrupt_file", f"{name}: {what} {value} is negative")
    return value


def _check_base_time(fields: list[str], name: str) -> None:
    """Base time and date, accepted exactly when wfdb accepts them."""
    rest = " " + " ".join(fields)
    when = BASE_TIME_DATE.match(rest)
    if when is None or not valid_base_time_date(when["time"], when["date"]):
        raise HeaderProblem(
            "corrupt_file", f"{name}: base time/date {' '.join(fields[:2])!r} is not a valid time and date"
        )


def _signal_line(line: str, k: int, name: str) -> SignalLine:
    fields = line.split()
    where = f"{name} signal {k + 1}"
    if len(fields) < 2:
        raise HeaderProblem("corrupt_file", f"{where}: {line!r} has no format")
    spec = _FORMAT_SPEC.fullmatch(fields[1])
    if spec is None or int(spec["fmt"]) not in _FORMATS:
        raise HeaderProblem("corrupt_file", f"{where}: {fields[1]!r} is not a WFDB storage format")
    lead = " ".join(fields[8:]) or f"signal {k + 1}"
    gain_spec = _GAIN_SPEC.fullmatch(fields[2]) if len(fields) > 2 else None
    if gain_spec is None:
        raise HeaderProblem(
            "uncalibrated", f"{where} ({lead}) has no ADC gain: its amplitudes in physical units are unknown"
        )
    try:
        gain = float(gain_spec["gain"])
    except ValueError:
        raise HeaderProblem(
            "corrupt_file", f"{where} ({lead}): ADC gain {gain_spec['gain']!r} is not a number"
        ) from None
    if gain == 0 or not math.isfinite(gain):
        raise HeaderProblem(
            "uncalibrated",
            f"{where} ({lead}) has ADC gain {gain_spec['gain']}: WFDB marks such a signal uncalibrated "
            "(it would apply 200 adu per unit), so its amplitudes in mV are unknown",
        )
    if gain_spec["baseline"] is not None:
        try:
            int(gain_spec["baseline"])
        except ValueError:
            raise HeaderProblem(
                "corrupt_file", f"{where} ({lead}): baseline {gain_spec['baseline']!r} is not an integer"
            ) from None
    numbers: list[int | None] = []
    for position, what in ((3, "ADC resolution"), (4, "ADC zero"), (5, "initial value"), (6, "checksum"),
                           (7, "block size")):  # fmt: skip
        if len(fields) <= position:
            numbers.append(None)
            continue
        try:
            numbers.append(int(fields[position]))
        except ValueError:
            raise HeaderProblem(
                "corrupt_file", f"{where} ({lead}): {what} {fields[position]!r} is not an integer"
            ) from None
    return SignalLine(
        file=fields[0],
        fmt=int(spec["fmt"]),
        samples_per_frame=int(spec["spf"] or 1),
        skew=int(spec["skew"] or 0),
        byte_offset=int(spec["offset"] or 0),
        init_value=numbers[2],
        checksum=numbers[3],
        name=lead,
    )


def _file_groups(header: Header) -> dict[str, list[SignalLine]]:
    groups: dict[str, list[SignalLine]] = {}
    for signal in header.signals:
        groups.setdefault(signal.file, []).append(signal)
    return groups


def _check_signal_files(header: Header, folder: Path) -> None:
    """Each signal file (those that exist: a missing one is reported by the reader) holds what the header
    says: a MATLAB file its integer matrix, every file at least the bytes of its samples."""
    for file, signals in _file_groups(header).items():
        path = folder / file
        if not path.is_file() or header.sig_len is None:
            continue
        first = signals[0]
        mat = file.lower().endswith(".mat")
        if mat:
            _check_mat_type(path, header, signals)
        per_sample = _BYTES_PER_SAMPLE.get(first.fmt)
        if per_sample is not None and all(s.fmt == first.fmt for s in signals):
            frame = sum(s.samples_per_frame for s in signals)
            needed = first.byte_offset + math.ceil(header.sig_len * frame * per_sample)
            size = path.stat().st_size
            if size < needed:
                raise HeaderProblem(
                    "corrupt_file",
                    f"{file} holds {size:,} bytes but {header.name} needs {needed:,} "
                    f"({header.sig_len} samples of {len(signals)} signals in format {first.fmt}): truncated?",
                )
        if mat:
            _check_mat_shape(path, header, signals)


def _mat_header(path: Path) -> bytes:
    with path.open("rb") as handle:
        return handle.read(128)


def _check_mat_type(path: Path, header: Header, signals: list[SignalLine]) -> None:
    """A Challenge ``.mat`` must be the MATLAB 4 integer matrix its WFDB header describes."""
    head = _mat_header(path)
    fmt = signals[0].fmt
    described = (
        f"the MATLAB 4 matrix {header.name} describes (format {fmt}, data at byte {signals[0].byte_offset})"
    )
    if head.startswith(b"MATLAB 5.0") or head[:4] == b"\x89HDF":
        raise HeaderProblem(
            "format_mismatch",
            f"{path.name} is a MATLAB 5/7 file (as scipy.io.savemat writes), not {described}; its values "
            "would be read as noise",
        )
    if len(head) < 20:
        raise HeaderProblem("format_mismatch", f"{path.name} is too short for {described}")
    type_code, _, _, imaginary, _ = struct.unpack("<5i", head[:20])
    machine, precision, kind = type_code // 1000, (type_code // 10) % 10, type_code % 10
    if not 0 <= type_code < 5000 or machine != 0 or type_code // 100 % 10 != 0 or kind != 0 or imaginary != 0:
        raise HeaderProblem("format_mismatch", f"{path.name} does not start with {described}")
    expected = _MAT_PRECISION.get(fmt)
    if expected is not None and precision != expected:
        stored = _MAT_TYPES.get(precision, f"type {precision}")
        raise HeaderProblem(
            "format_mismatch",
            f"{path.name} stores {stored} values but {header.name} says format {fmt} "
            f"({_MAT_TYPES[expected]}); they would be read as noise",
        )


def _check_mat_shape(path: Path, header: Header, signals: list[SignalLine]) -> None:
    _, rows, cols, _, name_len = struct.unpack("<5i", _mat_header(path)[:20])
    frame = sum(s.samples_per_frame for s in signals)
    if (rows, cols) != (frame, header.sig_len):
        raise HeaderProblem(
            "corrupt_file",
            f"{path.name} holds a {rows} x {cols} matrix but {header.name} describes {frame} signals x "
            f"{header.sig_len} samples (a signal file of another record?)",
        )
    if 20 + name_len != signals[0].byte_offset:
        raise HeaderProblem(
            "corrupt_file",
            f"{path.name}'s data start at byte {20 + name_len}, {header.name} says {signals[0].byte_offset}",
        )


def check_samples(digital: np.ndarray, header: Header) -> None:
    """Initial values and 16-bit checksums of the header (where it has them) against the digital samples
    (n_samples, n_sig) in header order; skipped for multi-segment records and for signals with several
    samples per frame or skew (wfdb returns those resampled or shifted)."""
    if header.multi_segment or any(s.samples_per_frame != 1 or s.skew for s in header.signals):
        return
    if digital.shape[1] != len(header.signals) or digital.shape[0] == 0:
        return
    sums = digital.sum(axis=0, dtype=np.int64)
    for k, signal in enumerate(header.signals):
        if signal.fmt == 0:  # not stored: nothing was read
            continue
        if signal.init_value is not None and int(digital[0, k]) != signal.init_value:
            raise HeaderProblem(
                "checksum_mismatch",
                f"{signal.file}: signal {k + 1} ({signal.name}) starts at {int(digital[0, k])}, "
                f"{header.name} says {signal.init_value} (a signal file of another record?)",
            )
        if signal.checksum is not None:
            # A 16-bit sum: writers give it signed (-778) or unsigned (64758); both are the same mod 2**16.
            found = int(sums[k]) % 65536
            if found != signal.checksum % 65536:
                found = found - 65536 if found > 32767 else found
                raise HeaderProblem(
                    "checksum_mismatch",
                    f"{signal.file}: signal {k + 1} ({signal.name}) has checksum {found}, {header.name} says "
                    f"{signal.checksum} (damaged, or a signal file of another record?)",
                )
