"""A retrieval index over a segment store: faiss vectors plus a Parquet table of what each vector is.

Layout::

    INDEX/manifest.json     format, the store (path, manifest SHA-256), splits and excluded splits,
                            vectors (features: version and names; or embeddings: file and SHA-256),
                            standardisation, faiss type and parameters, rows, recall@10 (approximate)
    INDEX/index.faiss       faiss's own binary format (``faiss.write_index``; no pickle)
    INDEX/records.parquet   row i describes vector i: segment_id, corpus, record_id, patient_id, split,
                            labels, report

Vectors are standardised per column (mean 0, standard deviation 1 over the indexed rows) and searched by
L2 distance: exact (``IndexFlatL2``) up to ``exact_max`` rows, else HNSW (or IVF-Flat on request), whose
recall@10 against exact search on a sample of the indexed rows is measured at build time and recorded.

Only segments that :func:`ecgbench.rag.leakage.retrievable` allows enter the index (with ``--splits``:
the evaluation splits stay out), and every search filters its neighbours through the same function, so a
query never sees its own record, its patient or an excluded split.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa

from ecgbench.errors import CorruptFileError, UserError
from ecgbench.files import check_output, read_json_document, read_parquet, sha256_file, write_parquet
from ecgbench.rag.leakage import patient_key, record_key, retrievable

INDEX_FORMAT = "ecgbench-rag-index"
INDEX_VERSION = 1
MANIFEST = "manifest.json"
FAISS_FILE = "index.faiss"
RECORDS = "records.parquet"
EXACT_MAX = 50_000  # rows up to which the index is exact: a flat search of 50k x 180 floats is ~5 ms
RECALL_SAMPLE = 500  # queries of the build-time recall check
SPLITS_DEFAULT = ("val", "test")

IndexKind = Literal["auto", "flat", "hnsw", "ivf"]
VectorKind = Literal["features", "embeddings"]

RECORDS_SCHEMA = pa.schema(
    [
        ("segment_id", pa.int64()),
        ("corpus", pa.string()),
        ("record_id", pa.string()),
        ("patient_id", pa.string()),
        ("split", pa.string()),
        ("labels", pa.list_(pa.string())),
        ("report", pa.string()),
    ]
)


def _faiss() -> Any:
    import faiss

    return faiss


# ------------------------------------------------------------------------------------------ vectors


def _store_splits(index: pa.Table, splits_path: Path | None) -> np.ndarray:
    """The split of each store segment by its record (None: no splits file, or a record it lacks)."""
    out = np.full(index.num_rows, None, dtype=object)
    if splits_path is None:
        return out
    from ecgbench.data.splits import read_record_splits, record_split_lookup

    lookup = record_split_lookup(read_record_splits(splits_path))
    keys = zip(index.column("corpus").to_pylist(), index.column("record_id").to_pylist(), strict=True)
    for i, key in enumerate(keys):
        placed = lookup.get(key)
        out[i] = None if placed is None else placed[1]
    return out


def segment_keys(index: pa.Table) -> tuple[np.ndarray, np.ndarray]:
    """Record and patient keys (see :mod:`ecgbench.rag.leakage`) of every row of a store index."""
    corpus, record, patient = (index.column(n).to_pylist() for n in ("corpus", "record_id", "patient_id"))
    records = np.array([record_key(c, r) for c, r in zip(corpus, record, strict=True)], dtype=object)
    patients = np.array(
        [patient_key(c, p, r) for c, p, r in zip(corpus, patient, record, strict=True)], dtype=object
    )
    return records, patients


def feature_vectors(store: Any, ids: np.ndarray, progress: Callable[[int], None] | None = None) -> np.ndarray:
    """:func:`ecgbench.rag.features.ecg_features` of the store's segments ``ids``, read in blocks."""
    from ecgbench.rag.features import CHUNK, FEATURE_NAMES, ecg_features

    out = np.empty((len(ids), len(store.leads) * len(FEATURE_NAMES)), dtype=np.float32)
    block = CHUNK * 4
    for start in range(0, len(ids), block):
        chunk = ids[start : start + block]
        out[start : start + len(chunk)] = ecg_features(store.read_many(chunk), store.fs)
        if progress is not None:
            progress(len(chunk))
    return out


