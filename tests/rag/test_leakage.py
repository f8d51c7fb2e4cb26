"""The one retrieval rule (ecgbench.rag.leakage.retrievable) on a hand-made table."""

from __future__ import annotations

import numpy as np

from ecgbench.rag.leakage import patient_key, record_key, retrievable

#: candidates: (corpus, record_id, patient_id, split)
TABLE = [
    ("ptbxl", "1", "15709", "train"),  # the query's own record
    ("ptbxl", "2", "15709", "train"),  # another record of the query's patient
    ("mimic", "9", "15709", "train"),  # patient 15709 of another corpus: another person
    ("ptbxl", "3", "42", "test"),  # evaluation split
    ("ptbxl", "4", "43", None),  # not placed by the splits file
    ("cpsc", "A1", None, "train"),  # no patient id: its own patient
    ("ptbxl", "5", "44", "val"),
]


def _keys():
    records = np.array([record_key(c, r) for c, r, _, _ in TABLE], dtype=object)
    patients = np.array([patient_key(c, p, r) for c, r, p, _ in TABLE], dtype=object)
    splits = np.array([s for *_, s in TABLE], dtype=object)
    return records, patients, splits


def test_build_keeps_only_placed_records_outside_the_excluded_splits() -> None:
    records, patients, splits = _keys()
    kept = retrievable(records, patients, splits, exclude_splits=("val", "test"))
    assert kept.tolist() == [True, True, True, False, False, True, False]
    assert retrievable(records, patients, splits).all()  # no splits given: everything may be indexed


def test_query_never_sees_its_record_or_patient_but_sees_another_corpus_same_number() -> None:
    records, patients, splits = _keys()
    query_records = np.array([[record_key("ptbxl", "1")]], dtype=object)
    query_patients = np.array([[patient_key("ptbxl", "15709", "1")]], dtype=object)
    ok = retrievable(
        records[None], patients[None], splits[None], exclude_splits=("test",),
        query_records=query_records, query_patients=query_patients,
    )  # fmt: skip
    assert ok[0].tolist() == [False, False, True, False, False, True, True]


def test_several_query_records_and_padding() -> None:
    records, patients, splits = _keys()
    cands = np.array([list(records), [*records[:-1], None]], dtype=object)
    cand_patients = np.array([list(patients), list(patients)], dtype=object)
    cand_splits = np.array([list(splits), list(splits)], dtype=object)
    # query 0 is about two ECGs (cpsc A1 and ptbxl 5); query 1 about one (padded with None)
    q_records = np.array(
        [[record_key("cpsc", "A1"), record_key("ptbxl", "5")], [record_key("mimic", "9"), None]], dtype=object
    )
    q_patients = np.array(
        [
            [patient_key("cpsc", None, "A1"), patient_key("ptbxl", "44", "5")],
            [patient_key("mimic", "15709", "9"), None],
        ],
        dtype=object,
    )
    ok = retrievable(cands, cand_patients, cand_splits, query_records=q_records, query_patients=q_patients)
    assert ok[0].tolist() == [True, True, True, True, True, False, False]
    assert ok[1].tolist() == [True, True, False, True, True, True, False]  # the None candidate: never
