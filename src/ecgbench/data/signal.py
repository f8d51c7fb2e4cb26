"""Signal processing for preparation: canonical leads in mV, NaN/Inf policy, saturation and flat-lead
checks, anti-aliased resampling, zero-phase filtering (SOS form) and segmentation.

Order of operations for one record (``process_record``): leads to I..V6 in mV -> NaN/Inf gaps filled
or the record rejected -> saturation found on the raw samples -> polyphase resampling to the target rate
-> baseline / band-pass / notch at the target rate -> segments -> flat leads per segment."""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

import numpy as np
from scipy import ndimage, signal

from ecgbench.data.readers.base import (
    CANONICAL_LEADS,
    RawRecord,
    RecordRejected,
    to_canonical_leads,
    to_millivolts,
)
from ecgbench.settings import DataSettings

# The [data] settings that decide the samples of a store: recorded in its manifest, and compared when
# a run resumes (the other data settings, such as workers, change how a store is written, not what is in it).
SIGNAL_FIELDS = (
    "target_fs",
    "seg_len",
    "stride",
    "remainder",  # "pad": zeros; ``n_samples`` keeps the real length
    "bandpass_low",
    "bandpass_high",
    "filter_order",
    "notch",
    "notch_q",
    "baseline",
    "nan_max_gap",
    "missing_leads",
    "flat_threshold",
    "saturation_ms",
)


def signal_parameters(data: DataSettings) -> dict[str, Any]:
    return {name: getattr(data, name) for name in SIGNAL_FIELDS}


def segment_step(data: DataSettings) -> int:
    """Samples between segment starts."""
    return data.stride or data.seg_len


@dataclass
class ProcessedRecord:
    """The segments of one record and what is known about each."""

    segments: np.ndarray  # (n, 12, seg_len) float32, mV
    n_samples: list[int]  # real (unpadded) samples per segment
    flat_leads: list[list[str]]
    saturated: list[bool]
    nan_filled: int  # samples interpolated in the whole record
    source_fs: float
    source_sha256: str
    not_measured_leads: list[str] = field(default_factory=list)


# ------------------------------------------------------------------------------------------ NaN / Inf


def fill_gaps(x: np.ndarray, fs: float, max_gap_s: float) -> tuple[np.ndarray, int]:
    """Linearly interpolate NaN/Inf runs up to ``max_gap_s`` per lead (runs at the edges take the nearest
    value). Returns the signal and the number of samples filled; a longer run, or a lead with no finite
    sample, rejects the record (reason ``nan_gap``)."""
    bad = ~np.isfinite(x)
    if not bad.any():
        return x, 0
    max_gap = round(max_gap_s * fs)
    out = x.copy()
    for lead in np.flatnonzero(bad.any(axis=1)):
        mask = bad[lead]
        if mask.all():
            raise RecordRejected("nan_gap", f"lead {CANONICAL_LEADS[lead]} has no finite sample")
        longest = _longest_run(mask)
        if longest > max_gap:
            raise RecordRejected(
                "nan_gap",
                f"lead {CANONICAL_LEADS[lead]} has {longest} missing samples in a row ({longest / fs:.3f} s, "
                f"limit {max_gap_s} s)",
            )
        idx = np.arange(mask.size)
        out[lead, mask] = np.interp(idx[mask], idx[~mask], out[lead, ~mask])
    return out, int(bad.sum())


def _longest_run(mask: np.ndarray) -> int:
    """Length of the longest run of True in a 1-D boolean array."""
    if not mask.any():
        return 0
    padded = np.concatenate(([False], mask, [False])).astype(np.int8)
    edges = np.flatnonzero(np.diff(padded))
    return int((edges[1::2] - edges[::2]).max())


# ---------------------------------------------------------------------------------------- saturation


def saturation_intervals(x: np.ndarray, fs: float, min_ms: float) -> list[tuple[float, float]]:
    """Time intervals (s) where some lead sits at its own extreme value for at least ``min_ms``: the
    plateau an amplifier or ADC produces when it clips. Constant (flat) leads are left to the flat check."""
    min_len = max(2, round(min_ms * fs / 1000))
    intervals: list[tuple[float, float]] = []
    for lead in x:
        lo, hi = lead.min(), lead.max()
        if hi - lo <= 0:
            continue
        for extreme in (hi, lo):
            at = lead == extreme
            if at.sum() < min_len:
                continue
            padded = np.concatenate(([False], at, [False])).astype(np.int8)
            edges = np.flatnonzero(np.diff(padded))
            for start, stop in zip(edges[::2], edges[1::2], strict=True):
                if stop - start >= min_len:
                    intervals.append((start / fs, stop / fs))
    return intervals


# ---------------------------------------------------------------------------------------- resampling


def resample(x: np.ndarray, fs_from: float, fs_to: float) -> np.ndarray:
    """Anti-aliased polyphase resampling (scipy ``resample_poly``, Kaiser-windowed FIR) along time."""
    if fs_from == fs_to:
        return x
    ratio = Fraction(fs_to / fs_from).limit_denominator(1000)
    if ratio <= 0:
        raise RecordRejected("bad_fs", f"cannot resample from {fs_from} Hz to {fs_to} Hz")
    return signal.resample_poly(x, ratio.numerator, ratio.denominator, axis=1, padtype="line")


# ----------------------------------------------------------------------------------------- filtering


