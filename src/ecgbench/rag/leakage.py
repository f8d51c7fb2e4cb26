"""The one rule of what a query may retrieve (the peer's retrieval could return the query's own report).

A candidate segment is retrievable for a query only if it is

- not of any record the query is about (records are ``(corpus, record_id)``),
- not of any patient the query is about (patients are ``(corpus, patient_id)``: PTB-XL patient 12 and
  MIMIC subject 12 are different people; a record without a patient id is its own patient),
- not in an excluded (evaluation) split, and not of unknown split when splits are excluded at all (a
  record the splits file does not place cannot be proven to be outside the evaluation split).

``retrievable`` decides it for index building (no query: which segments enter the index) and for every
search (which neighbours a query may see), so both follow the same rule.
"""

from __future__ import annotations

from collections.abc import Collection

import numpy as np

from ecgbench.data.readers.base import own_patient_id

_SEP = "\x1f"  # cannot occur in a corpus name, record id or patient id


def record_key(corpus: str, record_id: str) -> str:
    return f"{corpus}{_SEP}{record_id}"


def patient_key(corpus: str, patient_id: str | None, record_id: str) -> str:
    """The patient of a record, qualified by its corpus (patient ids are per corpus)."""
    return f"{corpus}{_SEP}{patient_id if patient_id else own_patient_id(record_id)}"


def retrievable(
    records: np.ndarray,
    patients: np.ndarray,
    splits: np.ndarray,
    *,
    exclude_splits: Collection[str] = (),
    query_records: np.ndarray | None = None,
    query_patients: np.ndarray | None = None,
) -> np.ndarray:
    """Which candidates may be retrieved (bool, the shape of ``records``).

    ``records``/``patients``: the candidates' :func:`record_key`/:func:`patient_key` strings (object
    arrays, any shape; ``None`` marks no candidate, e.g. faiss's -1 padding); ``splits``: their split
    names (``None``: unknown). For a search, candidates are ``(Q, K)`` and ``query_records``/
    ``query_patients`` are ``(Q, M)``: the M records and patients of each query (a conversation about
    two ECGs excludes both; pad with ``None``)."""
    records = np.asarray(records, dtype=object)
    ok = np.not_equal(records, None)
    if exclude_splits:
        splits = np.asarray(splits, dtype=object)
        ok &= np.not_equal(splits, None) & ~np.isin(splits.astype(str), list(exclude_splits))
    if query_records is not None:
        if records.ndim != 2:
            raise ValueError("candidates of a search are (queries, k)")
        patients = np.asarray(patients, dtype=object)
        own_record = np.asarray(query_records, dtype=object)[:, None, :]  # (Q, 1, M)
        own_patient = np.asarray(query_patients, dtype=object)[:, None, :]
        ok &= ~(records[:, :, None] == own_record).any(axis=2)
        ok &= ~(patients[:, :, None] == own_patient).any(axis=2)
    return ok
