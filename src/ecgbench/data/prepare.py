"""``ecgbench data prepare``: read a corpus, process every record, and write a segment store.

Records are listed by the corpus reader in a fixed order, processed in worker processes (spawn-safe
top-level functions; workers send arrays back) and written by this process alone, in order, so the
store's commits and resumption stay simple. ``--shard i/n`` prepares the i-th of n contiguous blocks
of that order into ``OUT/part-i-of-n``; a later run without ``--shard`` joins the finished parts."""

from __future__ import annotations

import hashlib
import json
import platform
import re
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from itertools import islice
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np

from ecgbench.console import console, progress
from ecgbench.data.readers import READERS, RecordRef, RecordRejected, load_record, reader_class
from ecgbench.data.signal import SignalParams, process_record
from ecgbench.data.store import (
    SegmentStore,
    StoreWriter,
    merge_stores,
    remove_store,
    store_state,
)
from ecgbench.errors import UserError
from ecgbench.files import sha256_file
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


def prepare_record(ref: RecordRef, params: SignalParams) -> Outcome:
    """Load and process one record (runs in a worker). Any failure becomes a counted rejection."""
    reader = READERS[ref.reader]
    try:
        raw = load_record(ref)
        if reader.expected_fs and not any(abs(raw.fs - fs) < 1e-6 for fs in reader.expected_fs):
            allowed = ", ".join(f"{fs:g}" for fs in reader.expected_fs)
            raise RecordRejected("unexpected_fs", f"{raw.fs:g} Hz, the corpus is published at {allowed} Hz")
        processed = process_record(raw, params, reader.mains_hz)
    except RecordRejected as exc:
        return Outcome(ref, reason=exc.reason, detail=exc.detail)
    except Exception as exc:  # a reader bug or an unforeseen file problem must not stop the corpus
        return Outcome(ref, reason="read_error", detail=f"{type(exc).__name__}: {exc}")
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
                "patient_id": ref.patient_id or ref.record_id,
                "segment_index": k,
                "fs": params.target_fs,
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
                "duration_s": n_real / params.target_fs,
                "start_s": k * params.step / params.target_fs,
                "source_fs": processed.source_fs,
                "source_sha256": processed.source_sha256,
            }
        )
    return Outcome(ref, rows=rows, segments=processed.segments, nan_filled=processed.nan_filled)


def prepare_batch(refs: list[RecordRef], params: SignalParams) -> list[Outcome]:
    return [prepare_record(ref, params) for ref in refs]


def _outcomes(refs: list[RecordRef], params: SignalParams, workers: int) -> Iterator[Outcome]:
    """Outcomes in record order; with workers > 1 at most ``4 * workers`` batches are in flight, so
    memory stays bounded however large the corpus."""
    batches = (refs[i : i + BATCH] for i in range(0, len(refs), BATCH))
    if workers <= 1:
        for batch in batches:
            yield from prepare_batch(batch, params)
        return
    with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn")) as pool:
        pending: deque[Future[list[Outcome]]] = deque(
            pool.submit(prepare_batch, b, params) for b in islice(batches, 4 * workers)
        )
        try:
            while pending:
                done = pending.popleft().result()
                nxt = next(batches, None)
                if nxt is not None:
                    pending.append(pool.submit(prepare_batch, nxt, params))
                yield from done
        finally:
            for future in pending:
                future.cancel()


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
    corpus: str, params: SignalParams, data: DataSettings, refs: list[RecordRef]
) -> dict[str, Any]:
    """What must match for a run to resume or to count as already done."""
    return {
        "corpus": corpus,
        "parameters": asdict(params),
        "dtype": data.dtype,
        "shard_segments": data.shard_segments,
        # Only the readers of PTB-XL records look at it; elsewhere it must not block a resume.
        "ptbxl_source": data.ptbxl_source if corpus in ("ptb", "sample") else None,
        "records": len(refs),
        "records_sha256": _records_digest(refs),
    }


