"""Signal processing: resampling, filters, NaN policy, quality flags, segmentation, lead mapping."""

from __future__ import annotations

import numpy as np
import pytest
import wfdb

from ecgbench.data.readers import CANONICAL_LEADS, RecordRejected, load_record
from ecgbench.data.readers.base import to_canonical_leads, to_millivolts
from ecgbench.data.readers.csn import CsnReader
from ecgbench.data.signal import (
    apply_filters,
    fill_gaps,
    filter_bank,
    flat_leads,
    process_record,
    resample,
    saturation_intervals,
    segment_bounds,
)
from ecgbench.resources import SAMPLE_DIR
from ecgbench.settings import DataSettings


def sine(freq: float, fs: float, seconds: float, amplitude: float = 1.0) -> np.ndarray:
    t = np.arange(int(seconds * fs)) / fs
    return amplitude * np.sin(2 * np.pi * freq * t)


def amplitude_at(x: np.ndarray, fs: float, freq: float) -> float:
    spectrum = np.abs(np.fft.rfft(x * np.hanning(x.size))) / (np.hanning(x.size).sum() / 2)
    return float(spectrum[round(freq * x.size / fs)])


@pytest.mark.parametrize(("fs_from", "fs_to"), [(500, 250), (100, 250), (400, 250), (1000, 250)])
def test_resampling_keeps_in_band_sines(fs_from, fs_to):
    x = sine(10.0, fs_from, 10.0, amplitude=1.5)[None, :]
    y = resample(x, fs_from, fs_to)
    assert y.shape == (1, 10 * fs_to)
    assert amplitude_at(y[0], fs_to, 10.0) == pytest.approx(1.5, rel=0.02)


def test_resampling_is_anti_aliased():
    # 200 Hz at 1000 Hz would fold to 50 Hz at 250 Hz without a low-pass; polyphase removes it.
    y = resample(sine(200.0, 1000, 10.0)[None, :], 1000, 250)[0]
    assert amplitude_at(y, 250, 50.0) < 0.01


def test_filters_remove_wander_and_mains_and_keep_timing():
    fs = 250
    t = np.arange(10 * fs) / fs
    beat = np.exp(-(((t - 5.0) / 0.02) ** 2))  # a QRS-like spike at 5 s
    x = (beat + 0.8 * np.sin(2 * np.pi * 0.1 * t) + 0.3 * np.sin(2 * np.pi * 50 * t))[None, :]
    sections = filter_bank(float(fs), 0.5, 100.0, 4, 50.0, 30.0)
    y = apply_filters(x, sections)[0]
    assert amplitude_at(y, fs, 50.0) < 0.01
    assert np.abs(y[fs : 4 * fs]).max() < 0.05  # wander gone away from the spike and the edges
    assert int(np.argmax(y)) == int(np.argmax(beat))  # zero phase: the peak does not move


def test_short_nan_gaps_are_interpolated_and_counted():
    x = np.tile(np.linspace(0.0, 1.0, 500), (12, 1))
    x[3, 100:110] = np.nan
    x[7, 0:3] = np.inf
    y, filled = fill_gaps(x, 500.0, 0.1)
    assert filled == 13
    assert np.isfinite(y).all()
    np.testing.assert_allclose(y[3, 100:110], np.linspace(0.0, 1.0, 500)[100:110])


@pytest.mark.parametrize("span", [slice(100, 200), slice(None)], ids=["long-gap", "whole-lead"])
def test_long_nan_gaps_reject_the_record(span):
    x = np.zeros((12, 1000))
    x[5, span] = np.nan
    with pytest.raises(RecordRejected) as err:
        fill_gaps(x, 500.0, 0.1)
    assert err.value.reason == "nan_gap"


def test_saturation_plateau_is_found_and_a_clean_lead_is_not():
    fs = 500.0
    clean = sine(1.2, fs, 4.0)
    clipped = np.clip(sine(1.2, fs, 4.0, amplitude=3.0), -2.0, 2.0)
    assert saturation_intervals(clean[None, :], fs, 40.0) == []
    intervals = saturation_intervals(clipped[None, :], fs, 40.0)
    assert len(intervals) == 2 * 5  # clipped at top and bottom, in each of the ~5 cycles


