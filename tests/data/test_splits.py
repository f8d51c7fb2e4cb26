"""`data split`: patient-grouped, label-stratified folds; PTB-XL strat_fold; conversations follow ECGs."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from sets_helpers import index_table

from ecgbench.data import splits
from ecgbench.data.conversations import Conversation, EcgRef, conversation_table, iter_conversations
from ecgbench.data.store import SegmentStore
from ecgbench.errors import UserError


def _patients_per_fold(table: pa.Table) -> dict[tuple[str, str], set[int]]:
    folds: dict[tuple[str, str], set[int]] = defaultdict(set)
    for row in table.to_pylist():
        folds[(row["corpus"], row["patient_id"])].add(row["fold"])
    return folds


def test_real_sample_store_patient_folds(sample_store: Path) -> None:
    store = SegmentStore.open(sample_store)
    records = splits.record_table([store.index])
    assert len(records) == len(set(store.index.column("record_id").to_pylist())) == 28
    table = splits.assign_folds(records, n_folds=5, seed=0)
    assert set(table.column("fold").to_pylist()) == set(range(5))
    assert all(len(f) == 1 for f in _patients_per_fold(table).values())
    summary = splits.split_summary(table)
    assert summary["overlap"]["patients_in_several_splits"] == 0
    assert sum(summary[s]["records"] for s in ("train", "val", "test")) == 28
    # Reproducible by seed, different with another seed.
    again = splits.assign_folds(records, n_folds=5, seed=0)
    other = splits.assign_folds(records, n_folds=5, seed=1)
    assert again.column("fold").to_pylist() == table.column("fold").to_pylist()
    assert other.column("fold").to_pylist() != table.column("fold").to_pylist()


def test_several_records_per_patient_stay_together() -> None:
    rng = np.random.default_rng(3)
    labels = ["NORM", "MI", "STTC", "CD", "HYP"]
    records = [
        {
            "corpus": "ptbxl",
            "record_id": str(i),
            "patient_id": str(rng.integers(0, 40)),
            "labels": [labels[int(rng.integers(0, 5))], "SR"],
            "segments": 2,
        }
        for i in range(200)
    ] + [{"corpus": "mimic", "record_id": str(900 + i), "patient_id": str(i % 7)} for i in range(30)]
    table = splits.assign_folds(splits.record_table([index_table(records)]), n_folds=5, seed=7)
    per_patient = _patients_per_fold(table)
    assert all(len(f) == 1 for f in per_patient.values())
    # PTB-XL patient "1" and MIMIC subject "1" are different people: grouped per corpus.
    assert ("ptbxl", "1") in per_patient and ("mimic", "1") in per_patient
    splits.check_patients_disjoint(table)
    # Stratified: every label that is common enough reaches every fold.
    by_fold = defaultdict(set)
    for row in table.to_pylist():
        by_fold[row["fold"]].add(row["label"])
    assert all({"NORM", "MI", "STTC"} <= found for found in by_fold.values())


def test_labels_too_rare_for_every_fold_are_dealt_by_patient() -> None:
    # PTB-XL records 1, 6000 and 6001 (three patients, three different first labels) into 3 folds: no label
    # can reach every fold, so scikit-learn's stratified splitter refuses; patients are dealt instead
    records = [
        {"corpus": "ptbxl", "record_id": rid, "patient_id": pid, "labels": [label], "segments": 1}
        for rid, pid, label in (("1", "15709", "NORM"), ("6000", "1", "IMI"), ("6001", "2", "LVH"))
    ]
    table = splits.assign_folds(splits.record_table([index_table(records)]), n_folds=3, seed=0)
    assert sorted(table.column("fold").to_pylist()) == [0, 1, 2]
    splits.check_patients_disjoint(table)


def test_leak_check_catches_a_patient_in_two_folds() -> None:
    bad = pa.table(
        {
            "corpus": ["ptbxl", "ptbxl"],
            "record_id": ["1", "2"],
            "patient_id": ["7", "7"],
            "label": ["NORM", "NORM"],
            "fold": pa.array([0, 1], pa.int32()),
            "split": ["train", "test"],
        }
    )
    with pytest.raises(AssertionError, match="patient ptbxl/7"):
        splits.check_patients_disjoint(bad)
    assert splits.split_summary(bad)["overlap"]["patients_in_several_splits"] == 1


def test_strat_fold_keeps_ptbxl_folds(sample_store: Path) -> None:
    records = splits.record_table([SegmentStore.open(sample_store).index])
    table = splits.assign_folds(records, n_folds=10, seed=0, method="strat_fold")
    rows = {(r["corpus"], r["record_id"]): r for r in table.to_pylist()}
    # PTB-XL ecg_id 1 has strat_fold 3 and 6000 has strat_fold 10 (ptbxl_database rows in the sample).
    assert rows[("ptbxl", "1")]["fold"] == 2 and rows[("ptbxl", "1")]["split"] == "train"
    assert rows[("ptbxl", "6000")]["fold"] == 9 and rows[("ptbxl", "6000")]["split"] == "test"
    assert all(len(f) == 1 for f in _patients_per_fold(table).values())
    with pytest.raises(UserError, match="--folds 10"):
        splits.assign_folds(records, n_folds=5, seed=0, method="strat_fold")
    strat = records.column("strat_fold").to_pylist()
    corrupt = records.set_column(
        records.column_names.index("strat_fold"),
        "strat_fold",
        pa.array([11 if s is not None else None for s in strat], pa.int32()),
    )
    with pytest.raises(UserError, match=r"strat_fold values must be 1..10; the store has \[11\]"):
        splits.assign_folds(corrupt, n_folds=10, seed=0, method="strat_fold")


def test_bad_fold_choices(sample_store: Path) -> None:
    records = splits.record_table([SegmentStore.open(sample_store).index])
    with pytest.raises(UserError, match="same fold"):
        splits.assign_folds(records, n_folds=5, seed=0, test_fold=4, val_fold=-1)
    with pytest.raises(UserError, match="must be folds of 5"):
        splits.assign_folds(records, n_folds=5, seed=0, test_fold=5)
    with pytest.raises(UserError, match="at least 50 patients"):
        splits.assign_folds(records, n_folds=50, seed=0)


def test_conversations_follow_their_ecgs() -> None:
    record_splits = {
        ("ptbxl", "1"): (0, "train"),
        ("ptbxl", "2"): (1, "train"),
        ("ptbxl", "3"): (4, "test"),
    }

    def conv(i: int, *ids: str) -> Conversation:
        turns = [
            {"role": "user", "content": "<ecg>\n" * len(ids) + "q"},
            {"role": "assistant", "content": "a"},
        ]
        return Conversation("s", str(i), turns, [EcgRef("ptbxl", r) for r in ids])

    table = conversation_table(
        [conv(0, "1"), conv(1, "1", "2"), conv(2, "1", "3"), conv(3, "3"), conv(4, "9")]
    )
    out, report = splits.split_conversations(table, record_splits)
    got = [(c.split, c.fold) for c in iter_conversations(out)]
    assert got == [("train", 0), ("train", None), (None, None), ("test", 4), (None, None)]
    assert report.splits == {"train": 2, "test": 1}
    assert report.unsplit == {"ECGs in different splits": 1, "ECG not in the split table": 1}