def _manifest(corpus: str, root: Path, reader: Any, params: SignalParams) -> dict[str, Any]:
    notes = [
        "signals: canonical leads I II III aVR aVL aVF V1-V6 in mV; NaN/Inf gaps interpolated up to "
        f"{params.nan_max_gap} s; resampled with scipy.signal.resample_poly (anti-aliased polyphase) to "
        f"{params.target_fs} Hz; filters zero-phase (sosfiltfilt, SOS form) at the target rate",
    ]
    if corpus == "code15":
        notes.append(
            "CODE-15% amplitudes taken as mV (the corpus documentation is ambiguous about the scale)"
        )
    return {
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "parameters": asdict(params),
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
    params = SignalParams.from_settings(data)
    full_fingerprint = _fingerprint(corpus, params, data, refs)
    out = Path(out)

    if shard is None:
        parts = sorted(out.glob("part-*-of-*")) if out.is_dir() else []
        if parts and overwrite:  # start over: the parts are replaced by one run over every record
            for part in parts:
                remove_store(part)
            parts = []
        if parts and store_state(out) != "complete":
            return _merge_parts(
                out, parts, corpus, root, reader, params, data, refs, full_fingerprint, started
            )
        target, todo, fingerprint = out, refs, full_fingerprint
    else:
        i, n = shard
        todo = refs[i * len(refs) // n : (i + 1) * len(refs) // n]
        target = out / f"part-{i}-of-{n}"
        fingerprint = {**_fingerprint(corpus, params, data, todo), "shard": [i, n]}

    state = store_state(target)
    if overwrite and state != "empty":
        remove_store(target)
    elif state == "complete":
        existing = SegmentStore.open(target)
        if existing.manifest.get("fingerprint") != fingerprint:
            raise UserError(
                f"{target} already holds a store prepared with other settings or records; "
                "choose another --out or pass --overwrite"
            )
        return PrepareResult(
            existing, skipped=True, seconds=time.perf_counter() - started, records_processed=0
        )
    elif state == "foreign":
        raise UserError(f"--out {target} is not empty and is not a segment store; choose an empty folder")

    writer = StoreWriter(
        target,
        corpus=reader_type.corpus,
        fs=data.target_fs,
        seg_len=data.seg_len,
        dtype=data.dtype,
        shard_segments=data.shard_segments,
        fingerprint=fingerprint,
    )
    remaining = todo[writer.records_done :]
    if writer.records_done:
        console.print(f"resuming {target}: {writer.records_done} of {len(todo)} records already done")
    with progress() as bar:
        task = bar.add_task(f"prepare {corpus}", total=len(todo), completed=writer.records_done)
        for outcome in _outcomes(remaining, params, data.workers):
            if outcome.rows:
                writer.add_record(outcome.rows, outcome.segments, outcome.nan_filled)  # type: ignore[arg-type]
            else:
                record = {"corpus": outcome.ref.corpus, "record_id": outcome.ref.record_id}
                record["source_path"] = outcome.ref.source_path
                writer.add_rejection(record, outcome.reason or "read_error", outcome.detail)
            bar.advance(task)
    store = writer.finish(_manifest(corpus, root, reader, params))
    return PrepareResult(store, False, time.perf_counter() - started, len(remaining))


def _merge_parts(
    out: Path,
    parts: list[Path],
    corpus: str,
    root: Path,
    reader: Any,
    params: SignalParams,
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
        wanted = {**_fingerprint(corpus, params, data, block), "shard": [i, n]}
        if SegmentStore.open(part).manifest.get("fingerprint") != wanted:
            raise UserError(f"{part} was prepared with other settings or another record list than this run")
    manifest = {**_manifest(corpus, root, reader, params), "fingerprint": fingerprint}
    store = merge_stores(out, expected, manifest)
    return PrepareResult(store, False, time.perf_counter() - started, 0)
