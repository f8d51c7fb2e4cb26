"""The segment store: prepared ECG segments in memory-mappable shards plus a Parquet index.

Layout::

    STORE/manifest.json              parameters, versions, source checksums, counts, shard list (written last)
    STORE/index.parquet              one row per segment; row number == segment id
    STORE/rejected.parquet           one row per rejected record (record_id, source_path, reason, detail)
    STORE/shards/shard-00000.npy     plain .npy arrays (n, 12, seg_len), float16 or float32, mV,
                                     leads I II III aVR aVL aVF V1-V6
    STORE/.progress/                 only while a preparation runs: committed parts and state.json
    STORE/.lock                      only while a preparation runs: the writer's pid and host

Opening reads only ``manifest.json`` (the shard list gives each shard's first segment id), so it takes
milliseconds whatever the size; ``read(i)`` is a binary search over shards plus one memory-mapped slice.
The index is read on first use. Every read checks that what it returns is finite (the store holds float
mV, so NaN/Inf can only be damage); ``open(..., verify=True)`` also checks each shard against its SHA-256
in the manifest the first time it is read, for commands that consume a whole store; ``verify_store``
checks everything (``ecgbench data verify``).

Writing is resumable: segments are buffered up to ``shard_segments`` (closing a shard only between
records), then the shard, its index rows and the rejections since the last commit are written under
temporary names and renamed, and ``state.json`` is replaced last; that rename is the commit. A killed
run restarts after the last commit it can prove intact (each committed shard is checked against its
checksum), so nothing is duplicated or lost; a finished store is left alone. One writer at a time holds
``.lock`` (see :class:`StoreLock`).

Only files named as above are ever written or removed here: a folder is treated as a store only if its
manifest (or progress state) is of our format, and ``--overwrite`` removes exactly the store's own files.
"""

from __future__ import annotations

import bisect
import contextlib
import hashlib
import json
import math
import os
import re
import socket
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ecgbench.data.readers.base import CANONICAL_LEADS
from ecgbench.errors import CorruptFileError, UserError
from ecgbench.files import (
    SEGMENT_STORE_FORMAT,
    atomic_write,
    read_json_document,
    read_npy,
    read_parquet,
    sha256_file,
    write_parquet,
)

STORE_FORMAT = SEGMENT_STORE_FORMAT
STORE_VERSION = 1
PROGRESS_FORMAT = "ecgbench-segment-store-progress"
MANIFEST = "manifest.json"
INDEX = "index.parquet"
REJECTED = "rejected.parquet"
PROGRESS = ".progress"
LOCK = ".lock"
SHARDS = "shards"

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

# The names a store consists of (the writer's temporary files are ".<name>.tmp-<pid>").
_TOP_FILES = (MANIFEST, INDEX, REJECTED)
_TEMP = re.compile(r"\.(?P<name>.+)\.tmp-\d+")
_SHARD_FILE = re.compile(r"shard-\d{5,}\.npy")
_PROGRESS_FILE = re.compile(r"state\.json|(?:index|rejected)-\d{5,}\.parquet")


def shard_name(number: int) -> str:
    return f"{SHARDS}/shard-{number:05d}.npy"


def check_schema(table: pa.Table, schema: pa.Schema, file: Path, what: str) -> pa.Table:
    """``table`` reduced to ``schema``'s columns, or a one-line error naming the first missing or mistyped
    column (a hand-edited or foreign file must not surface later as a KeyError)."""
    missing = [f.name for f in schema if f.name not in table.schema.names]
    if missing:
        raise CorruptFileError(f"{file} is not {what}: it lacks the columns {', '.join(missing)}")
    for expected in schema:
        found = table.schema.field(expected.name).type
        if found != expected.type:
            raise CorruptFileError(
                f"{file} is not {what}: column {expected.name!r} is {found}, expected {expected.type}"
            )
    return table.select(schema.names)


# -------------------------------------------------------------------------------------------- reading


