"""Vectorised ECG features per lead, for retrieval: heart rate and its variability, amplitudes, intervals,
spectral shape.

Everything runs on a whole batch ``(N, 12, L)`` at once (filters, peak finding, beat templates and
grouped sums are array operations over all records and leads together): there is no Python loop per
record or per beat. Per lead:

1. R peaks: a Pan-Tompkins-like envelope (5-20 Hz band, derivative squared, 120 ms moving mean); a peak
   is the maximum of a +-200 ms window above 35 % of the lead's 98th envelope percentile, refined to the
   largest absolute band-passed sample within +-60 ms;
2. RR intervals between consecutive peaks of the same lead give heart rate, SDNN and RMSSD;
3. the mean beat (-250 ms .. +450 ms around each R) gives the R amplitude, QRS peak-to-peak, an
   approximate QRS width (samples within +-120 ms where the slope exceeds 15 % of its maximum), ST
   level at R+100 ms, T amplitude and R-to-T-peak interval (the T wave: the largest deviation 150-400 ms
   after R), all against the lead's median (the isoelectric level in most of a cycle);
4. Welch spectrum: power share in 0.5-4, 4-15 and 15-40 Hz, dominant frequency, spectral centroid.

A feature that cannot be measured on a lead (a flat lead, fewer than two beats) takes the median of the
record's other leads, and 0 when no lead has it, so every row is finite.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ecgbench.data.readers.base import CANONICAL_LEADS

#: bumped whenever a feature's definition changes: an index records it and refuses queries of another one
FEATURES_VERSION = 1
FEATURE_NAMES: tuple[str, ...] = (
    "heart_rate_bpm",
    "sdnn_ms",
    "rmssd_ms",
    "r_amplitude_mv",
    "qrs_peak_to_peak_mv",
    "qrs_width_ms",
    "st_level_mv",
    "t_amplitude_mv",
    "r_to_t_peak_ms",
    "lead_peak_to_peak_mv",
    "power_0.5_4hz",
    "power_4_15hz",
    "power_15_40hz",
    "dominant_frequency_hz",
    "spectral_centroid_hz",
)
#: records handled together: bounds the temporaries (about 40 arrays of (chunk, 12, L) float32)
CHUNK = 256


def feature_names(leads: Sequence[str] = CANONICAL_LEADS) -> list[str]:
    """Column names of :func:`ecg_features`' rows: ``lead:feature``, lead-major."""
    return [f"{lead}:{name}" for lead in leads for name in FEATURE_NAMES]


def ecg_features(signals: np.ndarray, fs: float) -> np.ndarray:
    """Features of ``signals`` (N, 12, L) mV sampled at ``fs`` Hz: float32 (N, 12 * F), lead-major
    (``feature_names()`` names the columns), every value finite."""
    x = np.asarray(signals, dtype=np.float32)
    if x.ndim != 3:
        raise ValueError(f"signals must be (N, leads, samples), got shape {x.shape}")
    if len(x) == 0:
        return np.zeros((0, x.shape[1] * len(FEATURE_NAMES)), dtype=np.float32)
    parts = [_chunk_features(x[i : i + CHUNK], float(fs)) for i in range(0, len(x), CHUNK)]
    out = np.concatenate(parts)
    return out.reshape(len(x), -1)


