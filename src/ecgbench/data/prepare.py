"""``ecgbench data prepare``: read a corpus, process every record, and write a segment store.

Records are listed by the corpus reader in a fixed order, processed in worker processes (spawn-safe
top-level functions; workers send arrays back) and written by this process alone, in order, so the
store's commits and resumption stay simple. ``--shard i/n`` prepares the i-th of n contiguous blocks
of that order into ``OUT/part-i-of-n``; a later run without ``--shard`` joins the finished parts."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import re
import signal
import threading
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from itertools import islice
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np
from rich.markup import escape

from ecgbench.console import console, progress
from ecgbench.data.readers import READERS, RecordRef, RecordRejected, load_record, reader_class
from ecgbench.data.readers.base import check_sampling_rate, own_patient_id
from ecgbench.data.signal import process_record, segment_step, signal_parameters
from ecgbench.data.store import (
    SegmentStore,
    StoreLock,
    StoreWriter,
    clean_leftovers,
    merge_stores,
    remove_store,
    store_state,
)
from ecgbench.errors import UserError
from ecgbench.files import refuse_inside_store, sha256_file
from ecgbench.resources import SAMPLE_DIR
from ecgbench.settings import DataSettings

BATCH = 8  # records per task sent to a worker (fewer round trips than one record per task)


@dataclass
class Outcome:
    """What a worker sends back for one record."""

    ref: RecordRef
    rows: list[dict[str, Any]] | None = None
    segments: np.ndarray | None = None
    nan_filled: int = 0
    reason: str | None = None
    detail: str = ""
    patient_known: bool = True


@dataclass
class PrepareResult:
    store: SegmentStore
    skipped: bool  # the store was already complete with the same settings
    seconds: float
    records_processed: int  # records processed by this run (0 when skipped or merged)


def parse_shard(text: str | None) -> tuple[int, int] | None:
    """``"i/n"`` -> (i, n) with 0 <= i < n."""
    if text is None:
        return None
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
    if not match or not 0 <= int(match[1]) < int(match[2]):
        raise UserError(f"invalid value for --shard: {text!r} (expected i/n with 0 <= i < n, e.g. 0/4)")
    return int(match[1]), int(match[2])


# -------------------------------------------------------------------------------------------- workers


def prepare_record(ref: RecordRef, data: DataSettings) -> Outcome:
    """Load and process one record (runs in a worker). Any failure becomes a counted rejection."""
    reader = READERS[ref.reader]
    try:
        if ref.problem is not None:  # found in the corpus's metadata by discover()
            raise RecordRejected(*ref.problem)
        raw = load_record(ref)
        check_sampling_rate(raw.fs, ref.source_path)
        if reader.expected_fs and not any(abs(raw.fs - fs) < 1e-6 for fs in reader.expected_fs):
            allowed = ", ".join(f"{fs:g}" for fs in reader.expected_fs)
            raise RecordRejected("unexpected_fs", f"{raw.fs:g} Hz, the corpus is published at {allowed} Hz")
        processed = process_record(raw, data, reader.mains_hz)
    except RecordRejected as exc:
        return Outcome(ref, reason=exc.reason, detail=exc.detail)
    except Exception as exc:  # a reader bug or an unforeseen file problem must not stop the corpus
        detail = f"unexpected failure reading it ({type(exc).__name__}: {exc})"
        return Outcome(ref, reason="read_error", detail=detail)
    meta = dict(raw.meta)
    if processed.not_measured_leads:
        meta["not_measured_leads"] = processed.not_measured_leads
    meta_json = json.dumps(meta, sort_keys=True, default=str, ensure_ascii=False)
    rows = []
    for k, n_real in enumerate(processed.n_samples):
        rows.append(
            {
                "corpus": ref.corpus,
                "record_id": ref.record_id,
                # A record whose patient is unknown is its own patient, under an id no corpus uses.
                "patient_id": ref.patient_id if ref.patient_id is not None else own_patient_id(ref.record_id),
                "segment_index": k,
                "fs": data.target_fs,
                "n_samples": n_real,
                "labels": list(raw.labels),
                "report": ref.report,
                "report_original": ref.report_original,
                "age": raw.age,
                "sex": raw.sex,
                "source_path": ref.source_path,
                "flat_leads": processed.flat_leads[k],
                "saturated": processed.saturated[k],
                "nan_filled": processed.nan_filled,
                "meta": meta_json,
                "duration_s": n_real / data.target_fs,
                "start_s": k * segment_step(data) / data.target_fs,
                "source_fs": processed.source_fs,
                "source_sha256": processed.source_sha256,
            }
        )
    return Outcome(
        ref,
        rows=rows,
        segments=processed.segments,
        nan_filled=processed.nan_filled,
        patient_known=ref.patient_id is not None,
    )


def prepare_batch(refs: list[RecordRef], data: DataSettings) -> list[Outcome]:
    return [prepare_record(ref, data) for ref in refs]


PARENT_POLL_S = 0.5  # how often a worker checks that the process that started it is still there


def _worker_start(parent: int) -> None:
    """Runs first in every worker. Ctrl-C is the parent's to handle (it stops the pool), so a worker
    ignores SIGINT and prints no traceback of its own; and a worker whose parent died (kill -9) exits
    instead of waiting forever on a queue nobody writes to."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    threading.Thread(target=_exit_with_parent, args=(parent,), daemon=True, name="parent-watch").start()


