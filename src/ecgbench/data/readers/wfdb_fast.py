"""A fast reader for the common kind of WFDB record: one segment, format 16 signal files.

wfdb-python parses every header field through pandas lookups (about 7 ms per 12-lead header), which
was three quarters of ``ecgbench data prepare``. This module parses the header with plain string
operations and reads format-16 signal files with numpy, giving the same physical values as
``wfdb.rdrecord(path).p_signal`` bit for bit.

It is deliberately narrow: :func:`read_format16` returns None for anything outside the subset it
fully understands (multi-segment records, formats other than 16, several samples per frame, skew, a
header line it cannot parse, a signal file that is missing or shorter than the header says), and the
caller then reads the record with wfdb, so unusual records and broken files behave exactly as before.

Header grammar (https://physionet.org/physiotools/wag/header-5.htm):

* record line: ``name[/segments] n_sig fs[/counter_freq[(base_counter)]] n_samples [base_time [base_date]]``
* signal line: ``file_name format[xsamples_per_frame][:skew][+byte_offset]
  adc_gain[(baseline)][/units] adc_resolution adc_zero initial_value checksum block_size description``
* comment lines start with ``#``.
"""

from __future__ import annotations

import datetime
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# Record line without segments; fs may carry a counter frequency and base counter (not needed here).
_RECORD_LINE = re.compile(
    r"(?P<name>[-\w]+)[ \t]+(?P<n_sig>\d+)[ \t]+(?P<fs>\d+(?:\.\d*)?)"
    r"(?:/-?\d*\.?\d*(?:\(-?\d*\.?\d*\))?)?[ \t]+(?P<sig_len>\d+)(?P<rest>(?:[ \t].*)?)"
)
# Base time and date as wfdb's own record-line pattern captures them (it stops at the first character
# that fits neither, e.g. "23-Mar-2021" gives time "23" and no date; wfdb accepts that, so do we).
BASE_TIME_DATE = re.compile(
    r"[ \t]*(?P<time>\d{,2}:?\d{,2}:?\d{,2}\.?\d{,6})[ \t]*(?P<date>\d{,2}/?\d{,2}/?\d{,4})"
)
# Fields of a signal line up to (not including) the description; format 16 only, one sample per frame,
# no skew. The units characters are the ones wfdb's signal-line pattern allows.
_SIGNAL_FIELDS = re.compile(
    r"(?P<file>[-\w]+\.?\w*)[ \t]+16(?:x1)?(?:\+(?P<offset>\d+))?"
    r"[ \t]+(?P<gain>-?\d+(?:\.\d*)?(?:e[+-]?\d+)?)(?:\((?P<baseline>-?\d+)\))?(?:/(?P<units>[\w^?%/-]+))?"
    r"[ \t]+(?P<adc_res>\d+)[ \t]+(?P<adc_zero>-?\d+)[ \t]+-?\d+[ \t]+-?\d+[ \t]+\d+[ \t]+"
)
# wfdb's description pattern stops at these; a description containing one is left to wfdb.
_DESCRIPTION_STOP = re.compile(r"[\t\n\r\f\v]")
_DIGITAL_NAN = -32768  # format 16's missing-sample value
_DEFAULT_GAIN = 200.0  # WFDB: an ADC gain of 0 (or none) means 200 adu per physical unit
_DEFAULT_UNITS = "mV"


@dataclass
class WfdbRecord:
    """A single-segment WFDB record read in physical units."""

    signal: np.ndarray  # (n_sig, n_samples) float64, C-contiguous
    digital: np.ndarray  # (n_samples, n_sig) int16, as stored (for the header's checksums)
    sig_name: list[str]
    units: list[str]
    fs: float
    comments: list[str]


@dataclass
class _Signal:
    file: str
    byte_offset: int
    gain: float
    baseline: int
    units: str
    name: str


