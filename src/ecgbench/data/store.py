"""The segment store: prepared ECG segments in memory-mappable shards plus a Parquet index.

Layout::

    STORE/manifest.json              parameters, versions, source checksums, counts, shard list (written last)
    STORE/index.parquet              one row per segment; row number == segment id
    STORE/rejected.parquet           one row per rejected record (record_id, source_path, reason, detail)
    STORE/shards/shard-00000.npy     plain .npy arrays (n, 12, seg_len), float16 or float32, mV,
                                     leads I II III aVR aVL aVF V1-V6
    STORE/.progress/                 only while a preparation runs: committed parts and state.json

Opening reads only ``manifest.json`` (the shard list gives each shard's first segment id), so it takes
milliseconds whatever the size; ``read(i)`` is a binary search over shards plus one memory-mapped slice.
The index is read on first use.

Writing is resumable: segments are buffered up to ``shard_segments`` (closing a shard only between
records), then the shard, its index rows and the rejections since the last commit are written under
temporary names and renamed, and ``state.json`` is replaced last; that rename is the commit. A killed
run restarts after the last commit, so nothing is duplicated or lost; a finished store is left alone.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ecgbench.data.readers.base import CANONICAL_LEADS
from ecgbench.errors import CorruptFileError, UserError
from ecgbench.files import atomic_write, read_json_document, read_parquet, sha256_file, write_parquet

STORE_FORMAT = "ecgbench-segment-store"
STORE_VERSION = 1
MANIFEST = "manifest.json"
INDEX = "index.parquet"
REJECTED = "rejected.parquet"
PROGRESS = ".progress"

# Interface B columns first; duration_s, start_s, source_fs and source_sha256 are additions.
INDEX_SCHEMA = pa.schema(
    [
        ("segment_id", pa.int64()),
        ("corpus", pa.string()),
        ("record_id", pa.string()),
        ("patient_id", pa.string()),
        ("segment_index", pa.int32()),
        ("shard", pa.int32()),
        ("offset", pa.int64()),
        ("fs", pa.int32()),
        ("n_samples", pa.int32()),
        ("labels", pa.list_(pa.string())),
        ("report", pa.string()),
        ("report_original", pa.string()),
        ("age", pa.float64()),
        ("sex", pa.string()),
        ("source_path", pa.string()),
        ("flat_leads", pa.list_(pa.string())),
        ("saturated", pa.bool_()),
        ("nan_filled", pa.int32()),
        ("meta", pa.string()),
        ("duration_s", pa.float32()),  # real (unpadded) length of the segment
        ("start_s", pa.float32()),  # where the segment starts in its record
        ("source_fs", pa.float32()),  # sampling rate of the source record before resampling
        ("source_sha256", pa.string()),  # SHA-256 of the record's raw samples as read
    ]
)
REJECTED_SCHEMA = pa.schema(
    [
        ("corpus", pa.string()),
        ("record_id", pa.string()),
        ("source_path", pa.string()),
        ("reason", pa.string()),
        ("detail", pa.string()),
    ]
)


def shard_name(number: int) -> str:
    return f"shards/shard-{number:05d}.npy"


# -------------------------------------------------------------------------------------------- reading


class SegmentStore:
    """Read access to a finished store (interface B)."""

    def __init__(self, path: Path, manifest: dict[str, Any]):
        self.path = path
        self.manifest = manifest
        self.fs: int = int(manifest["fs"])
        self.seg_len: int = int(manifest["seg_len"])
        self.corpus: str = str(manifest["corpus"])
        self.dtype = np.dtype(manifest["dtype"])
        self.leads: tuple[str, ...] = tuple(manifest.get("leads", CANONICAL_LEADS))
        self._shard_sizes = [int(s["segments"]) for s in manifest["shards"]]
        self._shard_starts = np.concatenate(([0], np.cumsum(self._shard_sizes))).astype(np.int64)
        self._shards: dict[int, np.ndarray] = {}

    @classmethod
    def open(cls, path: str | Path) -> SegmentStore:
        path = Path(path)
        manifest_path = path / MANIFEST
        if not manifest_path.is_file():
            if (path / PROGRESS).is_dir():
                raise UserError(f"{path} is an unfinished segment store: run the same `data prepare` again")
            raise UserError(
                f"{path} is not a segment store (no {MANIFEST}); create one with `ecgbench data prepare`"
            )
        manifest = read_json_document(
            manifest_path, fmt=STORE_FORMAT, what="an ecgbench segment-store manifest", version=STORE_VERSION
        )
        try:
            return cls(path, manifest)
        except (KeyError, TypeError, ValueError) as exc:
            raise CorruptFileError(f"{manifest_path} lacks a required field: {exc}") from None

    def __len__(self) -> int:
        return int(self._shard_starts[-1])

    def __repr__(self) -> str:
        return f"SegmentStore({str(self.path)!r}, corpus={self.corpus!r}, segments={len(self)}, fs={self.fs})"

    def _locate(self, i: int) -> tuple[int, int]:
        if not 0 <= i < len(self):
            raise IndexError(f"segment {i} out of range (store has {len(self)})")
        shard = int(np.searchsorted(self._shard_starts, i, side="right")) - 1
        return shard, i - int(self._shard_starts[shard])

    def _shard(self, number: int) -> np.ndarray:
        array = self._shards.get(number)
        if array is None:
            file = self.path / self.manifest["shards"][number]["file"]
            expected = (self._shard_sizes[number], len(self.leads), self.seg_len)
            try:
                array = np.load(file, mmap_mode="r", allow_pickle=False)
            except FileNotFoundError:
                raise CorruptFileError(f"shard {file} is missing") from None
            except (ValueError, OSError) as exc:
                raise CorruptFileError(f"shard {file} is truncated or not a .npy file: {exc}") from None
            if array.shape != expected or array.dtype != self.dtype:
                raise CorruptFileError(
                    f"shard {file} holds {array.shape} {array.dtype}, manifest says {expected} {self.dtype}"
                )
            self._shards[number] = array
        return array

    def read(self, i: int) -> np.ndarray:
        """Segment ``i`` as float32 (12, seg_len) in mV."""
        shard, offset = self._locate(int(i))
        return np.asarray(self._shard(shard)[offset], dtype=np.float32)

    def read_many(self, indices: Sequence[int] | np.ndarray) -> np.ndarray:
        """Segments as float32 (n, 12, seg_len), in the order asked; reads each shard once, in order."""
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        out = np.empty((idx.size, len(self.leads), self.seg_len), dtype=np.float32)
        if idx.size == 0:
            return out
        if idx.min() < 0 or idx.max() >= len(self):
            raise IndexError(f"segment ids must be in [0, {len(self)})")
        shards = np.searchsorted(self._shard_starts, idx, side="right") - 1
        offsets = idx - self._shard_starts[shards]
        # Row by row in ascending id order: sequential pages, and no temporary the size of the batch
        # (a fancy-indexed copy doubles memory traffic and page faults).
        for pos in np.argsort(idx, kind="stable"):
            out[pos] = self._shard(int(shards[pos]))[offsets[pos]]
        return out

    @cached_property
    def index(self) -> pa.Table:
        file = self.path / INDEX
        try:
            table = pq.read_table(file, memory_map=True)
        except FileNotFoundError:
            raise CorruptFileError(f"{file} is missing") from None
        except (pa.ArrowInvalid, OSError) as exc:
            raise CorruptFileError(f"{file} is not a readable Parquet file: {exc}") from None
        if table.num_rows != len(self):
            raise CorruptFileError(f"{file} has {table.num_rows} rows, the manifest {len(self)} segments")
        return table

    @cached_property
    def rejected(self) -> pa.Table:
        file = self.path / REJECTED
        return read_parquet(file, "rejected records") if file.is_file() else REJECTED_SCHEMA.empty_table()

    def records(self) -> dict[str, list[int]]:
        """record_id -> its segment ids in order."""
        return dict(self._records)

    @cached_property
    def _records(self) -> dict[str, list[int]]:
        grouped: dict[str, list[int]] = {}
        for segment_id, record_id in enumerate(self.index.column("record_id").to_pylist()):
            grouped.setdefault(record_id, []).append(segment_id)
        return grouped

    def verify(self) -> None:
        """Check every shard against the SHA-256 in the manifest (reads all data)."""
        for number, shard in enumerate(self.manifest["shards"]):
            file = self.path / shard["file"]
            if not file.is_file():
                raise CorruptFileError(f"shard {file} is missing")
            if sha256_file(file) != shard["sha256"]:
                raise CorruptFileError(f"shard {file} does not match its checksum in the manifest")
            self._shard(number)


# -------------------------------------------------------------------------------------------- writing


def write_json(path: Path, value: Any) -> None:
    atomic_write(
        path, lambda tmp: tmp.write_text(json.dumps(value, indent=2, sort_keys=False) + "\n", "utf-8")
    )


def _save_npy(array: np.ndarray) -> Callable[[Path], None]:
    def write(tmp: Path) -> None:
        with tmp.open("wb") as handle:
            np.save(handle, array, allow_pickle=False)

    return write


@dataclass
class Counts:
    """What a preparation kept and rejected (persisted with every commit)."""

    records_seen: int = 0
    records_kept: int = 0
    segments: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    nan_filled_records: int = 0
    saturated_segments: int = 0
    flat_lead_segments: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "records_seen": self.records_seen,
            "records_kept": self.records_kept,
            "records_rejected": sum(self.rejected.values()),
            "segments": self.segments,
            "rejected": dict(sorted(self.rejected.items())),
            "nan_filled_records": self.nan_filled_records,
            "saturated_segments": self.saturated_segments,
            "flat_lead_segments": self.flat_lead_segments,
        }

    @classmethod
    def from_json(cls, value: dict[str, Any]) -> Counts:
        return cls(
            records_seen=value["records_seen"],
            records_kept=value["records_kept"],
            segments=value["segments"],
            rejected=Counter(value["rejected"]),
            nan_filled_records=value["nan_filled_records"],
            saturated_segments=value["saturated_segments"],
            flat_lead_segments=value["flat_lead_segments"],
        )

    def add(self, other: Counts) -> None:
        self.records_seen += other.records_seen
        self.records_kept += other.records_kept
        self.segments += other.segments
        self.rejected.update(other.rejected)
        self.nan_filled_records += other.nan_filled_records
        self.saturated_segments += other.saturated_segments
        self.flat_lead_segments += other.flat_lead_segments


def store_state(path: Path) -> str:
    """ "empty" (absent or empty folder), "complete", "partial", or "foreign" (a folder with other files)."""
    if not path.exists() or (path.is_dir() and not any(path.iterdir())):
        return "empty"
    if (path / MANIFEST).is_file():
        return "complete"
    if (path / PROGRESS).is_dir():
        return "partial"
    return "foreign"


def remove_store(path: Path) -> None:
    """Delete a store (refuses anything that is not one, so a wrong --out cannot wipe a folder)."""
    state = store_state(path)
    if state == "foreign":
        raise UserError(f"{path} is not empty and is not a segment store; refusing to overwrite it")
    if state != "empty":
        shutil.rmtree(path)


class StoreWriter:
    """Appends prepared records to a store with atomic, resumable commits (one writer process)."""

    def __init__(
        self,
        path: Path,
        *,
        corpus: str,
        fs: int,
        seg_len: int,
        dtype: str,
        shard_segments: int,
        fingerprint: dict[str, Any],
    ):
        self.path = Path(path)
        self.corpus = corpus
        self.fs = fs
        self.seg_len = seg_len
        self.dtype = np.dtype(dtype)
        self.shard_segments = shard_segments
        self.fingerprint = fingerprint
        self.progress = self.path / PROGRESS
        # committed state
        self.commits: list[dict[str, Any]] = []
        self.records_done = 0
        self.counts = Counts()
        self.seen_records: set[str] = set()
        # pending (since the last commit)
        self._segments: list[np.ndarray] = []
        self._rows: list[dict[str, Any]] = []
        self._rejected: list[dict[str, Any]] = []
        self._pending_records = 0
        self._pending_counts = Counts()
        self._load_state()

    # -- resume

    def _load_state(self) -> None:
        state_file = self.progress / "state.json"
        if not state_file.is_file():
            if self.progress.exists():
                shutil.rmtree(self.progress)  # a run killed before its first commit left nothing usable
            (self.path / "shards").mkdir(parents=True, exist_ok=True)
            self.progress.mkdir(parents=True)
            return
        try:
            state = json.loads(state_file.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise CorruptFileError(f"{state_file} is not valid JSON: {exc}") from None
        if state.get("fingerprint") != self.fingerprint:
            raise UserError(
                f"{self.path} holds an unfinished preparation with other settings or another record list; "
                "rerun it with the same flags, or pass --overwrite to start again"
            )
        self.commits = state["commits"]
        self.records_done = state["records_done"]
        self.counts = Counts.from_json(state["counts"])
        for commit in self.commits:
            part = self.progress / f"index-{commit['number']:05d}.parquet"
            if commit["segments"]:
                self.seen_records.update(pq.read_table(part, columns=["record_id"]).column(0).to_pylist())
        self._remove_uncommitted()

    def _remove_uncommitted(self) -> None:
        """Delete files of a commit that never completed (and temporary files)."""
        shards = {c["shard"] for c in self.commits if c["shard"] is not None}
        numbers = {c["number"] for c in self.commits}
        for folder, kept in ((self.path / "shards", shards), (self.progress, numbers)):
            for file in folder.glob("*"):
                number = _part_number(file.name)
                if file.name.startswith(".") or (number is not None and number not in kept):
                    file.unlink()

    # -- appending

    def add_record(self, rows: list[dict[str, Any]], segments: np.ndarray, nan_filled: int) -> None:
        """A prepared record: one index row per segment (without segment_id/shard/offset)."""
        record_id = rows[0]["record_id"]
        if record_id in self.seen_records:
            self.add_rejection(
                rows[0], "duplicate_record", f"record id {record_id!r} is already in the store"
            )
            return
        self.seen_records.add(record_id)
        if self._buffered + len(rows) > self.shard_segments and self._buffered:
            self.commit()
        self._segments.append(segments)
        self._rows.extend(rows)
        self._pending_records += 1
        counts = self._pending_counts
        counts.records_seen += 1
        counts.records_kept += 1
        counts.segments += len(rows)
        counts.nan_filled_records += int(nan_filled > 0)
        counts.saturated_segments += sum(bool(r["saturated"]) for r in rows)
        counts.flat_lead_segments += sum(bool(r["flat_leads"]) for r in rows)
        if self._buffered >= self.shard_segments:
            self.commit()

    def add_rejection(self, record: dict[str, Any], reason: str, detail: str) -> None:
        self._rejected.append(
            {
                "corpus": record.get("corpus"),
                "record_id": record.get("record_id"),
                "source_path": record.get("source_path"),
                "reason": reason,
                "detail": detail,
            }
        )
        self._pending_records += 1
        self._pending_counts.records_seen += 1
        self._pending_counts.rejected[reason] += 1

    @property
    def _buffered(self) -> int:
        return len(self._rows)

    def commit(self) -> None:
        """Write the pending shard, index rows and rejections, then the state file (the commit point)."""
        if not self._pending_records:
            return
        number = len(self.commits)
        shard = None
        if self._rows:
            shard = sum(1 for c in self.commits if c["shard"] is not None)
            array = np.concatenate(self._segments).astype(self.dtype, copy=False)
            atomic_write(self.path / shard_name(shard), _save_npy(array))
            for offset, row in enumerate(self._rows):
                row["shard"] = shard
                row["offset"] = offset
            write_parquet(self.progress / f"index-{number:05d}.parquet", _rows_table(self._rows))
        if self._rejected:
            table = pa.Table.from_pylist(self._rejected, schema=REJECTED_SCHEMA)
            write_parquet(self.progress / f"rejected-{number:05d}.parquet", table)
        self.commits.append(
            {
                "number": number,
                "shard": shard,
                "segments": len(self._rows),
                "sha256": sha256_file(self.path / shard_name(shard)) if shard is not None else None,
            }
        )
        self.records_done += self._pending_records
        self.counts.add(self._pending_counts)
        write_json(
            self.progress / "state.json",
            {
                "fingerprint": self.fingerprint,
                "commits": self.commits,
                "records_done": self.records_done,
                "counts": self.counts.to_json(),
            },
        )
        self._segments, self._rows, self._rejected = [], [], []
        self._pending_records = 0
        self._pending_counts = Counts()

    # -- finishing

    def finish(self, manifest: dict[str, Any]) -> SegmentStore:
        """Commit what is pending, then write index.parquet, rejected.parquet and manifest.json (last)."""
        self.commit()
        parts = [self.progress / f"index-{c['number']:05d}.parquet" for c in self.commits if c["segments"]]
        rejected = [self.progress / f"rejected-{c['number']:05d}.parquet" for c in self.commits]
        shards = [
            {"file": shard_name(c["shard"]), "segments": c["segments"], "sha256": c["sha256"]}
            for c in self.commits
            if c["shard"] is not None
        ]
        fields = {
            "corpus": self.corpus,
            "fs": self.fs,
            "seg_len": self.seg_len,
            "dtype": self.dtype.name,
            **manifest,
            "fingerprint": self.fingerprint,
            "counts": self.counts.to_json(),
        }
        index = [pq.read_table(p) for p in parts]
        return write_store_files(
            self.path, index, [pq.read_table(p) for p in rejected if p.is_file()], shards, fields
        )


def _part_number(name: str) -> int | None:
    """The number of a file the writer names (``shard-00003.npy``, ``index-00003.parquet``); None for others
    (``state.json``, or a file the writer did not create, which it leaves alone)."""
    match = re.fullmatch(r"(?:shard|index|rejected)-(\d+)\.(?:npy|parquet)", name)
    return int(match[1]) if match else None


def _rows_table(rows: list[dict[str, Any]]) -> pa.Table:
    columns = {name: [row.get(name) for row in rows] for name in INDEX_SCHEMA.names if name != "segment_id"}
    columns["segment_id"] = [0] * len(rows)  # assigned when the index is assembled
    return pa.table(columns, schema=INDEX_SCHEMA)


def write_store_files(
    path: Path,
    index_parts: list[pa.Table],
    rejected_parts: list[pa.Table],
    shards: list[dict[str, Any]],
    manifest: dict[str, Any],
) -> SegmentStore:
    """Write the final index, rejections and manifest (the manifest last), and drop the progress folder."""
    index = pa.concat_tables(index_parts) if index_parts else INDEX_SCHEMA.empty_table()
    index = index.set_column(0, "segment_id", pa.array(np.arange(index.num_rows, dtype=np.int64)))
    if sum(s["segments"] for s in shards) != index.num_rows:
        raise CorruptFileError(f"{path}: shard sizes do not add up to the index rows")
    write_parquet(path / INDEX, index.cast(INDEX_SCHEMA))
    rejected = pa.concat_tables(rejected_parts) if rejected_parts else REJECTED_SCHEMA.empty_table()
    write_parquet(path / REJECTED, rejected.cast(REJECTED_SCHEMA))
    full = {
        "format": STORE_FORMAT,
        "version": STORE_VERSION,
        **manifest,
        "leads": list(CANONICAL_LEADS),
        "units": "mV",
        "n_segments": index.num_rows,
        "n_records": len(set(index.column("record_id").to_pylist())),
        "shards": shards,
    }
    _add_source_summary(full, index)
    write_json(path / MANIFEST, full)
    shutil.rmtree(path / PROGRESS, ignore_errors=True)
    return SegmentStore.open(path)


def _add_source_summary(manifest: dict[str, Any], index: pa.Table) -> None:
    """Records per source sampling rate (with a note for up-sampled ones) and one digest over every
    record's raw-sample checksum, in store order."""
    first: dict[str, tuple[float, str]] = {}
    columns = (index.column(c).to_pylist() for c in ("record_id", "source_fs", "source_sha256"))
    for record_id, fs, sha in zip(*columns, strict=True):
        first.setdefault(record_id, (fs, sha))
    per_fs = Counter(f"{fs:g}" for fs, _ in first.values())
    manifest["source_fs_records"] = dict(sorted(per_fs.items()))
    sources = manifest.setdefault("sources", {})
    sources["records_sha256"] = hashlib.sha256("".join(sha for _, sha in first.values()).encode()).hexdigest()
    upsampled = {fs: n for fs, n in per_fs.items() if float(fs) < manifest["fs"]}
    if upsampled:
        manifest.setdefault("notes", []).append(
            "up-sampled records (source Hz: records): "
            + ", ".join(f"{fs}: {n}" for fs, n in sorted(upsampled.items()))
            + f"; they hold no content above half their source rate although stored at {manifest['fs']} Hz"
        )