def _chunk_features(x: np.ndarray, fs: float) -> np.ndarray:
    from scipy import ndimage, signal

    n, leads, length = x.shape
    groups = n * leads
    flat = x.reshape(groups, length)
    nyquist = fs / 2.0
    high = min(20.0, 0.9 * nyquist)
    sos = signal.butter(2, [5.0 / nyquist, high / nyquist], btype="band", output="sos")
    band = signal.sosfiltfilt(sos, flat, axis=-1).astype(np.float32)
    envelope = ndimage.uniform_filter1d(
        np.gradient(band, axis=-1) ** 2, size=max(1, round(0.12 * fs)), axis=-1
    )

    # 1. peaks: window maxima above a per-lead threshold (strictly above the previous sample, so a
    # plateau yields one peak)
    threshold = 0.35 * np.percentile(envelope, 98, axis=-1, keepdims=True)
    window_max = ndimage.maximum_filter1d(envelope, size=2 * round(0.2 * fs) + 1, axis=-1)
    rising = np.concatenate([np.ones((groups, 1), bool), envelope[:, 1:] > envelope[:, :-1]], axis=1)
    is_peak = (envelope == window_max) & (envelope > threshold) & rising & (threshold > 0)
    group, at = np.nonzero(is_peak)  # sorted by group, then time
    # refine to the largest |band| sample within +-60 ms
    reach = round(0.06 * fs)
    offsets = np.arange(-reach, reach + 1)
    around = np.clip(at[:, None] + offsets, 0, length - 1)
    at = around[np.arange(len(at)), np.abs(band[group[:, None], around]).argmax(axis=1)]

    # 2. RR intervals within each lead
    same = group[1:] == group[:-1]
    rr = np.diff(at).astype(np.float64) / fs
    rr_group = group[1:][same]
    rr = rr[same]
    rr_count = np.bincount(rr_group, minlength=groups).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        rr_mean = np.bincount(rr_group, weights=rr, minlength=groups) / rr_count
        rr_var = np.bincount(rr_group, weights=rr**2, minlength=groups) / rr_count - rr_mean**2
        heart_rate = 60.0 / rr_mean
        sdnn = np.sqrt(np.maximum(rr_var, 0.0)) * 1000.0
        successive = rr_group[1:] == rr_group[:-1]  # consecutive intervals of one lead
        diff_group = rr_group[1:][successive]
        diffs = np.diff(rr)[successive]
        d_count = np.bincount(diff_group, minlength=groups).astype(np.float64)
        rmssd = np.sqrt(np.bincount(diff_group, weights=diffs**2, minlength=groups) / d_count) * 1000.0

    # 3. mean beat per lead (beats whose window lies inside the segment)
    before, after = round(0.25 * fs), round(0.45 * fs)
    keep = (at - before >= 0) & (at + after < length)
    beat_group, beat_at = group[keep], at[keep]
    width = before + after + 1
    beats = flat[beat_group[:, None], beat_at[:, None] + np.arange(-before, after + 1)]
    beat_count = np.bincount(beat_group, minlength=groups).astype(np.float64)
    sums = np.zeros((groups, width), dtype=np.float64)
    if len(beat_group):  # beats come sorted by lead: one segmented sum (np.add.at is ~10x slower)
        present, first = np.unique(beat_group, return_index=True)
        sums[present] = np.add.reduceat(beats, first, axis=0, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        template = sums / beat_count[:, None]  # NaN rows: no complete beat
    template -= np.median(flat, axis=-1)[:, None]
    r = before  # index of R in the template
    r_amp = template[:, r]
    qrs = template[:, r - reach : r + reach + 1]
    qrs_pp = qrs.max(axis=1) - qrs.min(axis=1)
    slope_reach = round(0.12 * fs)
    slope = np.abs(np.diff(template[:, r - slope_reach : r + slope_reach + 1], axis=1))
    with np.errstate(invalid="ignore"):
        qrs_width = (slope > 0.15 * slope.max(axis=1, keepdims=True)).sum(axis=1) / fs * 1000.0
    st_level = template[:, min(r + round(0.10 * fs), width - 1)]
    t_window = template[:, r + round(0.15 * fs) : r + round(0.40 * fs) + 1]
    t_index = np.nan_to_num(np.abs(t_window), nan=-1.0).argmax(axis=1)
    t_amp = t_window[np.arange(groups), t_index]
    r_to_t = (round(0.15 * fs) + t_index) / fs * 1000.0
    no_beat = beat_count == 0
    for column in (qrs_width, r_to_t):
        column[no_beat] = np.nan
    lead_pp = np.percentile(flat, 99, axis=-1) - np.percentile(flat, 1, axis=-1)

    # 4. spectrum
    freqs, power = signal.welch(flat, fs=fs, nperseg=min(length, int(2 * fs)), axis=-1)
    total = power[:, (freqs >= 0.5) & (freqs <= min(40.0, nyquist))].sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        shares = [
            power[:, (freqs >= lo) & (freqs < hi)].sum(axis=1) / total
            for lo, hi in ((0.5, 4.0), (4.0, 15.0), (15.0, min(40.0, nyquist) + 1e-9))
        ]
        in_band = (freqs >= 0.5) & (freqs <= min(40.0, nyquist))
        dominant = freqs[in_band][power[:, in_band].argmax(axis=1)]
        dominant = np.where(total > 0, dominant, np.nan)
        centroid = (power[:, in_band] * freqs[in_band]).sum(axis=1) / total

    columns = [
        heart_rate,
        sdnn,
        rmssd,
        r_amp,
        qrs_pp,
        qrs_width,
        st_level,
        t_amp,
        r_to_t,
        lead_pp,
        *shares,
        dominant,
        centroid,
    ]
    features = np.stack(columns, axis=-1).reshape(n, leads, len(FEATURE_NAMES))
    return _filled(features).astype(np.float32)


def _filled(features: np.ndarray) -> np.ndarray:
    """NaN/Inf -> the median of the record's other leads for that feature, else 0 (see the module notes)."""
    features = np.where(np.isfinite(features), features, np.nan)
    missing = np.isnan(features)
    if not missing.any():
        return features
    counts = (~missing).sum(axis=1, keepdims=True)
    ordered = np.sort(features, axis=1)  # NaN sort last
    # median of the finite values along the lead axis, without nanmedian's warning on all-NaN columns
    low = np.take_along_axis(ordered, np.maximum((counts - 1) // 2, 0), axis=1)
    high = np.take_along_axis(ordered, np.maximum(counts // 2, 0), axis=1)
    median = np.where(counts > 0, (low + high) / 2.0, 0.0)
    return np.where(missing, np.broadcast_to(median, features.shape), features)
