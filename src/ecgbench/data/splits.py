"""Patient-grouped k-fold splits of a segment store, and conversation sets that follow them.

Every record of a patient lands in one fold (PTB-XL ``patient_id``, MIMIC-IV-ECG ``subject_id``, CODE-15%
``patient_id``; other corpora have one record per patient as far as anyone knows, so the record is the
group). Folds are stratified by each record's first label with ``StratifiedGroupKFold`` where the store
has labels (and some label has a record for every fold), else patients are shuffled and dealt to the
smallest fold. ``strat_fold`` keeps PTB-XL's own
ten folds (already patient-grouped and label-stratified) and splits the other corpora as above.

One fold is the test split and another the validation split (by default the last two, so PTB-XL's
``strat_fold`` 10 is test and 9 is validation, as its authors recommend); the rest is training.
A conversation follows its ECGs. A comparison question whose two ECGs fall in different splits belongs to
none: its ``split`` stays null and it is counted, never silently put on one side.
"""

from __future__ import annotations

import json
import warnings
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ecgbench.data.conversations import SCHEMA
from ecgbench.data.readers.base import own_patient_id
from ecgbench.errors import CorruptFileError, UserError
from ecgbench.files import read_parquet, write_parquet

SplitMethod = Literal["patient", "strat_fold"]
NO_LABEL = "<none>"
PTBXL_FOLDS = 10

_RECORD_FIELDS = [
    ("corpus", pa.string()),
    ("record_id", pa.string()),
    ("patient_id", pa.string()),
    ("label", pa.string()),
]
RECORD_SCHEMA = pa.schema([*_RECORD_FIELDS, ("strat_fold", pa.int32())])
# What `data split` writes as splits.parquet: one row per record.
RECORD_SPLIT_SCHEMA = pa.schema([*_RECORD_FIELDS, ("fold", pa.int32()), ("split", pa.string())])


def record_heads(index: pa.Table) -> pa.Table:
    """The first segment row of every record (record-level fields repeat on each of its segments)."""
    rows = pa.array(np.arange(len(index), dtype=np.int64))
    first = (
        index.select(["corpus", "record_id"])
        .append_column("row", rows)
        .group_by(["corpus", "record_id"], use_threads=False)
        .aggregate([("row", "min")])
        .column("row_min")
    )
    return index.take(pc.take(first, pc.array_sort_indices(first)))


def record_table(indexes: Sequence[pa.Table]) -> pa.Table:
    """One row per record of one or more store indexes: corpus, record_id, patient_id, first label and
    PTB-XL strat_fold (from the index ``meta``)."""
    columns = ["corpus", "record_id", "patient_id", "labels", "meta"]
    heads = record_heads(pa.concat_tables([index.select(columns) for index in indexes]))
    rows: dict[tuple[str, str], dict] = {}
    for c, r, p, lab, m in zip(*(heads.column(name).to_pylist() for name in columns), strict=True):
        strat_fold = _strat_fold(m, r) if c == "ptbxl" else None
        rows[(c, r)] = {
            "corpus": c,
            "record_id": r,
            # A record without a patient id is its own patient, under an id no real patient has.
            "patient_id": p if p else own_patient_id(r),
            "label": lab[0] if lab else NO_LABEL,
            "strat_fold": strat_fold,
        }
    return pa.Table.from_pylist(list(rows.values()), schema=RECORD_SCHEMA)


def _strat_fold(meta: str | None, record_id: str) -> int | None:
    """PTB-XL's fold of a record from its index ``meta`` (None if it has none); anything but a whole
    number 1-10 is a one-line error naming the record (stores prepared before the reader checked it)."""
    try:
        value = json.loads(meta).get("strat_fold") if meta else None
    except (json.JSONDecodeError, AttributeError):
        raise CorruptFileError(f"PTB-XL record {record_id}: its index meta is not a JSON object") from None
    if value is None:
        return None
    if type(value) is not int or not 1 <= value <= PTBXL_FOLDS:
        raise UserError(
            f"PTB-XL record {record_id} has strat_fold {value!r}, not a fold number 1-{PTBXL_FOLDS}; "
            "prepare the store again (the reader now rejects such records)"
        )
    return value


def _dealt_folds(groups: np.ndarray, n_folds: int, rng: np.random.Generator) -> np.ndarray:
    """Shuffle the groups, then give each to the fold with the fewest records so far."""
    unique, inverse, counts = np.unique(groups, return_inverse=True, return_counts=True)
    order = rng.permutation(len(unique))
    sizes = np.zeros(n_folds, dtype=np.int64)
    group_fold = np.empty(len(unique), dtype=np.int32)
    for g in order:
        fold = int(np.argmin(sizes))
        group_fold[g] = fold
        sizes[fold] += counts[g]
    return group_fold[inverse]