class SegmentStore:
    """Read access to a finished store (interface B)."""

    def __init__(self, path: Path, manifest: dict[str, Any], *, verify: bool = False):
        self.path = path
        self.manifest = manifest
        self.fs: int = int(manifest["fs"])
        self.seg_len: int = int(manifest["seg_len"])
        self.corpus: str = str(manifest["corpus"])
        self.dtype = np.dtype(manifest["dtype"])
        self.leads: tuple[str, ...] = tuple(manifest.get("leads", CANONICAL_LEADS))
        self._shard_sizes = [int(s["segments"]) for s in manifest["shards"]]
        self._shard_files = [str(s["file"]) for s in manifest["shards"]]
        self._shard_starts = np.concatenate(([0], np.cumsum(self._shard_sizes))).astype(np.int64)
        self._shard_start_list = [int(v) for v in self._shard_starts]
        self._shards: dict[int, np.ndarray] = {}
        self._verify = verify

    @classmethod
    def open(cls, path: str | Path, *, verify: bool = False) -> SegmentStore:
        """Open a finished store; ``verify`` checks each shard's SHA-256 the first time it is read."""
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
            return cls(path, manifest, verify=verify)
        except (KeyError, TypeError, ValueError) as exc:
            raise CorruptFileError(f"{manifest_path} lacks a required field: {exc}") from None

    def __len__(self) -> int:
        return int(self._shard_starts[-1])

    def __repr__(self) -> str:
        return f"SegmentStore({str(self.path)!r}, corpus={self.corpus!r}, segments={len(self)}, fs={self.fs})"

    def __getstate__(self) -> dict[str, Any]:
        # A copy sent to a DataLoader worker maps the shards again instead of carrying their pages.
        state = dict(self.__dict__)
        state["_shards"] = {}
        for cached in ("index", "rejected", "_records"):
            state.pop(cached, None)
        return state

    def _locate(self, i: int) -> tuple[int, int]:
        if not 0 <= i < len(self):
            raise IndexError(f"segment {i} out of range (store has {len(self)})")
        # bisect on a Python list: a numpy call costs more than the search for one id
        shard = bisect.bisect_right(self._shard_start_list, i) - 1
        return shard, i - self._shard_start_list[shard]

    def _shard(self, number: int) -> np.ndarray:
        array = self._shards.get(number)
        if array is None:
            array = self._open_shard(number, checksum=self._verify)
            self._shards[number] = array
        return array

    def _open_shard(self, number: int, *, checksum: bool) -> np.ndarray:
        file = self.path / self._shard_files[number]
        expected = (self._shard_sizes[number], len(self.leads), self.seg_len)
        if not file.is_file():
            raise CorruptFileError(f"shard {file} is missing")
        if checksum:
            self._check_checksum(number)
        array = read_npy(file, "shard")
        if array.shape != expected or array.dtype != self.dtype:
            raise CorruptFileError(
                f"shard {file} holds {array.shape} {array.dtype}, manifest says {expected} {self.dtype}"
            )
        return array

    def _check_checksum(self, number: int) -> None:
        file = self.path / self._shard_files[number]
        if sha256_file(file) != self.manifest["shards"][number].get("sha256"):
            raise CorruptFileError(
                f"shard {file} does not match its checksum in the manifest: it is damaged "
                f"(check the whole store with `ecgbench data verify {self.path}`)"
            )

    def _check_finite(self, block: np.ndarray, ids: np.ndarray) -> None:
        """NaN/Inf in what was read can only be damage; the float64-free sum is the cheap test, the
        element test runs only when the sum is not finite."""
        if np.isfinite(block.sum()) or np.isfinite(block).all():
            return
        bad = int(ids[int(np.flatnonzero(~np.isfinite(block.reshape(len(ids), -1)).all(axis=1))[0])])
        shard, offset = self._locate(bad)
        raise CorruptFileError(
            f"segment {bad} (row {offset} of shard {self.path / self._shard_files[shard]}) holds NaN or Inf "
            f"values: the shard is damaged (check the store with `ecgbench data verify {self.path}`)"
        )

    def read(self, i: int) -> np.ndarray:
        """Segment ``i`` as float32 (12, seg_len) in mV."""
        shard, offset = self._locate(int(i))
        out = np.asarray(self._shard(shard)[offset], dtype=np.float32)
        if not math.isfinite(float(out.sum())):  # the cheap test first; the full one names the damage
            self._check_finite(out[None], np.array([int(i)]))
        return out

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
        self._check_finite(out, idx)
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
        table = check_schema(table, INDEX_SCHEMA, file, "a segment-store index")
        if table.num_rows != len(self):
            raise CorruptFileError(f"{file} has {table.num_rows} rows, the manifest {len(self)} segments")
        return table

    @cached_property
    def rejected(self) -> pa.Table:
        file = self.path / REJECTED
        if not file.is_file():
            return REJECTED_SCHEMA.empty_table()
        return check_schema(
            read_parquet(file, "rejected records"), REJECTED_SCHEMA, file, "a rejections table"
        )

    def records(self) -> dict[tuple[str, str], list[int]]:
        """(corpus, record_id) -> its segment ids in order (a record id alone can repeat across the
        corpora of one store; ``ecgbench.data.dataset.RecordIndex`` is the look-up over several stores)."""
        return {key: list(ids) for key, ids in self._records.items()}

    @cached_property
    def _records(self) -> dict[tuple[str, str], list[int]]:
        grouped: dict[tuple[str, str], list[int]] = {}
        corpora, records = (self.index.column(name).to_pylist() for name in ("corpus", "record_id"))
        keys = zip(corpora, records, strict=True)
        for segment_id, key in enumerate(keys):
            grouped.setdefault(key, []).append(segment_id)
        return grouped

    def check_files(self) -> None:
        """Cheap: every shard is there with the shape and type the manifest says (headers only)."""
        for number in range(len(self._shard_files)):
            self._open_shard(number, checksum=False)

    def verify(self) -> None:
        """Check every shard against the SHA-256 in the manifest (reads all data)."""
        for number in range(len(self._shard_files)):
            self._open_shard(number, checksum=True)