def _exit_with_parent(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(PARENT_POLL_S)
    os._exit(1)


@contextmanager
def _sigint_ignored() -> Iterator[None]:
    """SIGINT ignored while worker processes are started: a child inherits the ignored disposition, so
    Python never installs its Ctrl-C handler there, not even while it is still importing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _outcomes(refs: list[RecordRef], data: DataSettings, workers: int) -> Iterator[Outcome]:
    """Outcomes in record order; with workers > 1 at most ``4 * workers`` batches are in flight, so
    memory stays bounded however large the corpus."""
    batches = (refs[i : i + BATCH] for i in range(0, len(refs), BATCH))
    if workers <= 1:
        for batch in batches:
            yield from prepare_batch(batch, data)
        return
    with _sigint_ignored():
        pool = ProcessPoolExecutor(
            max_workers=workers,
            mp_context=get_context("spawn"),
            initializer=_worker_start,
            initargs=(os.getpid(),),
        )
        # The first submissions start every worker (spawned children start on demand).
        pending: deque[Future[list[Outcome]]] = deque(
            pool.submit(prepare_batch, b, data) for b in islice(batches, 4 * workers)
        )
    try:
        while pending:
            done = pending.popleft().result()
            nxt = next(batches, None)
            if nxt is not None:
                pending.append(pool.submit(prepare_batch, nxt, data))
            yield from done
    finally:
        # On Ctrl-C or any error: drop the queued batches, let the running ones end, stop the workers.
        pool.shutdown(wait=True, cancel_futures=True)


# ------------------------------------------------------------------------------------------- manifest


def _versions() -> dict[str, str]:
    import h5py
    import pyarrow
    import scipy
    import wfdb

    from ecgbench import __version__

    return {
        "ecgbench": __version__,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "scipy": scipy.__version__,
        "wfdb": wfdb.__version__,
        "pyarrow": pyarrow.__version__,
        "h5py": h5py.__version__,
    }


def _records_digest(refs: list[RecordRef]) -> str:
    digest = hashlib.sha256()
    for ref in refs:
        digest.update(f"{ref.reader}\t{ref.record_id}\t{ref.source_path}\n".encode())
    return digest.hexdigest()


def _fingerprint(
    corpus: str, data: DataSettings, refs: list[RecordRef]
) -> dict[str, Any]:
    """What must match for a run to resume or to count as already done."""
    return {
        "corpus": corpus,
        "parameters": signal_parameters(data),
        "dtype": data.dtype,
        "shard_segments": data.shard_segments,
        # Only the readers of PTB-XL records look at it; elsewhere it must not block a resume.
        "ptbxl_source": data.ptbxl_source if corpus in ("ptb", "sample") else None,
        "records": len(refs),
        "records_sha256": _records_digest(refs),
    }


def _manifest(corpus: str, root: Path, reader: Any, data: DataSettings) -> dict[str, Any]:
    notes = [
        "signals: canonical leads I II III aVR aVL aVF V1-V6 in mV; NaN/Inf gaps interpolated up to "
        f"{data.nan_max_gap} s; resampled with scipy.signal.resample_poly (anti-aliased polyphase) to "
        f"{data.target_fs} Hz; filters zero-phase (sosfiltfilt, SOS form) at the target rate",
    ]
    if corpus == "code15":
        notes.append(
            "CODE-15% amplitudes taken as mV (the corpus documentation is ambiguous about the scale)"
        )
    return {
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "parameters": signal_parameters(data),
        "notes": notes,
        "versions": _versions(),
        "sources": {
            "root": str(root),
            "metadata_sha256": {
                path.relative_to(root).as_posix() if path.is_relative_to(root) else str(path): sha256_file(
                    path
                )
                for path in reader.metadata_files()
                if path.is_file()
            },
        },
    }


# --------------------------------------------------------------------------------------------- driver


def prepare(
    corpus: str,
    root: Path | None,
    out: Path,
    data: DataSettings,
    *,
    shard: tuple[int, int] | None = None,
    overwrite: bool = False,
    limit: int | None = None,
) -> PrepareResult:
    started = time.perf_counter()
    reader_type = reader_class(corpus)
    if root is None:
        if corpus != "sample":
            raise UserError(f"--root is required for corpus {corpus!r} (the folder of the raw corpus)")
        root = SAMPLE_DIR
    root = Path(root).resolve()
    reader = reader_type(root, ptbxl_source=data.ptbxl_source)
    refs = reader.discover()
    if limit is not None:
        refs = refs[:limit]
    if not refs:
        raise UserError(f"no records found for corpus {corpus!r} under {root}")
    full_fingerprint = _fingerprint(corpus, data, refs)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file, not a folder for a segment store")
    # Never inside another store (it would be taken for that store's files), nor in or around the corpus.
    refuse_inside_store(out, "--out")
    if out.resolve().is_relative_to(root) or root.is_relative_to(out.resolve()):
        raise UserError(f"--out {out} and the corpus {root} overlap; choose a folder outside the corpus")

    if shard is not None:
        if store_state(out) == "complete":  # a part would land inside the finished (joined) store
            raise UserError(
                f"--out {out} already holds a finished store; a --shard job has nothing to add to it"
            )
        i, n = shard
        todo = refs[i * len(refs) // n : (i + 1) * len(refs) // n]
        target = out / f"part-{i}-of-{n}"
        fingerprint = {**_fingerprint(corpus, data, todo), "shard": [i, n]}
        with StoreLock(target):
            return _prepare_into(target, corpus, root, reader, data, todo, fingerprint, overwrite, started)
    # One writer per --out: a second run (or one with other settings) fails at once, naming the first.
    with StoreLock(out):
        parts = sorted(p for p in out.glob("part-*-of-*") if p.is_dir())
        if parts and overwrite:  # start over: the parts are replaced by one run over every record
            for part in parts:
                with StoreLock(part):
                    remove_store(part)
                _remove_empty_folder(part)
            parts = []
        if parts and store_state(out) != "complete":
            return _merge_parts(
                out, parts, corpus, root, reader, data, refs, full_fingerprint, started
            )
        return _prepare_into(out, corpus, root, reader, data, refs, full_fingerprint, overwrite, started)


def _prepare_into(
    target: Path,
    corpus: str,
    root: Path,
    reader: Any,
    data: DataSettings,
    todo: list[RecordRef],
    fingerprint: dict[str, Any],
    overwrite: bool,
    started: float,
) -> PrepareResult:
    """Prepare ``todo`` into ``target`` (whose lock the caller holds): resume, skip or start afresh."""
    state = store_state(target)
    if state == "foreign":
        raise UserError(
            f"--out {target} is not empty and is not a segment store; choose an empty folder "
            "(nothing in it was changed)"
        )
    if overwrite and state != "empty":
        remove_store(target)
    elif state == "complete":
        existing = SegmentStore.open(target)
        if existing.manifest.get("fingerprint") != fingerprint:
            raise UserError(
                f"{target} already holds a store prepared with other settings or records; "
                "choose another --out or pass --overwrite"
            )
        try:
            existing.check_files()
        except UserError as exc:
            raise UserError(f"{target} is damaged ({exc}); pass --overwrite to prepare it again") from None
        clean_leftovers(target)  # a .progress/ or temporary file an interrupted finish left behind
        for name in existing.manifest.get("merged_from", []):
            if re.fullmatch(r"part-\d+-of-\d+", name) and (target / name).is_dir():
                with StoreLock(target / name):
                    remove_store(target / name)  # a part an interrupted join had not removed yet
                _remove_empty_folder(target / name)
        seconds = time.perf_counter() - started
        return PrepareResult(existing, skipped=True, seconds=seconds, records_processed=0)

    writer = StoreWriter(
        target,
        corpus=reader.corpus,
        fs=data.target_fs,
        seg_len=data.seg_len,
        dtype=data.dtype,
        shard_segments=data.shard_segments,
        fingerprint=fingerprint,
    )
    for problem in writer.redone:
        console.print(
            f"[yellow]warning:[/yellow] {escape(f'{target}: {problem}')}; preparing it again", soft_wrap=True
        )
    remaining = todo[writer.records_done :]
    if writer.records_done:
        console.print(f"resuming {target}: {writer.records_done} of {len(todo)} records already done")
    with progress() as bar:
        task = bar.add_task(f"prepare {corpus}", total=len(todo), completed=writer.records_done)
        for outcome in _outcomes(remaining, data, data.workers):
            if outcome.rows:
                writer.add_record(
                    outcome.rows,
                    outcome.segments,  # type: ignore[arg-type]
                    outcome.nan_filled,
                    patient_known=outcome.patient_known,
                )
            else:
                record = {"corpus": outcome.ref.corpus, "record_id": outcome.ref.record_id}
                record["source_path"] = outcome.ref.source_path
                writer.add_rejection(record, outcome.reason or "read_error", outcome.detail)
            bar.advance(task)
    store = writer.finish(_manifest(corpus, root, reader, data))
    return PrepareResult(store, False, time.perf_counter() - started, len(remaining))


def _remove_empty_folder(path: Path) -> None:
    with contextlib.suppress(OSError):  # not empty: what is left is not ours
        path.rmdir()


def _merge_parts(
    out: Path,
    parts: list[Path],
    corpus: str,
    root: Path,
    reader: Any,
    data: DataSettings,
    refs: list[RecordRef],
    fingerprint: dict[str, Any],
    started: float,
) -> PrepareResult:
    """Join the finished ``--shard i/n`` parts (all n of them, with matching record blocks)."""
    counts = {int(m[2]) for p in parts if (m := re.fullmatch(r"part-(\d+)-of-(\d+)", p.name))}
    if len(counts) != 1:
        raise UserError(f"{out} holds parts of different --shard splits: {', '.join(p.name for p in parts)}")
    n = counts.pop()
    expected = [out / f"part-{i}-of-{n}" for i in range(n)]
    missing = [p.name for p in expected if store_state(p) != "complete"]
    if missing:
        raise UserError(
            f"cannot join {out}: these --shard parts are missing or unfinished: {', '.join(missing)}"
        )
    for i, part in enumerate(expected):
        block = refs[i * len(refs) // n : (i + 1) * len(refs) // n]
        wanted = {**_fingerprint(corpus, data, block), "shard": [i, n]}
        if SegmentStore.open(part).manifest.get("fingerprint") != wanted:
            raise UserError(f"{part} was prepared with other settings or another record list than this run")
    manifest = {**_manifest(corpus, root, reader, data), "fingerprint": fingerprint}
    with ExitStack() as locks:
        for part in expected:  # no --shard job may still be writing a part that is joined
            locks.enter_context(StoreLock(part))
        store = merge_stores(out, expected, manifest)
    for part in expected:
        _remove_empty_folder(part)
    return PrepareResult(store, False, time.perf_counter() - started, 0)
