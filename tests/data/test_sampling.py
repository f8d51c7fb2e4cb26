"""`data sample`: random and stratified selections, streaming percentiles, the sample file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ecgbench.data import sampling
from ecgbench.data.store import SegmentStore
from ecgbench.errors import CorruptFileError, UserError


def test_streaming_percentiles_match_numpy_within_one_bin() -> None:
    rng = np.random.default_rng(0)
    data = rng.normal(0.0, 0.4, size=(40, 12, 500)) + rng.standard_t(3, size=(40, 12, 500)) * 0.05
    data[3, 2, :10] = 30.0  # beyond the histogram range: still counted, in the overflow bin
    data[5, 7, 0] = np.nan  # ignored
    estimator = sampling.StreamingPercentiles()
    for start in range(0, 40, 7):  # uneven chunks
        estimator.update(data[start : start + 7])
    qs = (0.5, 1.0, 25.0, 50.0, 75.0, 99.0, 99.5)
    result = estimator.percentiles(qs)
    finite = data[np.isfinite(data)]
    for q in qs:
        assert abs(result["global"][f"{q:g}"] - np.percentile(finite, q)) <= 0.001 + 1e-9
    lead2 = data[:, 2].ravel()
    assert abs(result["per_lead"][2]["50"] - np.percentile(lead2, 50)) <= 0.001 + 1e-9
    assert result["max"] == 30.0 and result["count"] == finite.size
    # Percentiles in the overflow bin report the true extreme, not the histogram edge.
    assert estimator.percentiles((100.0,))["global"]["100"] == 30.0


def test_balanced_allocation() -> None:
    take = sampling.balanced_allocation(np.array([1, 50, 3, 100]), 40)
    assert take.tolist() == [1, 18, 3, 18] and take.sum() == 40
    assert sampling.balanced_allocation(np.array([2, 2]), 10).tolist() == [2, 2]
    assert sampling.balanced_allocation(np.array([5, 5, 5]), 7).sum() == 7


def test_random_and_stratified_on_real_store(sample_store: Path, tmp_path: Path) -> None:
    store = SegmentStore.open(sample_store)
    random = sampling.select_segments(store, 20, method="random", seed=3)
    assert len(set(random.segment_ids.tolist())) == 20 and (np.diff(random.segment_ids) > 0).all()
    again = sampling.select_segments(store, 20, method="random", seed=3)
    assert again.segment_ids.tolist() == random.segment_ids.tolist()
    strat = sampling.select_segments(store, 24, method="stratified", seed=3, clusters=6)
    ids = strat.segment_ids.tolist()
    assert len(set(ids)) == 24 and all(0 <= i < len(store) for i in ids)
    # 24 picks over 6 clusters: every cluster contributes, and the same seed picks the same segments.
    assert set(strat.clusters.tolist()) == set(range(6))
    same = sampling.select_segments(store, 24, method="stratified", seed=3, clusters=6)
    assert same.segment_ids.tolist() == ids and same.clusters.tolist() == strat.clusters.tolist()
    # Percentiles come from exactly the selected segments.
    signals = store.read_many(strat.segment_ids)
    assert abs(strat.percentiles["global"]["50"] - np.percentile(signals, 50)) <= 0.001 + 1e-9
    everything = sampling.select_segments(store, 10_000, method="random")
    assert len(everything.segment_ids) == len(store)

    path = sampling.write_sample(tmp_path / "sample.parquet", strat)
    back, info = sampling.read_sample(path)
    assert back.tolist() == ids and info["method"] == "stratified" and info["seed"] == 3
    assert info["percentiles"]["global"] == strat.percentiles["global"]


def test_bad_inputs(sample_store: Path, tmp_path: Path) -> None:
    store = SegmentStore.open(sample_store)
    with pytest.raises(UserError, match="sample-method"):
        sampling.select_segments(store, 5, method="fancy")  # type: ignore[arg-type]
    with pytest.raises(UserError, match="not found"):
        sampling.read_sample(tmp_path / "none.parquet")
    other = tmp_path / "other.parquet"
    pq.write_table(pa.table({"segment_id": [1, 2]}), other)
    with pytest.raises(CorruptFileError, match="not a segment sample"):
        sampling.read_sample(other)
    garbage = tmp_path / "garbage.parquet"
    garbage.write_bytes(b"PAR1 truncated")
    with pytest.raises(CorruptFileError):
        sampling.read_sample(garbage)