def verify_store(path: Path) -> tuple[SegmentStore, list[str], list[str]]:
    """Everything about a finished store that can be checked: each shard's checksum, shape and type, the
    index (schema, rows, segment ids, shard positions), the rejections table, leftovers of a writer.
    Returns the store, the problems (damage) and the notes (harmless leftovers)."""
    store = SegmentStore.open(path)
    problems: list[str] = []
    notes: list[str] = []
    for number in range(len(store._shard_files)):
        try:
            store._open_shard(number, checksum=True)
        except UserError as exc:
            problems.append(str(exc))
    try:
        index = store.index
        if index.column("segment_id").to_pylist() != list(range(len(store))):
            problems.append(f"{store.path / INDEX}: segment ids are not 0..{len(store) - 1} in order")
        expected_shard = np.repeat(np.arange(len(store._shard_sizes)), store._shard_sizes)
        expected_offset = np.arange(len(store)) - np.repeat(store._shard_starts[:-1], store._shard_sizes)
        shard = index.column("shard").to_numpy(zero_copy_only=False)
        offset = index.column("offset").to_numpy(zero_copy_only=False)
        if not (np.array_equal(shard, expected_shard) and np.array_equal(offset, expected_offset)):
            problems.append(
                f"{store.path / INDEX}: shard/offset columns do not match the manifest's shard list"
            )
    except CorruptFileError as exc:
        problems.append(str(exc))
    try:
        store.rejected  # noqa: B018 (read and checked)
    except UserError as exc:
        problems.append(str(exc))
    if (store.path / PROGRESS).exists():
        notes.append(
            f"{store.path / PROGRESS} is left over from an interrupted finish (harmless); the next "
            "`data prepare` of this store removes it"
        )
    lock = read_lock(store.path / LOCK)
    if lock is not None:
        notes.append(f"{store.path / LOCK}: {describe_holder(lock)}")
    return store, problems, notes


# -------------------------------------------------------------------------------------------- locking


def read_lock(path: Path) -> dict[str, Any] | None:
    """The holder recorded in a lock file; None if there is none; {} if it cannot be read."""
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return {}
    return value if isinstance(value, dict) else {}


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def describe_holder(holder: dict[str, Any]) -> str:
    if not holder:
        return "held by an unknown process (unreadable lock file)"
    alive = holder.get("host") == socket.gethostname() and isinstance(holder.get("pid"), int)
    state = "" if not alive else (" (running)" if _pid_alive(holder["pid"]) else " (no longer running)")
    return f"held by pid {holder.get('pid')} on {holder.get('host')}{state} since {holder.get('started')}"