def read_format16(path: str, text: str | None = None) -> WfdbRecord | None:
    """The record at ``path`` (without extension) if it is a format-16 record this reader fully
    understands and its signal files are all there and long enough; None otherwise (read it with
    wfdb then). ``text`` is the header if already read; raises OSError only if it cannot be read."""
    if text is None:
        # wfdb reads headers as ASCII and drops other bytes; do the same so names and units agree
        text = Path(path + ".hea").read_bytes().decode("ascii", errors="ignore")
    lines: list[str] = []
    comments: list[str] = []
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("#"):
            comments.append(line.strip(" \t#"))
        elif line:
            lines.append(line)
    if not lines:
        return None
    parsed = _parse_record_line(lines[0])
    if parsed is None:
        return None
    n_sig, fs, sig_len = parsed
    parsed_signals = [_parse_signal_line(line) for line in lines[1:]]
    signals = [s for s in parsed_signals if s is not None]
    if n_sig == 0 or sig_len == 0 or len(parsed_signals) != n_sig or len(signals) != n_sig:
        return None
    digital = _read_signal_files(Path(path).parent, signals, sig_len)
    if digital is None:
        return None
    return WfdbRecord(
        signal=_to_physical(digital, signals),
        digital=digital,
        sig_name=[s.name for s in signals],
        units=[s.units for s in signals],
        fs=fs,
        comments=comments,
    )


def _parse_record_line(line: str) -> tuple[int, float, int] | None:
    """(n_sig, fs, n_samples) of a single-segment record line, or None."""
    match = _RECORD_LINE.fullmatch(line)
    if match is None:
        return None
    rest = match["rest"]
    if rest.strip():
        when = BASE_TIME_DATE.match(rest)
        if when is None or not valid_base_time_date(when["time"], when["date"]):
            return None
    fs = float(match["fs"])
    if round(fs, 8) == float(int(fs)):  # wfdb rounds a rate this close to an integer to the integer
        fs = float(int(fs))
    return int(match["n_sig"]), fs, int(match["sig_len"])


def valid_base_time_date(time: str, date: str) -> bool:
    """Whether wfdb would parse the base time and date (it rejects the record otherwise)."""
    try:
        if time:
            # the formats wfdb's time parser picks from the number of colons and a decimal point
            fmt = ("%S", "%M:%S", "%H:%M:%S")[time.count(":")] + (".%f" if "." in time else "")
            datetime.datetime.strptime(time, fmt)
        if date:
            datetime.datetime.strptime(date, "%d/%m/%Y")
    except (ValueError, IndexError):
        return False
    return True


def _parse_signal_line(line: str) -> _Signal | None:
    match = _SIGNAL_FIELDS.match(line)
    if match is None:
        return None
    name = line[match.end() :]
    if not name or _DESCRIPTION_STOP.search(name):
        return None
    gain = float(match["gain"])
    baseline = match["baseline"]
    return _Signal(
        file=match["file"],
        byte_offset=int(match["offset"] or 0),
        gain=gain if gain != 0 else _DEFAULT_GAIN,
        # WFDB: a missing baseline is the ADC zero
        baseline=int(baseline) if baseline is not None else int(match["adc_zero"]),
        units=match["units"] or _DEFAULT_UNITS,
        name=name,
    )


def _read_signal_files(folder: Path, signals: list[_Signal], sig_len: int) -> np.ndarray | None:
    """Digital samples (n_samples, n_sig) int16 from the signal files, in header order; None if a file
    is missing or short, or if a file's signals are not listed together with one byte offset."""
    parts: list[np.ndarray] = []
    seen: set[str] = set()
    start = 0
    while start < len(signals):
        file = signals[start].file
        stop = start
        while stop < len(signals) and signals[stop].file == file:
            stop += 1
        if file in seen or any(s.byte_offset != signals[start].byte_offset for s in signals[start:stop]):
            return None
        seen.add(file)
        count = sig_len * (stop - start)
        offset = signals[start].byte_offset
        try:
            # checked before reading: numpy allocates ``count`` samples even if the file is shorter
            if (folder / file).stat().st_size < offset + 2 * count:
                return None
            samples = np.fromfile(folder / file, dtype="<i2", count=count, offset=offset)
        except (OSError, ValueError):
            return None
        if samples.size < count:
            return None
        parts.append(samples.reshape(sig_len, stop - start))  # frames are interleaved: sample-major
        start = stop
    return parts[0] if len(parts) == 1 else np.hstack(parts)


def _to_physical(digital: np.ndarray, signals: list[_Signal]) -> np.ndarray:
    """(digital - baseline) / gain in float64, missing samples as NaN: the same operations, in the same
    order, as wfdb's digital-to-analogue conversion, so the values are identical."""
    physical = digital.T.astype(np.float64, order="C")  # (n_sig, n_samples)
    physical -= np.array([s.baseline for s in signals], dtype=np.float64)[:, None]
    physical /= np.array([s.gain for s in signals], dtype=np.float64)[:, None]
    physical[digital.T == _DIGITAL_NAN] = np.nan
    return physical
