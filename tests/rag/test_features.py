"""Per-lead ECG features (ecgbench.rag.features) on the bundled real records."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy.signal import find_peaks

from ecgbench.data.store import SegmentStore
from ecgbench.rag.features import FEATURE_NAMES, ecg_features, feature_names

HR = FEATURE_NAMES.index("heart_rate_bpm")
SDNN = FEATURE_NAMES.index("sdnn_ms")
LEAD_II = 1


@pytest.fixture(scope="module")
def segments(sample_store: Path) -> tuple[SegmentStore, np.ndarray, np.ndarray]:
    store = SegmentStore.open(sample_store)
    signals = store.read_many(np.arange(len(store)))
    return store, signals, ecg_features(signals, store.fs)


def test_features_are_finite_and_shaped_per_lead(segments) -> None:
    store, signals, features = segments
    assert features.shape == (len(store), 12 * len(FEATURE_NAMES)) == (len(signals), len(feature_names()))
    assert features.dtype == np.float32 and np.isfinite(features).all()
    assert feature_names()[LEAD_II * len(FEATURE_NAMES) + HR] == "II:heart_rate_bpm"
    rates = features.reshape(len(store), 12, -1)[:, :, HR]
    # every real record here has a detectable rhythm; a single lead may miss beats (lead III of a record
    # with ventricular ectopics), the record's median does not
    assert ((np.median(rates, axis=1) > 30) & (np.median(rates, axis=1) < 220)).all()
    assert ((rates > 30) & (rates < 220)).mean() > 0.98


def test_heart_rate_matches_rr_counted_by_hand(segments) -> None:
    """PTB-XL record 1 (sinus rhythm): R peaks of lead II found with scipy's find_peaks on the raw samples
    (a different method), heart rate from their mean RR."""
    store, signals, features = segments
    row = store.records()[("ptbxl", "1")][0]
    lead = signals[row, LEAD_II]
    peaks, _ = find_peaks(lead, distance=int(0.3 * store.fs), height=0.5 * lead.max())
    by_hand = 60.0 / (np.diff(peaks).mean() / store.fs)
    ours = features.reshape(len(store), 12, -1)[row, LEAD_II, HR]
    assert abs(ours - by_hand) < 2.0, (ours, by_hand)
    assert 50 < by_hand < 80  # the record's own rate (about 64 bpm)


def test_irregular_rhythm_has_higher_variability(segments) -> None:
    store, _, features = segments
    labels = store.index.column("labels").to_pylist()
    sdnn = np.median(features.reshape(len(store), 12, -1)[:, :, SDNN], axis=1)
    afib = [s for s, lab in zip(sdnn, labels, strict=True) if "atrial fibrillation" in lab]
    sinus = [s for s, lab in zip(sdnn, labels, strict=True) if lab == ["sinus rhythm"]]
    assert afib and sinus and min(afib) > np.median(sinus)


def test_a_flat_lead_takes_the_other_leads_median(segments) -> None:
    store, signals, _ = segments
    x = signals[:2].copy()
    x[0, 4] = 0.0  # aVL flat
    features = ecg_features(x, store.fs).reshape(2, 12, -1)
    assert np.isfinite(features).all()
    assert features[0, 4, HR] == pytest.approx(np.median(np.delete(features[0, :, HR], 4)), rel=0.02)
    assert ecg_features(np.zeros((0, 12, store.seg_len)), store.fs).shape == (0, 12 * len(FEATURE_NAMES))


@pytest.mark.parametrize("fs", [100, 500])
def test_heart_rate_does_not_depend_on_the_sampling_rate(segments, fs: int) -> None:
    from scipy.signal import resample_poly

    store, signals, features = segments
    x = resample_poly(signals[:8], fs, store.fs, axis=-1).astype(np.float32)
    other = ecg_features(x, fs).reshape(8, 12, -1)
    ours = features.reshape(len(store), 12, -1)[:8]
    assert np.isfinite(other).all()
    assert np.allclose(np.median(other[:, :, HR], axis=1), np.median(ours[:, :, HR], axis=1), rtol=0.03)
