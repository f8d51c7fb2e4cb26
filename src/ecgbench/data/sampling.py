"""Choosing segments for tokenizer training, and estimating sample-value percentiles while streaming.

``random`` draws segments uniformly. ``stratified`` describes each segment of a random candidate pool with a
few cheap features (per lead: spread, range, slope; rhythm: zero-crossing rate of lead II), clusters them
with MiniBatchKMeans and takes an equal share from every cluster (small clusters whole, the rest spread
over the bigger ones), so rare morphologies are not drowned by the common ones.

Percentiles (global and per lead) come from a fixed fine histogram updated chunk by chunk: memory does not
grow with the sample, the result is exact to one bin (1 µV by default), and values beyond the range are
still counted (under/overflow) with their extremes kept.

The selection is written as Parquet (``segment_id``, ``cluster``) with the method, seed and percentiles
in the schema metadata key ``ecgbench``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
import pyarrow as pa

from ecgbench.console import progress
from ecgbench.errors import CorruptFileError, UserError
from ecgbench.files import read_parquet, refuse_inside_store, write_error, write_parquet

SampleMethod = Literal["random", "stratified"]
DEFAULT_PERCENTILES = (0.1, 0.5, 1.0, 2.5, 5.0, 25.0, 50.0, 75.0, 95.0, 97.5, 99.0, 99.5, 99.9)
CHUNK = 256
SAMPLE_FORMAT = "segment_sample"


class SegmentSource(Protocol):
    """What sampling needs from a segment store."""

    def __len__(self) -> int: ...

    def read_many(self, indices: Sequence[int] | np.ndarray) -> np.ndarray: ...


class StreamingPercentiles:
    """Per-lead histograms of sample values over [low, high] mV, updated one batch at a time."""

    def __init__(self, n_leads: int = 12, low: float = -25.0, high: float = 25.0, resolution: float = 0.001):
        self.low, self.resolution = low, resolution
        self.n_bins = round((high - low) / resolution)
        # Bin 0 counts values below `low`, the last bin values at or above `high`.
        self.counts = np.zeros((n_leads, self.n_bins + 2), dtype=np.int64)
        self.minimum = np.full(n_leads, np.inf)
        self.maximum = np.full(n_leads, -np.inf)

    def update(self, batch: np.ndarray) -> None:
        """``batch``: (n, leads, samples) or (leads, samples); non-finite values are ignored."""
        batch = np.asarray(batch, dtype=np.float64)
        if batch.ndim == 2:
            batch = batch[None]
        for lead in range(batch.shape[1]):
            values = batch[:, lead].ravel()
            values = values[np.isfinite(values)]
            if values.size == 0:
                continue
            self.minimum[lead] = min(self.minimum[lead], values.min())
            self.maximum[lead] = max(self.maximum[lead], values.max())
            bins = np.floor((values - self.low) / self.resolution).astype(np.int64) + 1
            np.clip(bins, 0, self.n_bins + 1, out=bins)
            self.counts[lead] += np.bincount(bins, minlength=self.n_bins + 2)

    def _quantiles(self, counts: np.ndarray, lo: float, hi: float, qs: Sequence[float]) -> list[float]:
        total = counts.sum()
        if total == 0:
            return [float("nan")] * len(qs)
        cumulative = np.cumsum(counts)
        out = []
        for q in qs:
            b = int(np.searchsorted(cumulative, q / 100.0 * total, side="left"))
            if b == 0:
                value = lo
            elif b >= self.n_bins + 1:
                value = hi
            else:
                value = self.low + (b - 0.5) * self.resolution  # bin centre
            out.append(float(min(max(value, lo), hi)))
        return out

    def percentiles(self, qs: Sequence[float] = DEFAULT_PERCENTILES) -> dict[str, Any]:
        """{"global": {q: mV}, "per_lead": [{q: mV} per lead], "count": n, "min", "max"}."""
        keys = [f"{q:g}" for q in qs]
        lo, hi = float(self.minimum.min()), float(self.maximum.max())
        overall = self._quantiles(self.counts.sum(axis=0), lo, hi, qs)
        per_lead = [
            dict(zip(keys, self._quantiles(c, float(mn), float(mx), qs), strict=True))
            for c, mn, mx in zip(self.counts, self.minimum, self.maximum, strict=True)
        ]
        return {
            "global": dict(zip(keys, overall, strict=True)),
            "per_lead": per_lead,
            "count": int(self.counts.sum()),
            "min": lo,
            "max": hi,
            "resolution_mv": self.resolution,
        }


def segment_features(batch: np.ndarray) -> np.ndarray:
    """(n, 12, L) -> (n, 37) cheap shape features: per lead std, range and mean |slope|; lead II crossings."""
    batch = np.nan_to_num(np.asarray(batch, dtype=np.float32))
    std = batch.std(axis=2)
    span = batch.max(axis=2) - batch.min(axis=2)
    slope = np.abs(np.diff(batch, axis=2)).mean(axis=2)
    lead_ii = batch[:, 1] - batch[:, 1].mean(axis=1, keepdims=True)
    crossings = (np.diff(np.signbit(lead_ii), axis=1)).mean(axis=1, keepdims=True)
    # log1p evens out amplitude scales so a few huge-voltage segments do not own the clustering.
    return np.concatenate([np.log1p(std), np.log1p(span), np.log1p(slope * 100), crossings], axis=1)


def balanced_allocation(sizes: np.ndarray, n: int) -> np.ndarray:
    """How many to take from each cluster: equal shares, small clusters whole, the rest over the bigger."""
    take = np.zeros(len(sizes), dtype=np.int64)
    remaining = min(n, int(sizes.sum()))
    order = np.argsort(sizes, kind="stable")
    for i, c in enumerate(order):
        share = remaining // (len(order) - i)
        take[c] = min(int(sizes[c]), share)
        remaining -= take[c]
    # Integer division can leave a few unassigned: give them to the clusters with room, biggest first.
    for c in order[::-1]:
        if remaining <= 0:
            break
        extra = min(remaining, int(sizes[c] - take[c]))
        take[c] += extra
        remaining -= extra
    return take


@dataclass
class SegmentSample:
    segment_ids: np.ndarray
    clusters: np.ndarray
    method: str
    seed: int
    percentiles: dict[str, Any] = field(default_factory=dict)

    def info(self) -> dict[str, Any]:
        return {
            "format": SAMPLE_FORMAT,
            "version": 1,
            "method": self.method,
            "seed": self.seed,
            "size": len(self.segment_ids),
            "percentiles": self.percentiles,
        }


def _chunks(ids: np.ndarray) -> list[np.ndarray]:
    return [ids[i : i + CHUNK] for i in range(0, len(ids), CHUNK)]


def select_segments(
    store: SegmentSource,
    n: int,
    *,
    method: SampleMethod = "stratified",
    seed: int = 0,
    clusters: int = 64,
    pool: int = 100_000,
    percentiles: Sequence[float] = DEFAULT_PERCENTILES,
    population: np.ndarray | None = None,
) -> SegmentSample:
    """Choose ``n`` segments of ``population`` (segment ids, e.g. one split; default: the whole store)."""
    if population is None:
        population = np.arange(len(store), dtype=np.int64)
    total = len(population)
    if total == 0:
        raise UserError("the segment store is empty")
    if n < 1:
        raise UserError(f"invalid value for --sample-size: {n} (must be at least 1)")
    n = min(n, total)
    rng = np.random.default_rng(seed)
    if method == "random":
        ids = np.sort(rng.choice(population, size=n, replace=False))
        labels = np.full(n, -1, dtype=np.int32)
    elif method == "stratified":
        ids, labels = _stratified(store, population, n, rng, seed, clusters, max(pool, n))
    else:
        raise UserError(f"invalid value for --sample-method: {method!r} (allowed: random, stratified)")
    estimator = StreamingPercentiles()
    with progress() as bar:
        task = bar.add_task("percentiles", total=len(ids))
        for chunk in _chunks(ids):
            estimator.update(store.read_many(chunk))
            bar.advance(task, len(chunk))
    return SegmentSample(ids.astype(np.int64), labels, method, seed, estimator.percentiles(percentiles))


def _stratified(
    store: SegmentSource,
    population: np.ndarray,
    n: int,
    rng: np.random.Generator,
    seed: int,
    clusters: int,
    pool: int,
) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.cluster import MiniBatchKMeans

    candidates = np.sort(rng.choice(population, size=min(pool, len(population)), replace=False))
    features = np.empty((len(candidates), 37), dtype=np.float32)
    with progress() as bar:
        task = bar.add_task("features", total=len(candidates))
        for start in range(0, len(candidates), CHUNK):
            chunk = candidates[start : start + CHUNK]
            features[start : start + len(chunk)] = segment_features(store.read_many(chunk))
            bar.advance(task, len(chunk))
    scale = features.std(axis=0)
    features = (features - features.mean(axis=0)) / np.where(scale > 0, scale, 1.0)
    k = max(1, min(clusters, len(candidates)))
    kmeans = MiniBatchKMeans(n_clusters=k, random_state=seed, batch_size=2048, n_init=3)
    assigned = kmeans.fit_predict(features).astype(np.int32)
    take = balanced_allocation(np.bincount(assigned, minlength=k), n)
    chosen: list[np.ndarray] = []
    for c in range(k):
        members = np.flatnonzero(assigned == c)
        if take[c]:
            chosen.append(rng.choice(members, size=int(take[c]), replace=False))
    picked = np.sort(np.concatenate(chosen))
    return candidates[picked], assigned[picked]


def write_sample(path: Path, sample: SegmentSample) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    table = pa.table(
        {
            "segment_id": pa.array(sample.segment_ids, pa.int64()),
            "cluster": pa.array(sample.clusters, pa.int32()),
        }
    ).replace_schema_metadata({b"ecgbench": json.dumps(sample.info()).encode()})
    return write_parquet(path, table)


def export_segments(store: SegmentSource, ids: np.ndarray, path: Path) -> Path:
    """The selected segments as one plain float32 .npy (n, 12, L), written chunk by chunk through a memory
    map (never the whole array in memory), e.g. for ``ecgbench tokenizer train --npy``.

    The file's blocks are reserved before anything is written: a memory map on a full disk would kill
    the process (SIGBUS) instead of raising, so a full disk is reported here, naming the file."""
    path = Path(path)
    if path.suffix != ".npy":
        raise UserError(f"--npy must name a .npy file: {path}")
    refuse_inside_store(path, "--npy")
    path.parent.mkdir(parents=True, exist_ok=True)
    first = store.read_many(ids[:1])
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}.npy")
    try:
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(len(ids), *first.shape[1:]))
        if hasattr(os, "posix_fallocate"):
            with tmp.open("r+b") as handle:
                os.posix_fallocate(handle.fileno(), 0, tmp.stat().st_size)
        with progress() as bar:
            task = bar.add_task("export", total=len(ids))
            for start in range(0, len(ids), CHUNK):
                chunk = ids[start : start + CHUNK]
                out[start : start + len(chunk)] = store.read_many(chunk)
                bar.advance(task, len(chunk))
        out.flush()
        del out
        os.replace(tmp, path)
    except OSError as exc:
        raise write_error(path, exc) from None
    finally:
        tmp.unlink(missing_ok=True)
    return path


def read_sample(path: Path) -> tuple[np.ndarray, dict[str, Any]]:
    """Segment ids of a sample file and its metadata (method, seed, percentiles)."""
    path = Path(path)
    table = read_parquet(path, "sample file")
    raw = (table.schema.metadata or {}).get(b"ecgbench")
    try:
        info = json.loads(raw) if raw else {}
    except (json.JSONDecodeError, UnicodeDecodeError):
        info = {}
    if (
        not isinstance(info, dict)
        or info.get("format") != SAMPLE_FORMAT
        or "segment_id" not in table.schema.names
        or not pa.types.is_integer(table.schema.field("segment_id").type)
        or table.column("segment_id").null_count
    ):
        raise CorruptFileError(f"{path} is not a segment sample written by `ecgbench data sample`")
    return table.column("segment_id").to_numpy(), info