def read_embeddings(path: Path, index: pa.Table, ids: np.ndarray) -> np.ndarray:
    """Rows of an ``encoder embed`` file for the store segments ``ids``, checked against the store's
    records (an embeddings file of another store names other records)."""
    table = read_parquet(path, "embeddings file")
    missing = [c for c in ("segment_id", "corpus", "record_id", "embedding") if c not in table.column_names]
    if missing or not pa.types.is_fixed_size_list(table.schema.field("embedding").type):
        raise UserError(
            f"{path} is not an `ecgbench encoder embed` file (segment_id, corpus, record_id, embedding)"
        )
    segment = table.column("segment_id").to_numpy()
    where = np.full(index.num_rows, -1, dtype=np.int64)
    inside = (segment >= 0) & (segment < index.num_rows)
    where[segment[inside]] = np.flatnonzero(inside)
    rows = where[ids]
    if (rows < 0).any():
        first = int(ids[np.flatnonzero(rows < 0)[0]])
        raise UserError(
            f"{path} has no embedding of segment {first} ({int((rows < 0).sum())} of {len(ids)} missing): "
            "run `ecgbench encoder embed` on the whole store"
        )
    mine = index.take(pa.array(ids)).select(["corpus", "record_id"])
    theirs = table.take(pa.array(rows)).select(["corpus", "record_id"])
    if not mine.equals(theirs):
        raise UserError(f"{path} was embedded from another store (its segment ids name other records)")
    embedding = table.column("embedding").combine_chunks()
    dim = embedding.type.list_size
    values = embedding.values.to_numpy(zero_copy_only=False).reshape(-1, dim)
    return np.ascontiguousarray(values[rows], dtype=np.float32)


# ------------------------------------------------------------------------------------------ building


@dataclass
class BuildResult:
    out: Path
    rows: int
    dim: int
    kind: str
    excluded: dict[str, int]
    recall_at_10: float | None
    seconds: float


def choose_kind(kind: IndexKind, rows: int, exact_max: int) -> str:
    if kind != "auto":
        return kind
    return "flat" if rows <= exact_max else "hnsw"