def grouped_folds(groups: np.ndarray, labels: np.ndarray | None, n_folds: int, seed: int) -> np.ndarray:
    """A fold per row; rows sharing a group share a fold; stratified by ``labels`` if given."""
    n_groups = len(np.unique(groups))
    if n_groups < n_folds:
        raise UserError(f"{n_folds} folds need at least {n_folds} patients; the store has {n_groups}")
    rng = np.random.default_rng(seed)
    if labels is None or len(np.unique(labels)) < 2:
        return _dealt_folds(groups, n_folds, rng)
    if np.unique(labels, return_counts=True)[1].max() < n_folds:
        # no label has a record for every fold: nothing to stratify (scikit-learn refuses such labels)
        return _dealt_folds(groups, n_folds, rng)
    from sklearn.model_selection import StratifiedGroupKFold

    splitter = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    folds = np.empty(len(groups), dtype=np.int32)
    with warnings.catch_warnings():
        # Rare labels with fewer records than folds are expected; the split is still patient-grouped.
        warnings.simplefilter("ignore", UserWarning)
        for fold, (_, test_rows) in enumerate(splitter.split(np.zeros(len(groups)), labels, groups)):
            folds[test_rows] = fold
    return folds


def split_names(folds: np.ndarray, n_folds: int, test_fold: int, val_fold: int) -> np.ndarray:
    test, val = test_fold % n_folds, val_fold % n_folds
    if test == val:
        raise UserError(f"--test-fold and --val-fold name the same fold ({test})")
    names = np.full(len(folds), "train", dtype=object)
    names[folds == val] = "val"
    names[folds == test] = "test"
    return names


def assign_folds(
    records: pa.Table,
    *,
    n_folds: int,
    seed: int,
    method: SplitMethod = "patient",
    test_fold: int = -1,
    val_fold: int = -2,
) -> pa.Table:
    """The record table with ``fold`` and ``split``; checked: no patient in two folds."""
    if not -n_folds <= test_fold < n_folds or not -n_folds <= val_fold < n_folds:
        raise UserError(
            f"--test-fold and --val-fold must be folds of {n_folds} (0..{n_folds - 1} or negative)"
        )
    corpus = np.asarray(records.column("corpus").to_pylist(), dtype=object)
    groups = np.asarray(
        [f"{c}:{p}" for c, p in zip(corpus, records.column("patient_id").to_pylist(), strict=True)],
        dtype=object,
    )
    labels = np.asarray(records.column("label").to_pylist(), dtype=object)
    strat = np.asarray(records.column("strat_fold").to_pylist(), dtype=object)
    folds = np.full(len(records), -1, dtype=np.int32)
    own = np.zeros(len(records), dtype=bool)
    if method == "strat_fold":
        if n_folds != PTBXL_FOLDS:
            raise UserError(f"--split-method strat_fold keeps PTB-XL's {PTBXL_FOLDS} folds: use --folds 10")
        own = np.array([s is not None for s in strat], dtype=bool)
        if not own.any():
            raise UserError("--split-method strat_fold: no PTB-XL record with a strat_fold in the store")
        outside = sorted({int(s) for s in strat[own] if not 1 <= s <= PTBXL_FOLDS})
        if outside:
            raise UserError(f"strat_fold values must be 1..{PTBXL_FOLDS}; the store has {outside}")
        folds[own] = np.array([s - 1 for s in strat[own]], dtype=np.int32)
    rest = ~own
    if rest.any():
        has_labels = any(label != NO_LABEL for label in labels[rest])
        folds[rest] = grouped_folds(groups[rest], labels[rest] if has_labels else None, n_folds, seed)
    table = records.drop_columns(["strat_fold"]).append_column("fold", pa.array(folds, pa.int32()))
    table = table.append_column(
        "split", pa.array(split_names(folds, n_folds, test_fold, val_fold), pa.string())
    )
    check_patients_disjoint(table)
    return table.cast(RECORD_SPLIT_SCHEMA)


def write_record_splits(path: Path, record_splits: pa.Table) -> Path:
    return write_parquet(path, record_splits)


def read_record_splits(path: Path) -> pa.Table:
    """A ``splits.parquet`` written by ``data split``, checked against its schema."""
    if not path.exists():
        raise UserError(f"splits file not found: {path} (write it with `ecgbench data split`)")
    table = read_parquet(path, "splits file")
    missing = [f.name for f in RECORD_SPLIT_SCHEMA if f.name not in table.column_names]
    if missing:
        raise UserError(f"{path} is not a splits file from `data split` (missing columns {missing})")
    try:
        return table.select(RECORD_SPLIT_SCHEMA.names).cast(RECORD_SPLIT_SCHEMA)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        raise CorruptFileError(
            f"{path} is not a splits file from `data split` (wrong column types: {exc})"
        ) from None


