"""PTB-XL (PhysioNet v1.0.x): ``ptbxl_database.csv`` + ``scp_statements.csv`` + ``records100/`` or
``records500/`` WFDB records; also its Challenge-2021 copy (``HR<ecg_id>.hea`` + ``.mat`` with SNOMED
codes), joined with ``ptbxl_database*.csv`` rows where they are present.

Kept per record: ``ecg_id`` (record id), ``patient_id``, ``strat_fold``, ``scp_codes`` (labels and meta),
the original report (mostly German) and an English description built from the ``description`` column of
``scp_statements.csv`` and the statements' likelihoods."""

from __future__ import annotations

import ast
import math
from pathlib import Path
from typing import Any

from ecgbench.data.readers.base import (
    CorpusReader,
    RawRecord,
    RecordRef,
    id_string,
    parse_age,
    patient_id_string,
    read_csv_rows,
    read_wfdb,
)
from ecgbench.data.readers.challenge import list_headers, load_challenge_record
from ecgbench.errors import UserError

# Columns stored in their own index columns (the others go to meta).
_OWN_COLUMNS = {"ecg_id", "patient_id", "age", "sex", "report", "scp_codes", "filename_lr", "filename_hr"}
# PTB-XL writes ages above 89 as 300 (de-identification).
_CENSORED_AGE = 300
PTBXL_FOLDS = 10


class MetadataProblem(ValueError):
    """A field of a metadata row that cannot be used; the record is rejected with ``reason``."""

    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


def parse_scp_codes(text: str) -> dict[str, float]:
    """The ``scp_codes`` column: a Python dict literal such as ``{'NORM': 100.0, 'SR': 0.0}``.

    Read with ``ast.literal_eval`` (literals only, never code). Every PTB-XL record has statements, so an
    empty, truncated or malformed field is a :class:`MetadataProblem`, never an unlabelled record."""
    shown = text if len(text) <= 60 else text[:57] + "..."
    if not text.strip():
        raise MetadataProblem("missing_labels", "scp_codes is empty")
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        raise MetadataProblem(
            "bad_labels", f"scp_codes {shown!r} is not a dict literal (truncated?)"
        ) from None
    if not isinstance(value, dict) or not value:
        raise MetadataProblem("bad_labels", f"scp_codes {shown!r} is not a non-empty dict of statements")
    codes: dict[str, float] = {}
    for key, likelihood in value.items():
        if not isinstance(key, str) or type(likelihood) not in (int, float) or not math.isfinite(likelihood):
            raise MetadataProblem(
                "bad_labels", f"scp_codes entry {key!r}: {likelihood!r} is not a statement with a likelihood"
            )
        codes[key] = float(likelihood)
    return codes


def parse_strat_fold(text: str | None) -> int | None:
    """PTB-XL's ``strat_fold`` (1-10; the CSV may write it as ``3.0``); None when the column is absent."""
    if text is None:
        return None
    try:
        number = float(text)
    except ValueError:
        number = math.nan
    if not number.is_integer() or not 1 <= number <= PTBXL_FOLDS:
        raise MetadataProblem(
            "bad_metadata", f"strat_fold {text.strip()!r} is not a fold number 1-{PTBXL_FOLDS}"
        )
    return int(number)


def load_statements(path: Path) -> dict[str, dict[str, str]]:
    """``scp_statements.csv`` rows keyed by SCP code (its first, unnamed column)."""
    rows = read_csv_rows(path)
    table: dict[str, dict[str, str]] = {}
    for row in rows:
        code = row.get("") or row.get("Unnamed: 0") or ""
        if code:
            table[code.strip()] = row
    return table


def english_description(scp_codes: dict[str, float], statements: dict[str, dict[str, str]]) -> str | None:
    """An English report from SCP statements: diagnostic statements first (by likelihood), then rhythm,
    then form; likelihoods below 100 are hedged (PTB-XL uses 0 for "not given" on non-diagnostic
    statements, so 0 reads as a plain statement)."""
    parts: list[tuple[int, float, str]] = []
    for code, likelihood in scp_codes.items():
        row = statements.get(code)
        if row is None or not row.get("description"):
            continue
        if row.get("diagnostic") == "1.0":
            group = 0
        elif row.get("rhythm") == "1.0":
            group = 1
        else:
            group = 2
        text = row["description"].strip()
        if 0 < likelihood < 50:
            text = f"possible {text}"
        elif 50 <= likelihood < 80:
            text = f"probable {text}"
        elif 80 <= likelihood < 100:
            text = f"likely {text}"
        parts.append((group, -likelihood, text))
    if not parts:
        return None
    sentences = [text for _, _, text in sorted(parts, key=lambda p: (p[0], p[1]))]
    return ". ".join(s[0].upper() + s[1:] for s in sentences) + "."


def _meta_value(text: str) -> Any:
    text = text.strip()
    if text in ("True", "False"):
        return text == "True"
    try:
        number = float(text)
    except ValueError:
        return text
    return int(number) if number.is_integer() else number