def make_faiss(vectors: np.ndarray, kind: str, *, seed: int = 0) -> tuple[Any, dict[str, Any]]:
    """A faiss L2 index of ``kind`` holding ``vectors``, and its parameters (for the manifest)."""
    faiss = _faiss()
    n, dim = vectors.shape
    if kind == "flat":
        index = faiss.IndexFlatL2(dim)
        params: dict[str, Any] = {}
    elif kind == "hnsw":
        index = faiss.IndexHNSWFlat(dim, 32)
        index.hnsw.efConstruction = 80
        index.hnsw.efSearch = 128
        params = {"M": 32, "efConstruction": 80, "efSearch": 128}
    elif kind == "ivf":
        nlist = max(1, min(int(4 * math.sqrt(n)), n // 39 or 1))  # faiss wants >= 39 training points per list
        quantizer = faiss.IndexFlatL2(dim)
        index = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_L2)
        sample = vectors[np.random.default_rng(seed).permutation(n)[: max(nlist * 256, 10_000)]]
        index.train(sample)
        index.nprobe = max(1, min(nlist, 16))
        params = {"nlist": nlist, "nprobe": int(index.nprobe)}
    else:
        raise UserError(f"invalid index type {kind!r} (allowed: auto, flat, hnsw, ivf)")
    index.add(vectors)
    return index, params


def recall_at_10(index: Any, vectors: np.ndarray, *, sample: int = RECALL_SAMPLE, seed: int = 0) -> float:
    """Mean share of the exact 10 nearest neighbours that ``index`` returns, over ``sample`` indexed rows
    used as queries (each query's own row is left out of both lists)."""
    faiss = _faiss()
    n = len(vectors)
    k = min(10, n - 1)
    if k < 1:
        return 1.0
    rows = np.random.default_rng(seed).permutation(n)[:sample]
    exact = faiss.IndexFlatL2(vectors.shape[1])
    exact.add(vectors)
    _, truth = exact.search(vectors[rows], k + 1)
    _, found = index.search(vectors[rows], k + 1)
    hits = 0
    for row, t, f in zip(rows, truth, found, strict=True):
        hits += len(set(t[t != row][:k].tolist()) & set(f[f != row][:k].tolist()))
    return hits / (k * len(rows))


def check_new_folder(out: Path) -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(
            f"--out {out} already exists and is not empty; nothing was overwritten: choose a new folder"
        )


def build_index(
    store_path: Path,
    out: Path,
    *,
    splits_path: Path | None = None,
    exclude_splits: Sequence[str] = SPLITS_DEFAULT,
    vectors: VectorKind = "features",
    embeddings: Path | None = None,
    kind: IndexKind = "auto",
    exact_max: int = EXACT_MAX,
    seed: int = 0,
    progress: Callable[[int], None] | None = None,
) -> BuildResult:
    """Index the retrievable segments of a store into the new folder ``out`` (see the module notes)."""
    from ecgbench.data.store import MANIFEST as STORE_MANIFEST
    from ecgbench.data.store import SegmentStore
    from ecgbench.rag.features import FEATURE_NAMES, FEATURES_VERSION, feature_names

    started = time.perf_counter()
    out = Path(out)
    check_output(out, "--out", [store_path, splits_path, embeddings])
    check_new_folder(out)
    if (vectors == "embeddings") != (embeddings is not None):
        raise UserError("--vectors embeddings needs --embeddings FILE (from `encoder embed`), and only it")
    bad = [s for s in exclude_splits if s not in ("train", "val", "test")]
    if bad:
        raise UserError(f"invalid --exclude-split {bad[0]!r} (allowed: train, val, test)")
    store = SegmentStore.open(store_path)
    index = store.index
    if index.num_rows == 0:
        raise UserError(f"{store_path} holds no segments to index")
    excluded = tuple(exclude_splits) if splits_path is not None else ()
    split = _store_splits(index, splits_path)
    records, patients = segment_keys(index)
    keep = retrievable(records, patients, split, exclude_splits=excluded)
    ids = np.flatnonzero(keep).astype(np.int64)
    counts = {name: int(((split == name) & ~keep).sum()) for name in excluded}
    unplaced = int(np.equal(split, None).sum()) if excluded else 0
    if unplaced:
        counts["not in the splits file"] = unplaced
    if len(ids) == 0:
        raise UserError(
            f"no segment of {store_path} is left to index (excluded: {counts}); nothing was written"
        )

    if vectors == "features":
        raw = feature_vectors(store, ids, progress)
        vector_info: dict[str, Any] = {
            "kind": "features",
            "features_version": FEATURES_VERSION,
            "per_lead": list(FEATURE_NAMES),
            "names": feature_names(store.leads),
            "fs": store.fs,
            "seg_len": store.seg_len,
        }
    else:
        assert embeddings is not None
        raw = read_embeddings(Path(embeddings), index, ids)
        if progress is not None:
            progress(len(ids))
        vector_info = {
            "kind": "embeddings",
            "file": str(Path(embeddings).resolve()),
            "sha256": sha256_file(Path(embeddings)),
        }
    mean = raw.mean(axis=0, dtype=np.float64)
    std = raw.std(axis=0, dtype=np.float64)
    std[~(std > 1e-6)] = 1.0  # a constant column carries no distance
    standardised = np.ascontiguousarray((raw - mean) / std, dtype=np.float32)
    chosen = choose_kind(kind, len(ids), exact_max)
    faiss_index, params = make_faiss(standardised, chosen, seed=seed)
    recall = None if chosen == "flat" else recall_at_10(faiss_index, standardised, seed=seed)

    table = index.take(pa.array(ids)).select(
        ["segment_id", "corpus", "record_id", "patient_id", "labels", "report"]
    )
    table = table.add_column(4, "split", pa.array(split[ids].tolist(), pa.string())).cast(RECORDS_SCHEMA)
    manifest = {
        "format": INDEX_FORMAT,
        "version": INDEX_VERSION,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "store": {
            "path": str(Path(store_path).resolve()),
            "manifest_sha256": sha256_file(Path(store_path) / STORE_MANIFEST),
            "corpus": store.corpus,
            "segments": len(store),
        },
        "splits": None
        if splits_path is None
        else {
            "path": str(Path(splits_path).resolve()),
            "sha256": sha256_file(Path(splits_path)),
            "excluded": list(excluded),
        },
        "excluded_segments": counts,
        "vectors": vector_info,
        "dim": int(standardised.shape[1]),
        "rows": len(ids),
        "standardise": {"mean": mean.tolist(), "std": std.tolist()},
        "faiss": {"type": chosen, "metric": "L2", **params, "faiss_version": _faiss().__version__},
        "recall_at_10": None
        if recall is None
        else {"value": recall, "queries": min(RECALL_SAMPLE, len(ids))},
    }
    _write_folder(out, manifest, table, faiss_index)
    return BuildResult(
        out=out,
        rows=len(ids),
        dim=int(standardised.shape[1]),
        kind=chosen,
        excluded=counts,
        recall_at_10=recall,
        seconds=time.perf_counter() - started,
    )


def _write_folder(out: Path, manifest: dict[str, Any], table: pa.Table, faiss_index: Any) -> None:
    """Write everything into a temporary sibling folder, then rename it to ``out``: an interrupted build
    leaves no half index under the final name."""
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    try:
        _faiss().write_index(faiss_index, str(tmp / FAISS_FILE))
        write_parquet(tmp / RECORDS, table)
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
        if out.is_dir():  # the empty folder the user named (checked above)
            out.rmdir()
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


# ------------------------------------------------------------------------------------------ reading


@dataclass(frozen=True)
class Hit:
    """One retrieved neighbour."""

    segment_id: int
    corpus: str
    record_id: str
    patient_id: str
    split: str | None
    distance: float
    labels: list[str] = field(default_factory=list)
    report: str | None = None


class RagIndex:
    """A built index, opened for search. Picklable: the faiss index is read again after unpickling."""

    def __init__(self, path: Path, manifest: dict[str, Any]):
        self.path = Path(path)
        self.manifest = manifest
        self.manifest_sha256 = sha256_file(self.path / MANIFEST)
        self.mean = np.asarray(manifest["standardise"]["mean"], dtype=np.float64)
        self.std = np.asarray(manifest["standardise"]["std"], dtype=np.float64)
        self.rows = int(manifest["rows"])
        self.dim = int(manifest["dim"])

    @classmethod
    def open(cls, path: str | Path) -> RagIndex:
        path = Path(path)
        if not path.is_dir():
            raise UserError(f"RAG index not found: {path} (build one with `ecgbench data rag build`)")
        if not (path / MANIFEST).is_file():
            raise UserError(
                f"{path} is not a RAG index (no {MANIFEST}); build one with `ecgbench data rag build`"
            )
        manifest = read_json_document(
            path / MANIFEST, fmt=INDEX_FORMAT, what="an ecgbench RAG index", version=INDEX_VERSION
        )
        try:
            opened = cls(path, manifest)
        except (KeyError, TypeError, ValueError) as exc:
            raise CorruptFileError(f"{path / MANIFEST} lacks a required field: {exc}") from None
        if opened.rows == 0:
            raise UserError(f"the RAG index {path} is empty (no segment to retrieve); build it again")
        for name in (FAISS_FILE, RECORDS):
            if not (path / name).is_file():
                raise CorruptFileError(f"the RAG index {path} lacks {name}: build it again")
        if opened.records.num_rows != opened.rows:
            raise CorruptFileError(
                f"{path / RECORDS} has {opened.records.num_rows} rows, the manifest {opened.rows}"
            )
        return opened

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        for cached in ("faiss_index", "records", "_keys"):
            state.pop(cached, None)  # faiss objects do not pickle; read again where used
        return state

    @cached_property
    def faiss_index(self) -> Any:
        try:
            index = _faiss().read_index(str(self.path / FAISS_FILE))
        except RuntimeError as exc:
            raise CorruptFileError(f"{self.path / FAISS_FILE} is not a readable faiss index: {exc}") from None
        if index.ntotal != self.rows or index.d != self.dim:
            raise CorruptFileError(
                f"{self.path / FAISS_FILE} holds {index.ntotal} x {index.d} vectors, "
                f"the manifest {self.rows} x {self.dim}"
            )
        if index.ntotal == 0:
            raise UserError(f"the RAG index {self.path} is empty (no segment to retrieve); build it again")
        return index

    @cached_property
    def records(self) -> pa.Table:
        table = read_parquet(self.path / RECORDS, "RAG index records")
        from ecgbench.data.store import check_schema

        return check_schema(table, RECORDS_SCHEMA, self.path / RECORDS, "a RAG index records table")

    @cached_property
    def _keys(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        records, patients = segment_keys(self.records)
        return records, patients, np.array(self.records.column("split").to_pylist(), dtype=object)

    @property
    def vector_kind(self) -> str:
        return str(self.manifest["vectors"]["kind"])

    @property
    def excluded_splits(self) -> tuple[str, ...]:
        splits = self.manifest.get("splits")
        return tuple(splits["excluded"]) if splits else ()

    # ------------------------------------------------------------------ checks

    def check_store(self, store_path: Path) -> None:
        """Refuse a store other than the one the index was built from (its manifest SHA-256 differs)."""
        from ecgbench.data.store import MANIFEST as STORE_MANIFEST

        found = (
            sha256_file(Path(store_path) / STORE_MANIFEST)
            if (Path(store_path) / STORE_MANIFEST).is_file()
            else None
        )
        expected = self.manifest["store"]["manifest_sha256"]
        if found != expected:
            raise UserError(
                f"the RAG index {self.path} was built from another store ({self.manifest['store']['path']}, "
                f"manifest sha256 {expected[:12]}), not {store_path}: build an index of this store"
            )

    def check_signals(self, fs: int, seg_len: int) -> None:
        vectors = self.manifest["vectors"]
        if vectors["kind"] != "features":
            return
        from ecgbench.rag.features import FEATURES_VERSION

        if vectors.get("features_version") != FEATURES_VERSION:
            raise UserError(
                f"the RAG index {self.path} holds features of version {vectors.get('features_version')}; "
                f"this ecgbench computes version {FEATURES_VERSION}: build the index again"
            )
        if (int(vectors["fs"]), int(vectors["seg_len"])) != (int(fs), int(seg_len)):
            raise UserError(
                f"the RAG index {self.path} holds features of {vectors['seg_len']}-sample segments at "
                f"{vectors['fs']} Hz; these ECGs are {seg_len} samples at {fs} Hz"
            )

    # ------------------------------------------------------------------ search

    def standardise(self, raw: np.ndarray) -> np.ndarray:
        raw = np.asarray(raw, dtype=np.float64)
        if raw.ndim != 2 or raw.shape[1] != self.dim:
            raise UserError(
                f"query vectors have shape {raw.shape}; this index holds {self.dim}-dimensional vectors"
            )
        return np.ascontiguousarray((raw - self.mean) / self.std, dtype=np.float32)

    def query_vectors(self, signals: np.ndarray, fs: float) -> np.ndarray:
        """Standardised feature vectors of ECGs (N, 12, L) for a feature index."""
        if self.vector_kind != "features":
            raise UserError(
                f"the RAG index {self.path} holds encoder embeddings: query it by store segments "
                "(`data rag query --store ... --record ...`), not by raw ECGs"
            )
        from ecgbench.rag.features import ecg_features

        signals = np.asarray(signals, dtype=np.float32)
        self.check_signals(int(fs), signals.shape[-1])
        return self.standardise(ecg_features(signals, fs))

    def search(
        self,
        vectors: np.ndarray,
        query_records: Sequence[Sequence[str]],
        query_patients: Sequence[Sequence[str]],
        k: int,
        *,
        exclude_splits: Collection[str] | None = None,
        splits_override: np.ndarray | None = None,
    ) -> list[list[Hit]]:
        """Top-``k`` retrievable neighbours of each standardised query vector, one per record (the nearest
        segment of a record stands for it: a report is per record).

        ``query_records``/``query_patients`` (record/patient keys of :mod:`ecgbench.rag.leakage`, one list
        per query) are what the query may not see. ``exclude_splits`` adds splits to those the index was
        built without; ``splits_override`` gives the split of each index row (from a query-time splits file).

        faiss knows nothing of the rule, so it is asked for more than ``k`` (own record, own patient and
        several segments per record take places) and asked again for four times as many, up to the whole
        index, while a query has fewer than ``k`` allowed records."""
        if k < 1:
            raise UserError("k must be at least 1")
        queries = np.asarray(vectors, dtype=np.float32)
        if len(queries) != len(query_records) or len(queries) != len(query_patients):
            raise ValueError("one list of record and patient keys per query")
        excluded = set(self.excluded_splits) | set(exclude_splits or ())
        records, patients, splits = self._keys
        if splits_override is not None:
            splits = splits_override
        width = max([1, *(len(r) for r in query_records)])
        own_records = np.full((len(queries), width), None, dtype=object)
        own_patients = np.full((len(queries), width), None, dtype=object)
        for q, (recs, pats) in enumerate(zip(query_records, query_patients, strict=True)):
            own_records[q, : len(recs)] = list(recs)
            own_patients[q, : len(pats)] = list(pats)
        results: list[list[Hit] | None] = [None] * len(queries)
        pending = np.arange(len(queries))
        fetch = min(self.rows, 4 * k + 16)
        while len(pending):
            distances, rows = self.faiss_index.search(queries[pending], fetch)
            valid = rows >= 0
            safe = np.where(valid, rows, 0)
            cand_records = np.where(valid, records[safe], None)
            ok = retrievable(
                cand_records,
                np.where(valid, patients[safe], None),
                np.where(valid, splits[safe], None),
                exclude_splits=excluded,
                query_records=own_records[pending],
                query_patients=own_patients[pending],
            )
            again = []
            for j, q in enumerate(pending):
                chosen: list[tuple[int, float]] = []
                seen: set[str] = set()
                for row, distance, allowed, key in zip(
                    rows[j], distances[j], ok[j], cand_records[j], strict=True
                ):
                    if allowed and key not in seen:
                        seen.add(key)
                        chosen.append((int(row), float(distance)))
                        if len(chosen) == k:
                            break
                if len(chosen) < k and fetch < self.rows:
                    again.append(q)  # fewer than k allowed records in this many: ask for more
                else:
                    results[q] = self._hits(chosen)
            pending = np.asarray(again, dtype=np.int64)
            fetch = min(self.rows, fetch * 4)
        return [r or [] for r in results]

    def _hits(self, chosen: list[tuple[int, float]]) -> list[Hit]:
        if not chosen:
            return []
        rows = self.records.take(pa.array([row for row, _ in chosen])).to_pylist()
        return [
            Hit(
                segment_id=int(r["segment_id"]),
                corpus=r["corpus"],
                record_id=r["record_id"],
                patient_id=r["patient_id"],
                split=r["split"],
                distance=distance,
                labels=list(r["labels"] or []),
                report=r["report"],
            )
            for r, (_, distance) in zip(rows, chosen, strict=True)
        ]
