"""Real 12-lead segments from the bundled sample, shaped as the segment store serves them."""

from __future__ import annotations

import numpy as np
import pytest
import wfdb
from scipy.signal import resample_poly

from ecgbench.resources import SAMPLE_DIR

PTBXL_CINC2021 = SAMPLE_DIR / "ptbxl_cinc2021"
RECORDS = ("HR06000", "HR06001", "HR06002", "HR06003", "HR06004")


@pytest.fixture(scope="session")
def real_segments() -> np.ndarray:
    """(5, 12, 1250) float32 mV: the first 5 s of each PTB-XL (CinC 2021) record, 500 -> 250 Hz."""
    segments = []
    for name in RECORDS:
        record = wfdb.rdrecord(str(PTBXL_CINC2021 / name))
        assert record.fs == 500 and record.sig_name[:3] == ["I", "II", "III"]
        signal = resample_poly(record.p_signal.T, 1, 2, axis=1)  # anti-aliased 500 -> 250 Hz
        segments.append(signal[:, :1250])
    return np.stack(segments).astype(np.float32)


@pytest.fixture(scope="session")
def real_dx_texts() -> list[str]:
    """Each record's SNOMED-CT diagnosis line from its header (the only text these records carry)."""
    texts = []
    for name in RECORDS:
        header = (PTBXL_CINC2021 / f"{name}.hea").read_text(encoding="utf-8")
        texts.append(next(line.lstrip("# ").strip() for line in header.splitlines() if "Dx:" in line))
    return texts