def _row_fields(row: dict[str, str], statements: dict[str, dict[str, str]], table: str) -> dict[str, Any]:
    """Index fields of one ``ptbxl_database.csv`` row; a field that cannot be used becomes the record's
    ``problem`` (it is rejected, counted and listed with the table and field named)."""
    problem = None
    try:
        scp = parse_scp_codes(row.get("scp_codes") or "")
        strat_fold = parse_strat_fold(row.get("strat_fold"))
    except MetadataProblem as exc:
        problem = (exc.reason, f"{table}, ecg_id {row.get('ecg_id', '?')}: {exc.detail}")
        scp, strat_fold = {}, None
    age = parse_age(row.get("age"))
    meta: dict[str, Any] = {"scp_codes": scp}
    raw_age = _meta_value(row.get("age") or "")
    if isinstance(raw_age, int | float) and raw_age >= _CENSORED_AGE:
        meta["age_over_89"] = True
    for key, value in row.items():
        if key and key not in _OWN_COLUMNS and value is not None and value.strip():
            meta[key] = _meta_value(value)
    if strat_fold is not None:
        meta["strat_fold"] = strat_fold
    sex = {"0": "M", "1": "F"}.get(row.get("sex", "").strip().split(".")[0])
    report = (row.get("report") or "").strip() or None
    return {
        "problem": problem,
        # a missing (or "nan") patient id is unknown, never a shared id
        "patient_id": patient_id_string(row.get("patient_id")),
        "labels": tuple(scp),
        "report": english_description(scp, statements),
        "report_original": report,
        "age": age,
        "sex": sex,
        "meta": meta,
    }


class PtbXlReader(CorpusReader):
    name = "ptb"
    corpus = "ptbxl"
    mains_hz = 50.0  # recorded in Germany
    expected_fs = (100.0, 500.0)

    def __init__(
        self, root: Path, *, ptbxl_source: str = "auto", scp_statements: Path | None = None, **kw: Any
    ):
        super().__init__(root, **kw)
        self.source = ptbxl_source
        self.statements_path = scp_statements or self.root / "scp_statements.csv"

    def metadata_files(self) -> list[Path]:
        files = sorted(self.root.glob("ptbxl_database*.csv"))
        return [*files, self.statements_path] if self.statements_path.is_file() else files

    def _statements(self) -> dict[str, dict[str, str]]:
        return load_statements(self.statements_path) if self.statements_path.is_file() else {}

    def discover(self) -> list[RecordRef]:
        native = (self.root / "records100").is_dir() or (self.root / "records500").is_dir()
        if native:
            return self._discover_native()
        headers = list_headers(self.root, "HR*.hea")
        if headers:
            return self._discover_challenge(headers)
        raise UserError(
            f"{self.root} is not a PTB-XL folder: expected ptbxl_database.csv + records100/ or records500/, "
            "or Challenge-2021 HR*.hea records"
        )

    def _discover_native(self) -> list[RecordRef]:
        database = self.root / "ptbxl_database.csv"
        rows = read_csv_rows(database, ("ecg_id", "patient_id", "filename_lr", "filename_hr"))
        statements = self._statements()
        refs = []
        for row in rows:
            relative = self._choose_file(row)
            fields = _row_fields(row, statements, database.name)
            record_id = id_string(row["ecg_id"])
            if not record_id.isdigit() and fields["problem"] is None:
                fields["problem"] = (
                    "bad_metadata",
                    f"{database.name}: ecg_id {row['ecg_id']!r} is not an integer",
                )
            refs.append(
                RecordRef(
                    reader=self.name,
                    corpus=self.corpus,
                    record_id=record_id,
                    path=str(self.root / relative),
                    source_path=relative,
                    **fields,
                )
            )
        return sorted(refs, key=lambda r: int(r.record_id) if r.record_id.isdigit() else math.inf)

    def _choose_file(self, row: dict[str, str]) -> str:
        if self.source == "records100":
            return row["filename_lr"]
        if self.source == "records500":
            return row["filename_hr"]
        # auto: the 500 Hz record when it is on disk, else the 100 Hz one
        hr = row["filename_hr"]
        return hr if (self.root / f"{hr}.hea").is_file() else row["filename_lr"]

    def _discover_challenge(self, headers: list[Path]) -> list[RecordRef]:
        statements = self._statements()
        rows: dict[str, dict[str, str]] = {}
        for table in sorted(self.root.glob("ptbxl_database*.csv")):
            for row in read_csv_rows(table):
                rows[id_string(row.get("ecg_id", ""))] = row | {"__table__": table.name}
        refs = []
        for header in headers:
            ecg_id = str(int(header.stem[2:])) if header.stem[2:].isdigit() else header.stem
            row = rows.get(ecg_id)
            fields = (
                _row_fields({k: v for k, v in row.items() if k != "__table__"}, statements, row["__table__"])
                if row
                else {"meta": {"metadata_row": False}}
            )
            refs.append(
                RecordRef(
                    reader=self.name,
                    corpus=self.corpus,
                    record_id=ecg_id,
                    path=str(header.with_suffix("")),
                    source_path=header.relative_to(self.root).with_suffix("").as_posix(),
                    # without a metadata row the header's Dx codes are the labels: they must be there
                    extra={"challenge": True, "labels_required": row is None},
                    **fields,
                )
            )
        return refs

    @staticmethod
    def load(ref: RecordRef) -> RawRecord:
        if ref.extra.get("challenge"):
            # Labels: the SCP codes when the metadata row exists, else the header's SNOMED condition names.
            return load_challenge_record(ref, require_labels=ref.extra.get("labels_required", False))
        signal, names, units, fs, _ = read_wfdb(ref.path)
        return RawRecord.from_ref(ref, signal, names, units, fs)