def segments_in_split(index: pa.Table, record_splits: pa.Table, split: str) -> np.ndarray:
    """Sorted ids of the store's segments whose record belongs to ``split`` (train, val or test)."""
    if split not in ("train", "val", "test"):
        raise UserError(f"invalid value for --split: {split!r} (allowed: train, val, test)")
    lookup = record_split_lookup(record_splits)
    keys = zip(index.column("corpus").to_pylist(), index.column("record_id").to_pylist(), strict=True)
    in_split = np.fromiter((lookup.get(key, (-1, None))[1] == split for key in keys), dtype=bool)
    ids = index.column("segment_id").to_numpy()[in_split].astype(np.int64)
    if len(ids) == 0:
        raise UserError(f"no segment of the store is in the {split} split of these splits")
    return np.sort(ids)


def split_segment_ids(index: pa.Table, splits_path: Path | None, split: str | None) -> np.ndarray | None:
    """The ``--splits FILE --split NAME`` pair of a command: None (all segments) or the chosen ids."""
    if (splits_path is None) != (split is None):
        raise UserError("--splits and --split go together: give the splits file and the split name")
    if splits_path is None or split is None:
        return None
    return segments_in_split(index, read_record_splits(splits_path), split)


def check_patients_disjoint(splits: pa.Table) -> None:
    """Raise if any patient has records in two folds (the leak the peer's splits had)."""
    seen: dict[tuple[str, str], int] = {}
    for corpus, patient, fold in zip(
        splits.column("corpus").to_pylist(),
        splits.column("patient_id").to_pylist(),
        splits.column("fold").to_pylist(),
        strict=True,
    ):
        if seen.setdefault((corpus, patient), fold) != fold:
            raise AssertionError(
                f"patient {corpus}/{patient} is in folds {seen[(corpus, patient)]} and {fold}"
            )


@dataclass
class ConversationSplitReport:
    splits: Counter[str] = field(default_factory=Counter)
    unsplit: Counter[str] = field(default_factory=Counter)


def split_conversations(
    table: pa.Table, record_splits: Mapping[tuple[str, str], tuple[int, str]]
) -> tuple[pa.Table, ConversationSplitReport]:
    """Fill ``split``/``fold`` of a conversation set from its ECGs' records (see the module notes)."""
    report = ConversationSplitReport()
    splits: list[str | None] = []
    folds: list[int | None] = []
    for ecgs in table.column("ecgs").to_pylist():
        placed = [record_splits.get((e["corpus"], e["record_id"])) for e in ecgs]
        if not placed or any(p is None for p in placed):
            splits.append(None)
            folds.append(None)
            report.unsplit["ECG not in the split table"] += 1
            continue
        names = {p[1] for p in placed}
        if len(names) > 1:
            splits.append(None)
            folds.append(None)
            report.unsplit["ECGs in different splits"] += 1
            continue
        fold_set = {p[0] for p in placed}
        splits.append(names.pop())
        folds.append(fold_set.pop() if len(fold_set) == 1 else None)
        report.splits[splits[-1]] += 1
    out = table.set_column(SCHEMA.get_field_index("split"), "split", pa.array(splits, pa.string()))
    out = out.set_column(SCHEMA.get_field_index("fold"), "fold", pa.array(folds, pa.int32()))
    return out.replace_schema_metadata(table.schema.metadata), report


def record_split_lookup(splits: pa.Table) -> dict[tuple[str, str], tuple[int, str]]:
    return {
        (c, r): (f, s)
        for c, r, f, s in zip(
            splits.column("corpus").to_pylist(),
            splits.column("record_id").to_pylist(),
            splits.column("fold").to_pylist(),
            splits.column("split").to_pylist(),
            strict=True,
        )
    }


def split_summary(splits: pa.Table) -> dict[str, dict[str, int]]:
    """Records and patients per split, plus the number of patients found in more than one split."""
    out: dict[str, dict[str, int]] = {}
    patient_splits: dict[tuple[str, str], set[str]] = {}
    for name in ("train", "val", "test"):
        part = splits.filter(pc.equal(splits.column("split"), name))
        patients = set(
            zip(part.column("corpus").to_pylist(), part.column("patient_id").to_pylist(), strict=True)
        )
        for p in patients:
            patient_splits.setdefault(p, set()).add(name)
        out[name] = {"records": len(part), "patients": len(patients)}
    out["overlap"] = {"patients_in_several_splits": sum(len(s) > 1 for s in patient_splits.values())}
    return out
