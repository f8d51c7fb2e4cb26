"""Real 12-lead records from the bundled sample (500 Hz, 10 s), read with wfdb."""

from __future__ import annotations

import numpy as np
import pytest
import wfdb

from ecgbench.resources import SAMPLE_DIR


def read_records(folder: str, pattern: str) -> list[np.ndarray]:
    headers = sorted((SAMPLE_DIR / folder).glob(pattern))
    return [wfdb.rdrecord(str(h.with_suffix(""))).p_signal.T.astype(np.float32) for h in headers]


@pytest.fixture(scope="session")
def chapman() -> list[np.ndarray]:
    """Chapman-Shaoxing/Ningbo (JS*), (12, 5000) each."""
    records = read_records("chapman_shaoxing_ningbo_cinc2021", "JS*.hea")
    assert len(records) >= 10
    return records


@pytest.fixture(scope="session")
def ptbxl() -> list[np.ndarray]:
    """PTB-XL records of the CinC 2021 copy (HR0600x), (12, 5000) each: held out from `chapman`."""
    return read_records("ptbxl_cinc2021", "HR*.hea")


@pytest.fixture(scope="session")
def segments(chapman: list[np.ndarray]) -> np.ndarray:
    """2.5 s segments (12, 1250) cut from the Chapman records."""
    return np.stack([s for r in chapman for s in np.split(r, 4, axis=1)])