class StoreLock:
    """One writer per store folder: ``.lock`` created with O_EXCL holds the writer's pid and host. A lock
    whose pid is dead on this host is stale and taken over; any other held lock is a one-line error naming
    its holder."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.path = self.folder / LOCK
        self._mine: dict[str, Any] | None = None

    def __enter__(self) -> StoreLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def acquire(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        mine = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": datetime.now(UTC).isoformat(timespec="seconds"),
            "command": "ecgbench data prepare",
        }
        for _ in range(20):
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                holder = read_lock(self.path)
                if holder is None:
                    continue  # released meanwhile
                if holder == {} and time.time() - _mtime(self.path) < 5:
                    time.sleep(0.05)  # being written by its creator right now
                    continue
                if self._stale(holder):
                    self._take_over(holder)
                    continue
                raise UserError(
                    f"{self.folder} is being written by another `ecgbench data prepare` "
                    f"({describe_holder(holder)}); wait for it to finish, or, if that process is gone, "
                    f"delete {self.path}"
                ) from None
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(json.dumps(mine) + "\n")
            self._mine = mine
            return
        holder = read_lock(self.path) or {}
        raise UserError(
            f"could not take the lock {self.path} ({describe_holder(holder)}); if no `data prepare` of "
            f"{self.folder} is running, delete {self.path}"
        )

    @staticmethod
    def _stale(holder: dict[str, Any]) -> bool:
        if not holder:
            return True  # unreadable and older than a few seconds: its creator died while writing it
        pid = holder.get("pid")
        return holder.get("host") == socket.gethostname() and isinstance(pid, int) and not _pid_alive(pid)

    def _take_over(self, holder: dict[str, Any]) -> None:
        """Remove a stale lock, unless another process replaced it meanwhile (then leave theirs)."""
        moved = self.path.with_name(f"{LOCK}.stale-{os.getpid()}")
        try:
            os.replace(self.path, moved)
        except FileNotFoundError:
            return
        if read_lock(moved) != holder:
            with contextlib.suppress(OSError):
                os.link(moved, self.path)  # put the live lock back (fails if a third took the name)
        moved.unlink(missing_ok=True)

    def release(self) -> None:
        if self._mine is not None and read_lock(self.path) == self._mine:
            self.path.unlink(missing_ok=True)
        self._mine = None


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return time.time()


# --------------------------------------------------------------------------------- state and removal


def write_json(path: Path, value: Any) -> None:
    atomic_write(
        path,
        lambda tmp: tmp.write_text(json.dumps(value, indent=2, sort_keys=False) + "\n", "utf-8"),
        store_write=True,
    )


def _save_npy(array: np.ndarray) -> Callable[[Path], None]:
    def write(tmp: Path) -> None:
        with tmp.open("wb") as handle:
            np.save(handle, array, allow_pickle=False)

    return write


def _own_entry(kind: str, name: str) -> bool:
    """Whether ``name`` is one the writer uses in a store folder (``kind`` "top"), its ``shards/`` or its
    ``.progress/`` (temporary files included)."""
    temp = _TEMP.fullmatch(name)
    base = temp["name"] if temp else name
    if kind == SHARDS:
        return bool(_SHARD_FILE.fullmatch(base))
    if kind == PROGRESS:
        return bool(_PROGRESS_FILE.fullmatch(base))
    return base in _TOP_FILES or (name in (SHARDS, PROGRESS, LOCK) and not temp)


def _read_progress_state(path: Path) -> dict[str, Any] | None:
    """``.progress/state.json`` if it is ours (None if absent); a damaged one is a one-line error."""
    file = path / PROGRESS / "state.json"
    if not file.is_file():
        return None
    try:
        state = json.loads(file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CorruptFileError(
            f"{file} is not valid JSON ({exc}); pass --overwrite to start this store again"
        ) from None
    if not isinstance(state, dict) or "fingerprint" not in state or "commits" not in state:
        raise CorruptFileError(f"{file} is not the progress state of a segment store")
    return state


def _manifest_is_ours(path: Path) -> bool:
    try:
        document = json.loads((path / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    return isinstance(document, dict) and document.get("format") == STORE_FORMAT


def store_state(path: Path) -> str:
    """ "empty" (absent, or an empty folder), "complete" (a manifest of our format), "partial" (our
    progress state, or nothing but the writer's own files), or "foreign" (anything else: never touched)."""
    if not path.exists():
        return "empty"
    if not path.is_dir():
        return "foreign"
    entries = [e for e in path.iterdir() if e.name != LOCK]
    if not entries:
        return "empty"
    if (path / MANIFEST).exists():
        return "complete" if _manifest_is_ours(path) else "foreign"
    try:
        if _read_progress_state(path) is not None:
            return "partial"
    except CorruptFileError:
        pass  # a damaged state: judged by the names around it, like no state at all
    # No (readable) state: a store only if it holds nothing but the writer's own names.
    if (path / PROGRESS).is_dir() and all(_own_tree(path)):
        return "partial"
    return "foreign"


def _own_tree(path: Path) -> list[bool]:
    owned = []
    for entry in path.iterdir():
        owned.append(_own_entry("top", entry.name))
        if entry.name in (SHARDS, PROGRESS) and entry.is_dir():
            owned += [_own_entry(entry.name, child.name) and child.is_file() for child in entry.iterdir()]
    return owned


def _remove_own_files(folder: Path) -> None:
    """Delete the writer's files in ``folder`` (shards/ or .progress/), then the folder if it is empty."""
    if not folder.is_dir():
        return
    for file in folder.iterdir():
        if _own_entry(folder.name, file.name) and file.is_file():
            file.unlink()
    with contextlib.suppress(OSError):  # something that is not ours stays, and so does its folder
        folder.rmdir()


def remove_store(path: Path) -> None:
    """Delete a store's own files (its manifest last, so an interrupted removal is still recognised as a
    store); anything else in the folder is left alone. Refuses a folder that is not a store."""
    state = store_state(path)
    if state == "foreign":
        raise UserError(
            f"{path} is not a segment store (no store manifest of ours); refusing to delete anything in it"
        )
    if state == "empty":
        return
    _remove_own_files(path / SHARDS)
    _remove_own_files(path / PROGRESS)
    for entry in path.iterdir():
        if entry.is_file() and entry.name not in (MANIFEST, LOCK) and _own_entry("top", entry.name):
            entry.unlink()
    (path / MANIFEST).unlink(missing_ok=True)


def clean_leftovers(path: Path, *, progress: bool = True) -> None:
    """Remove the writer's temporary files (a run killed while writing one), and with ``progress`` the
    ``.progress/`` folder a finished store no longer needs."""
    if progress:
        _remove_own_files(path / PROGRESS)
    for folder, kind in ((path, "top"), (path / SHARDS, SHARDS)):
        if folder.is_dir():
            for entry in folder.iterdir():
                if _TEMP.fullmatch(entry.name) and _own_entry(kind, entry.name) and entry.is_file():
                    entry.unlink()


# -------------------------------------------------------------------------------------------- writing


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
    records_without_patient: int = 0  # kept records whose patient is unknown (each is its own patient)

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
            "records_without_patient": self.records_without_patient,
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
            # absent in stores written before it was counted
            records_without_patient=value.get("records_without_patient", 0),
        )

    def add(self, other: Counts) -> None:
        self.records_seen += other.records_seen
        self.records_kept += other.records_kept
        self.segments += other.segments
        self.rejected.update(other.rejected)
        self.nan_filled_records += other.nan_filled_records
        self.saturated_segments += other.saturated_segments
        self.flat_lead_segments += other.flat_lead_segments
        self.records_without_patient += other.records_without_patient