@functools.lru_cache(maxsize=64)
def filter_bank(
    fs: float, low: float, high: float, order: int, notch_hz: float | None, notch_q: float
) -> tuple[np.ndarray, ...]:
    """SOS sections of the band-pass (Butterworth; either edge off at 0) and the power-line notch."""
    nyquist = fs / 2
    sections: list[np.ndarray] = []
    if low > 0 and high > 0:
        sections.append(signal.butter(order, [low, high], btype="bandpass", fs=fs, output="sos"))
    elif low > 0:
        sections.append(signal.butter(order, low, btype="highpass", fs=fs, output="sos"))
    elif high > 0:
        sections.append(signal.butter(order, high, btype="lowpass", fs=fs, output="sos"))
    if notch_hz and notch_hz < nyquist:
        b, a = signal.iirnotch(notch_hz, notch_q, fs=fs)
        sections.append(signal.tf2sos(b, a))
    return tuple(sections)


def apply_filters(x: np.ndarray, sections: tuple[np.ndarray, ...]) -> np.ndarray:
    """Forward-backward (zero-phase) filtering with each SOS filter in turn."""
    for sos in sections:
        try:
            x = signal.sosfiltfilt(sos, x, axis=1)
        except ValueError as exc:  # record shorter than the filter's padding
            raise RecordRejected("too_short", f"too short to filter: {exc}") from None
    return x


def remove_baseline(x: np.ndarray, fs: float) -> np.ndarray:
    """Subtract a baseline estimated by 200 ms then 600 ms median filters (removes P/QRS, then T waves),
    a classic non-linear baseline estimate that keeps ST levels; zero-phase by construction."""
    first = max(1, round(0.2 * fs) | 1)
    second = max(1, round(0.6 * fs) | 1)
    base = ndimage.median_filter(x, size=(1, first), mode="nearest")
    base = ndimage.median_filter(base, size=(1, second), mode="nearest")
    return x - base


def resolve_notch(notch: str | float, mains_hz: float | None) -> float | None:
    if notch == "off":
        return None
    if notch == "auto":
        return mains_hz
    return float(notch)


# -------------------------------------------------------------------------------------- segmentation


def segment_bounds(n: int, seg_len: int, step: int, remainder: str) -> list[tuple[int, int]]:
    """(start, stop) sample ranges of the segments of an ``n``-sample signal; stop - start < seg_len
    only for a padded last segment."""
    bounds = [(s, s + seg_len) for s in range(0, n - seg_len + 1, step)]
    if remainder == "pad":
        covered = bounds[-1][1] if bounds else 0
        next_start = bounds[-1][0] + step if bounds else 0
        if covered < n and next_start < n:
            bounds.append((next_start, n))
    return bounds


def flat_leads(segment: np.ndarray, threshold_mv: float, n_real: int) -> list[str]:
    """Leads whose peak-to-peak amplitude over the real samples is below ``threshold_mv``."""
    ptp = np.ptp(segment[:, :n_real], axis=1)
    return [CANONICAL_LEADS[i] for i in np.flatnonzero(ptp < threshold_mv)]


# ------------------------------------------------------------------------------------------ pipeline


def process_record(raw: RawRecord, params: DataSettings, mains_hz: float | None) -> ProcessedRecord:
    """Raw record -> segments in the canonical lead order, mV, at ``params.target_fs``."""
    digest = hashlib.sha256(np.ascontiguousarray(raw.signal, dtype=np.float64).tobytes()).hexdigest()
    x = to_millivolts(raw.signal, raw.units)
    x, not_measured = to_canonical_leads(x, raw.lead_names, params.missing_leads)
    x, nan_filled = fill_gaps(x, raw.fs, params.nan_max_gap)
    saturated_at = saturation_intervals(x, raw.fs, params.saturation_ms)
    x = resample(x, raw.fs, params.target_fs)
    fs = float(params.target_fs)
    if params.baseline == "median":
        x = remove_baseline(x, fs)
    notch_hz = resolve_notch(params.notch, mains_hz)
    if notch_hz is not None and notch_hz >= raw.fs / 2:
        notch_hz = None  # mains frequency above the source's Nyquist rate cannot be in the record
    sections = filter_bank(
        fs, params.bandpass_low, params.bandpass_high, params.filter_order, notch_hz, params.notch_q
    )
    x = apply_filters(x, sections)
    bounds = segment_bounds(x.shape[1], params.seg_len, segment_step(params), params.remainder)
    if not bounds:
        raise RecordRejected(
            "too_short", f"{x.shape[1] / fs:.2f} s is shorter than one segment ({params.seg_len / fs:.2f} s)"
        )
    segments = np.zeros((len(bounds), len(CANONICAL_LEADS), params.seg_len), dtype=np.float32)
    n_samples, flats, saturated = [], [], []
    for k, (start, stop) in enumerate(bounds):
        real = min(stop, x.shape[1]) - start
        segments[k, :, :real] = x[:, start : start + real]
        n_samples.append(real)
        flats.append(flat_leads(segments[k], params.flat_threshold, real))  # zero-filled leads are flat too
        t0, t1 = start / fs, (start + real) / fs
        saturated.append(any(a < t1 and b > t0 for a, b in saturated_at))
    return ProcessedRecord(
        segments=segments,
        n_samples=n_samples,
        flat_leads=flats,
        saturated=saturated,
        nan_filled=nan_filled,
        source_fs=raw.fs,
        source_sha256=digest,
        not_measured_leads=not_measured,
    )