def test_flat_leads_are_named():
    segment = np.zeros((12, 100), dtype=np.float32)
    segment[:, :] = np.sin(np.linspace(0, 6, 100))
    segment[[2, 9]] = 0.001
    assert flat_leads(segment, 0.02, 100) == ["III", "V4"]


@pytest.mark.parametrize(
    ("n", "step", "remainder", "expected"),
    [
        (2500, 1250, "drop", [(0, 1250), (1250, 2500)]),
        (3000, 1250, "drop", [(0, 1250), (1250, 2500)]),
        (3000, 1250, "pad", [(0, 1250), (1250, 2500), (2500, 3000)]),
        (2500, 625, "drop", [(0, 1250), (625, 1875), (1250, 2500)]),
        (1000, 1250, "drop", []),
        (1000, 1250, "pad", [(0, 1000)]),
    ],
)
def test_segment_bounds(n, step, remainder, expected):
    assert segment_bounds(n, 1250, step, remainder) == expected


def test_lead_names_are_matched_case_insensitively_in_any_order():
    names = ["v6", "AVL", "i", "II", "iii", "aVR", "AVF", "V1", "v2", "V3", "V4", "V5"]
    x = np.arange(12, dtype=float)[:, None] * np.ones((12, 4))
    y, not_measured = to_canonical_leads(x, names)
    assert not_measured == []
    expected = [
        names.index(n) for n in ["i", "II", "iii", "aVR", "AVL", "AVF", "V1", "v2", "V3", "V4", "V5", "v6"]
    ]
    np.testing.assert_array_equal(y[:, 0], expected)


def test_missing_leads_rejected_or_derived_from_einthoven():
    record = wfdb.rdrecord(str(SAMPLE_DIR / "ptbxl_cinc2021/HR06000"))
    x, names = record.p_signal.T, list(record.sig_name)
    keep = [i for i, n in enumerate(names) if n not in ("III", "aVR", "aVL", "aVF")]
    with pytest.raises(RecordRejected) as err:
        to_canonical_leads(x[keep], [names[i] for i in keep])
    assert err.value.reason == "missing_leads"
    derived, not_measured = to_canonical_leads(x[keep], [names[i] for i in keep], policy="derive")
    assert not_measured == ["III", "aVR", "aVL", "aVF"]
    for lead in not_measured:  # the recorded leads agree with the derivation up to rounding
        np.testing.assert_allclose(derived[CANONICAL_LEADS.index(lead)], x[names.index(lead)], atol=0.011)
    no_v6 = [i for i, n in enumerate(names) if n != "V6"]
    with pytest.raises(RecordRejected):
        to_canonical_leads(x[no_v6], [names[i] for i in no_v6], policy="derive")
    zeroed, not_measured = to_canonical_leads(x[no_v6], [names[i] for i in no_v6], policy="zero")
    assert not_measured == ["V6"] and not zeroed[11].any()


def test_units_are_converted_to_millivolts():
    x = np.ones((3, 2))
    np.testing.assert_allclose(to_millivolts(x, ["uV", "mV", "V"]), [[1e-3] * 2, [1.0] * 2, [1e3] * 2])
    with pytest.raises(RecordRejected) as err:
        to_millivolts(x, ["mmHg", "mV", "mV"])
    assert err.value.reason == "unknown_units"


def test_process_record_gives_segments_from_duration():
    ref = {r.record_id: r for r in CsnReader(SAMPLE_DIR / "chapman_shaoxing_ningbo_cinc2021").discover()}[
        "JS00666"
    ]
    raw = load_record(ref)
    out = process_record(raw, DataSettings(), mains_hz=50.0)
    assert out.segments.shape == (2, 12, 1250)  # 10 s at 250 Hz in 5 s segments
    assert out.n_samples == [1250, 1250] and out.nan_filled == 0
    assert out.segments.dtype == np.float32
    padded = process_record(raw, DataSettings(seg_len=1000, remainder="pad"), mains_hz=50.0)
    assert padded.n_samples == [1000, 1000, 500]
    assert not padded.segments[2, :, 500:].any()