def merge_stores(path: Path, parts: list[Path], manifest: dict[str, Any]) -> SegmentStore:
    """Join complete stores of one corpus (the ``--shard i/n`` jobs, in order) into ``path``: shard
    files are moved (a rename, no copy) and the indexes concatenated. Safe to rerun after a crash: a
    shard already moved is skipped, and the parts are deleted only after the manifest is written."""
    stores = [SegmentStore.open(p) for p in parts]
    first = stores[0].manifest
    for store in stores[1:]:
        for key in ("fs", "seg_len", "dtype", "corpus", "parameters"):
            if store.manifest.get(key) != first.get(key):
                raise UserError(f"{store.path} was prepared with a different {key} than {stores[0].path}")
    (path / "shards").mkdir(parents=True, exist_ok=True)
    shards: list[dict[str, Any]] = []
    tables: list[pa.Table] = []
    seen: set[str] = set()
    counts = Counts()
    for store in stores:
        table = pq.read_table(store.path / INDEX)
        ids = set(table.column("record_id").to_pylist())
        if ids & seen:
            raise UserError(f"{store.path} repeats records of an earlier part; the parts are not one split")
        seen |= ids
        shift = pa.scalar(len(shards), pa.int32())
        tables.append(
            table.set_column(table.schema.get_field_index("shard"), "shard", pc.add(table["shard"], shift))
        )
        for shard in store.manifest["shards"]:
            target = path / shard_name(len(shards))
            source = store.path / shard["file"]
            if source.is_file():
                os.replace(source, target)
            elif not target.is_file():
                raise CorruptFileError(f"shard {source} is missing")
            shards.append({**shard, "file": shard_name(len(shards))})
        counts.add(Counts.from_json(store.manifest["counts"]))
    rejected = [pq.read_table(s.path / REJECTED) for s in stores if (s.path / REJECTED).is_file()]
    fields = {
        **{k: first[k] for k in ("corpus", "fs", "seg_len", "dtype")},
        **manifest,
        "counts": counts.to_json(),
        "merged_from": [p.name for p in parts],
    }
    result = write_store_files(path, tables, rejected, shards, fields)
    for part in parts:
        shutil.rmtree(part)
    return result
