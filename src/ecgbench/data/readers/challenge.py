"""Records in the PhysioNet/CinC Challenge 2020/2021 layout: ``.hea`` + MATLAB v4 ``.mat`` (variable
``val``), with ``# Age:``, ``# Sex:`` and ``# Dx:`` (SNOMED-CT codes) header comments. CPSC 2018, the
Chapman-Shaoxing/Ningbo database and PTB-XL were all redistributed in this form."""

from __future__ import annotations

import csv
import functools
from pathlib import Path

from ecgbench.data.readers.base import (
    RawRecord,
    RecordRef,
    RecordRejected,
    parse_age,
    parse_header_comments,
    parse_sex,
    read_wfdb,
)
from ecgbench.resources import RESOURCES_DIR

SNOMED_TABLE = RESOURCES_DIR / "labels" / "snomed_ct_ecg.csv"


@functools.cache
def snomed_names() -> dict[str, str]:
    """SNOMED-CT code -> condition name, from the bundled Challenge mapping table."""
    with SNOMED_TABLE.open(encoding="utf-8") as handle:
        rows = csv.DictReader(line for line in handle if not line.startswith("#"))
        return {row["snomed_code"]: row["name"] for row in rows}


def snomed_label(code: str) -> str:
    """Condition name of a code; an unmapped code is kept as ``snomed:<code>`` so no label is lost."""
    code = code.strip()
    return snomed_names().get(code, f"snomed:{code}")


def list_headers(root: Path, pattern: str = "*.hea") -> list[Path]:
    """Header files under ``root`` (recursively: the Challenge data is split into subfolders)."""
    return sorted(root.rglob(pattern), key=lambda p: p.relative_to(root).as_posix())


def load_challenge_record(ref: RecordRef, *, require_labels: bool = False) -> RawRecord:
    """Read a Challenge-format record; labels, age and sex come from its header comments unless the
    reader's metadata table already gave them. With ``require_labels`` (corpora whose labels are the
    ``# Dx:`` codes) a record without them is rejected, never kept unlabelled; a code that is not a
    SNOMED-CT identifier (digits) is rejected wherever it appears."""
    signal, names, units, fs, comments = read_wfdb(ref.path)
    info = parse_header_comments(comments)
    codes = [c.strip() for c in info.get("dx", "").split(",") if c.strip()]
    header = Path(ref.path).name + ".hea"
    bad = [c for c in codes if not c.isdigit()]
    if bad:
        raise RecordRejected("bad_labels", f"{header}: Dx code {bad[0]!r} is not a SNOMED-CT code")
    if require_labels and not ref.labels and not codes:
        raise RecordRejected("missing_labels", f"{header} has no '# Dx:' diagnosis codes")
    labels = list(ref.labels) or [snomed_label(c) for c in codes]
    meta = dict(ref.meta)
    if codes:
        meta.setdefault("snomed_codes", codes)
    for key in ("rx", "hx", "sx"):
        if info.get(key) and info[key].lower() != "unknown":
            meta.setdefault(key, info[key])
    return RawRecord.from_ref(
        ref,
        signal,
        names,
        units,
        fs,
        labels=labels,
        age=ref.age if ref.age is not None else parse_age(info.get("age")),
        sex=ref.sex or parse_sex(info.get("sex")),
        meta=meta,
    )