class StoreWriter:
    """Appends prepared records to a store with atomic, resumable commits (one writer process, which
    must hold the folder's :class:`StoreLock`)."""

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
        # what resuming found damaged and will prepare again (for the caller to report)
        self.redone: list[str] = []
        # pending (since the last commit)
        self._segments: list[np.ndarray] = []
        self._rows: list[dict[str, Any]] = []
        self._rejected: list[dict[str, Any]] = []
        self._pending_records = 0
        self._pending_counts = Counts()
        self._load_state()

    # -- resume

    def _load_state(self) -> None:
        state = _read_progress_state(self.path)
        if state is None:
            # Nothing committed (or a run killed before its first commit): clear the writer's own leftovers.
            _remove_own_files(self.progress)
            _remove_own_files(self.path / SHARDS)
            clean_leftovers(self.path)
            (self.path / SHARDS).mkdir(parents=True, exist_ok=True)
            self.progress.mkdir(parents=True, exist_ok=True)
            self._write_state()
            return
        if state.get("fingerprint") != self.fingerprint:
            raise UserError(
                f"{self.path} holds an unfinished preparation with other settings or another record list; "
                "rerun it with the same flags, or pass --overwrite to start again"
            )
        commits = list(state["commits"])
        intact = self._intact_prefix(commits)
        if intact < len(commits):
            if any("records" not in c or "counts" not in c for c in commits[:intact]):
                raise UserError(
                    f"{self.path}: {self.redone[0]}; this unfinished store predates per-commit records and "
                    "cannot be repaired: pass --overwrite to start again"
                )
            commits = commits[:intact]
        self.commits = commits
        if self.redone:
            self.records_done = sum(c["records"] for c in commits)
            self.counts = Counts()
            for commit in commits:
                self.counts.add(Counts.from_json(commit["counts"]))
        else:
            self.records_done = state["records_done"]
            self.counts = Counts.from_json(state["counts"])
        for commit in self.commits:
            if commit["segments"]:
                part = self.progress / f"index-{commit['number']:05d}.parquet"
                self.seen_records.update(pq.read_table(part, columns=["record_id"]).column(0).to_pylist())
        self._remove_uncommitted()
        if self.redone:
            self._write_state()

    def _intact_prefix(self, commits: list[dict[str, Any]]) -> int:
        """How many commits, from the first, have all their files intact; the first damaged one is
        described in ``self.redone`` (it and every later commit are prepared again)."""
        for k, commit in enumerate(commits):
            problem = self._commit_problem(commit)
            if problem is not None:
                later = len(commits) - k
                self.redone.append(f"{problem} ({later} committed part{'s' * (later > 1)} to redo)")
                return k
        return len(commits)

    def _commit_problem(self, commit: dict[str, Any]) -> str | None:
        if commit["shard"] is not None:
            shard = self.path / shard_name(commit["shard"])
            if not shard.is_file():
                return f"committed shard {shard} is missing"
            if sha256_file(shard) != commit["sha256"]:
                return f"committed shard {shard} does not match its checksum"
        if commit["segments"]:
            part = self.progress / f"index-{commit['number']:05d}.parquet"
            try:
                rows = pq.read_metadata(part).num_rows
            except (OSError, pa.ArrowInvalid):
                return f"committed index part {part} is missing or unreadable"
            if rows != commit["segments"]:
                return f"committed index part {part} has {rows} rows, expected {commit['segments']}"
        if commit.get("rejected"):
            part = self.progress / f"rejected-{commit['number']:05d}.parquet"
            try:
                pq.read_metadata(part)
            except (OSError, pa.ArrowInvalid):
                return f"committed rejections part {part} is missing or unreadable"
        return None

    def _remove_uncommitted(self) -> None:
        """Delete files of a commit that never completed (and the writer's temporary files)."""
        shards = {c["shard"] for c in self.commits if c["shard"] is not None}
        numbers = {c["number"] for c in self.commits}
        for folder, kept in ((self.path / SHARDS, shards), (self.progress, numbers)):
            if not folder.is_dir():
                folder.mkdir(parents=True)
            for file in folder.iterdir():
                if not _own_entry(folder.name, file.name) or not file.is_file():
                    continue  # not the writer's: left alone
                number = _part_number(file.name)
                if _TEMP.fullmatch(file.name) or (number is not None and number not in kept):
                    file.unlink()
        clean_leftovers(self.path, progress=False)

    def _write_state(self) -> None:
        write_json(
            self.progress / "state.json",
            {
                "format": PROGRESS_FORMAT,
                "fingerprint": self.fingerprint,
                "commits": self.commits,
                "records_done": self.records_done,
                "counts": self.counts.to_json(),
            },
        )

    # -- appending

    def add_record(
        self, rows: list[dict[str, Any]], segments: np.ndarray, nan_filled: int, *, patient_known: bool = True
    ) -> None:
        """A prepared record: one index row per segment (without segment_id/shard/offset)."""
        record_id = rows[0]["record_id"]
        if record_id in self.seen_records:
            self.add_rejection(
                rows[0], "duplicate_record", f"record id {record_id!r} is already in the store"
            )
            return
        with np.errstate(over="ignore"):
            stored = segments.astype(self.dtype, copy=False)
        if not np.isfinite(stored).all():
            # Readers take NaN/Inf in a shard for damage, so nothing non-finite is ever stored.
            peak = float(np.nanmax(np.abs(segments))) if np.isfinite(segments).any() else float("nan")
            self.add_rejection(
                rows[0],
                "out_of_range",
                f"values do not fit {self.dtype.name} (largest |value| {peak:.4g} mV)",
            )
            return
        self.seen_records.add(record_id)
        if self._buffered + len(rows) > self.shard_segments and self._buffered:
            self.commit()
        self._segments.append(stored)
        self._rows.extend(rows)
        self._pending_records += 1
        counts = self._pending_counts
        counts.records_seen += 1
        counts.records_kept += 1
        counts.segments += len(rows)
        counts.nan_filled_records += int(nan_filled > 0)
        counts.saturated_segments += sum(bool(r["saturated"]) for r in rows)
        counts.flat_lead_segments += sum(bool(r["flat_leads"]) for r in rows)
        counts.records_without_patient += int(not patient_known)
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
        sha = None
        if self._rows:
            shard = sum(1 for c in self.commits if c["shard"] is not None)
            array = np.concatenate(self._segments).astype(self.dtype, copy=False)
            atomic_write(self.path / shard_name(shard), _save_npy(array), store_write=True)
            sha = sha256_file(self.path / shard_name(shard))
            for offset, row in enumerate(self._rows):
                row["shard"] = shard
                row["offset"] = offset
            write_parquet(
                self.progress / f"index-{number:05d}.parquet", _rows_table(self._rows), store_write=True
            )
        if self._rejected:
            table = pa.Table.from_pylist(self._rejected, schema=REJECTED_SCHEMA)
            write_parquet(self.progress / f"rejected-{number:05d}.parquet", table, store_write=True)
        self.commits.append(
            {
                "number": number,
                "shard": shard,
                "segments": len(self._rows),
                "sha256": sha,
                "records": self._pending_records,
                "rejected": len(self._rejected),
                "counts": self._pending_counts.to_json(),
            }
        )
        self.records_done += self._pending_records
        self.counts.add(self._pending_counts)
        self._write_state()
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
    write_parquet(path / INDEX, index.cast(INDEX_SCHEMA), store_write=True)
    rejected = pa.concat_tables(rejected_parts) if rejected_parts else REJECTED_SCHEMA.empty_table()
    write_parquet(path / REJECTED, rejected.cast(REJECTED_SCHEMA), store_write=True)
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
    clean_leftovers(path)
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
    shard already moved is skipped, and the parts are deleted only after the manifest is written. The
    caller holds the locks of ``path`` and of every part."""
    stores = [SegmentStore.open(p) for p in parts]
    first = stores[0].manifest
    for store in stores[1:]:
        for key in ("fs", "seg_len", "dtype", "corpus", "parameters"):
            if store.manifest.get(key) != first.get(key):
                raise UserError(f"{store.path} was prepared with a different {key} than {stores[0].path}")
    (path / SHARDS).mkdir(parents=True, exist_ok=True)
    shards: list[dict[str, Any]] = []
    tables: list[pa.Table] = []
    seen: set[str] = set()
    counts = Counts()
    for store in stores:
        table = store.index
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
    rejected = [store.rejected for store in stores]
    fields = {
        **{k: first[k] for k in ("corpus", "fs", "seg_len", "dtype")},
        **manifest,
        "counts": counts.to_json(),
        "merged_from": [p.name for p in parts],
    }
    result = write_store_files(path, tables, rejected, shards, fields)
    for part in parts:
        remove_store(part)
        _remove_own_files(part / SHARDS)
        with contextlib.suppress(OSError):  # the part's lock (held by the caller) or files not ours remain
            part.rmdir()
    return result
