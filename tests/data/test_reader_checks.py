"""Issue 7, corpus readers given wrong input: every case is a copy of a bundled real record (or metadata
row) with one defect, prepared end to end; the record must be rejected with a counted reason and a detail
that names the file, the field and its value, or kept with what is known and counted, never stored as if
it were right. Headers follow https://physionet.org/physiotools/wag/header-5.htm; the Challenge ``.mat``
is a MATLAB 4 matrix ``val`` (int16) as in the PhysioNet/CinC 2020 data."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import scipy.io
from corpus_fixtures import copy_record, write_code15, write_mimic
from typer.testing import CliRunner

from ecgbench.cli import app
from ecgbench.data import splits
from ecgbench.data.prepare import prepare
from ecgbench.data.readers.base import OWN_PATIENT_PREFIX
from ecgbench.data.store import SegmentStore
from ecgbench.errors import UserError
from ecgbench.resources import SAMPLE_DIR
from ecgbench.settings import DataSettings

runner = CliRunner()


def prepared(corpus: str, root: Path, tmp_path: Path) -> SegmentStore:
    return prepare(corpus, root, tmp_path / "store", DataSettings()).store


def rejections(store: SegmentStore) -> dict[str, tuple[str, str]]:
    return {r["record_id"]: (r["reason"], r["detail"]) for r in store.rejected.to_pylist()}


def cpsc_copy(tmp_path: Path, *records: str) -> Path:
    root = tmp_path / "cpsc"
    for record in records:
        copy_record(f"cpsc2018_cinc2020/{record}", root)
    return root


def edit(path: Path, old: str, new: str, count: int = 1) -> None:
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new, count))


# ------------------------------------------------------------------------------------ 5: sampling rate


@pytest.mark.parametrize(
    ("rate", "detail"),
    [
        ("-500", "sampling rate -500 Hz is not a positive number"),
        ("abc", "sampling rate 'abc' is not a number"),
        ("1e9", "sampling rate 1e+09 Hz is outside the plausible 50-10000 Hz"),
        ("20", "sampling rate 20 Hz is outside the plausible 50-10000 Hz"),
    ],
)
def test_bad_sampling_rate_is_rejected_with_record_and_value(tmp_path, rate, detail):
    root = cpsc_copy(tmp_path, "A0001", "A0002")
    edit(root / "A0001.hea", "A0001 12 500 7500", f"A0001 12 {rate} 7500")
    store = prepared("cpsc", root, tmp_path)
    assert sorted(store.records()) == [("cpsc", "A0002")]
    assert store.manifest["counts"]["rejected"] == {"bad_fs": 1}
    reason, text = rejections(store)["A0001"]
    assert reason == "bad_fs" and text == f"A0001.hea: {detail}" + (
        " of an ECG" if "plausible" in detail else ""
    )
    assert "Error" not in text  # not wfdb's exception text


def test_generic_wfdb_reader_checks_the_rate_too(tmp_path):
    header = copy_record("physionet_wfdb_misc/ptbdb/s0010_re", tmp_path / "db")
    edit(header, "s0010_re 15 1000 38400", "s0010_re 15 100000 38400")
    store = prepared("wfdb", tmp_path / "db", tmp_path)
    assert rejections(store)["s0010_re"][0] == "bad_fs"


# ------------------------------------------------------------------------- 6, 7: the signal file itself


def test_mat_copied_from_another_record_is_caught_by_the_header_checks(tmp_path):
    root = cpsc_copy(tmp_path, "A0002", "A0003", "A0004")
    shutil.copy(root / "A0003.mat", root / "A0002.mat")  # same length: only initial values / checksums differ
    shutil.copy(root / "A0004.mat", root / "A0003.mat")  # another length
    store = prepared("cpsc", root, tmp_path)
    assert sorted(store.records()) == [("cpsc", "A0004")]
    found = rejections(store)
    assert found["A0002"] == (
        "checksum_mismatch",
        "A0002.mat: signal 1 (I) starts at 43, A0002.hea says -1 (a signal file of another record?)",
    )
    assert found["A0003"][0] == "corrupt_file" and "12 x 5974 matrix" in found["A0003"][1]


def test_checksum_catches_damage_the_initial_value_does_not(tmp_path):
    root = cpsc_copy(tmp_path, "A0002")
    mat = root / "A0002.mat"
    data = bytearray(mat.read_bytes())
    data[24 + 2 * 12 * 100] ^= 0x01  # one sample of lead I, 100 samples in
    mat.write_bytes(bytes(data))
    reason, detail = rejections(prepared("cpsc", root, tmp_path))["A0002"]
    assert reason == "checksum_mismatch" and "signal 1 (I) has checksum" in detail


@pytest.mark.parametrize(
    ("mat_format", "detail"),
    [
        ("5", "A0002.mat is a MATLAB 5/7 file (as scipy.io.savemat writes), not the MATLAB 4 matrix"),
        ("4", "A0002.mat stores float64 values but A0002.hea says format 16 (int16)"),
    ],
)
def test_float_mat_is_not_read_as_int16_noise(tmp_path, mat_format, detail):
    root = cpsc_copy(tmp_path, "A0002")
    val = scipy.io.loadmat(str(root / "A0002.mat"))["val"]
    scipy.io.savemat(str(root / "A0002.mat"), {"val": val.astype(np.float64)}, format=mat_format)
    store = prepared("cpsc", root, tmp_path)
    assert len(store) == 0
    reason, text = rejections(store)["A0002"]
    assert reason == "format_mismatch" and text.startswith(detail)


# ---------------------------------------------------------------------------------- 8: uncalibrated gain


@pytest.mark.parametrize("gain", ["0(0)/mV", "0/mV"])
def test_gain_zero_is_rejected_as_uncalibrated(tmp_path, gain):
    root = cpsc_copy(tmp_path, "A0002")
    edit(root / "A0002.hea", "1000.0(0)/mV 16 0 8 23 0 aVL", f"{gain} 16 0 8 23 0 aVL")
    reason, detail = rejections(prepared("cpsc", root, tmp_path))["A0002"]
    assert reason == "uncalibrated"
    assert detail.startswith("A0002.hea signal 5 (aVL) has ADC gain 0") and "uncalibrated" in detail


def test_unparsable_header_fields_say_what_is_wrong_not_wfdb_exception_text(tmp_path):
    root = cpsc_copy(tmp_path, "A0002", "A0003", "A0004")
    edit(root / "A0002.hea", "1000.0(0)/mV 16 0 -1 -1 0 I", "x(0)/mV 16 0 -1 -1 0 I")
    edit(root / "A0003.hea", "A0003 12 500 5000", "A0003 12 500 5000 99:99:99")
    edit(root / "A0004.hea", ".mat 16x1+24", ".mat sixteen")
    found = rejections(prepared("cpsc", root, tmp_path))
    assert found["A0002"] == ("corrupt_file", "A0002.hea signal 1 (I): ADC gain 'x' is not a number")
    assert found["A0003"] == (
        "corrupt_file",
        "A0003.hea: base time/date '99:99:99' is not a valid time and date",
    )
    assert found["A0004"] == ("corrupt_file", "A0004.hea signal 1: 'sixteen' is not a WFDB storage format")


# -------------------------------------------------------------------------------------- 9: lost labels


def ptbxl_copy(tmp_path: Path, change: dict[str, str]) -> Path:
    """The bundled PTB-XL folder with fields of its one metadata row (ecg_id 1) changed."""
    root = tmp_path / "ptbxl"
    shutil.copytree(SAMPLE_DIR / "ptbxl", root)
    table = root / "ptbxl_database.csv"
    with table.open(newline="") as handle:
        reader = csv.DictReader(handle)
        fields, rows = reader.fieldnames, list(reader)
    rows[0].update(change)
    with table.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    return root


@pytest.mark.parametrize(
    ("scp_codes", "reason", "detail"),
    [
        ("", "missing_labels", "scp_codes is empty"),
        (
            "{'NORM': 100.0, 'LVOLT'",
            "bad_labels",
            "scp_codes \"{'NORM': 100.0, 'LVOLT'\" is not a dict literal",
        ),
        ("{'NORM': 'high'}", "bad_labels", "scp_codes entry 'NORM': 'high' is not a statement"),
    ],
    ids=["missing", "truncated", "not-a-likelihood"],
)
def test_missing_or_broken_scp_codes_are_counted_rejections(tmp_path, scp_codes, reason, detail):
    store = prepared("ptb", ptbxl_copy(tmp_path, {"scp_codes": scp_codes}), tmp_path)
    assert len(store) == 0 and store.manifest["counts"]["rejected"] == {reason: 1}
    found_reason, text = rejections(store)["1"]
    assert found_reason == reason and text.startswith(f"ptbxl_database.csv, ecg_id 1: {detail}")


def test_unknown_cpsc_class_is_a_counted_rejection(tmp_path):
    root = tmp_path / "cpsc2018"
    shutil.copytree(SAMPLE_DIR / "cpsc2018", root)
    edit(root / "REFERENCE.csv", "A1983,1,,", "A1983,42,x,")
    edit(root / "REFERENCE.csv", "A1982,3,,", "A1982,,,")
    store = prepared("cpsc", root, tmp_path)
    assert sorted(store.records()) == [("cpsc", "A1980"), ("cpsc", "A1981"), ("cpsc", "A1984")]
    assert store.manifest["counts"]["rejected"] == {"bad_labels": 1, "missing_labels": 1}
    found = rejections(store)
    assert found["A1983"] == ("bad_labels", "REFERENCE.csv: class '42' of A1983 is not one of 1-9")
    assert found["A1982"] == ("missing_labels", "REFERENCE.csv: A1982 has no class")


def test_challenge_records_without_or_with_bad_dx_codes_are_rejected(tmp_path):
    root = tmp_path / "csn"
    for record in ("JS20000", "JS20001", "JS20002"):
        copy_record(f"chapman_shaoxing_ningbo_cinc2021/{record}", root)
    header = (root / "JS20000.hea").read_text()
    kept = [line for line in header.splitlines() if "Dx" not in line]
    (root / "JS20000.hea").write_text("\n".join(kept) + "\n")
    edit(root / "JS20001.hea", "# Dx: 284470004,427084000,698252002", "# Dx: 284470004,AFIB")
    store = prepared("csn", root, tmp_path)
    assert sorted(store.records()) == [("csn", "JS20002")]
    found = rejections(store)
    assert found["JS20000"] == ("missing_labels", "JS20000.hea has no '# Dx:' diagnosis codes")
    assert found["JS20001"] == ("bad_labels", "JS20001.hea: Dx code 'AFIB' is not a SNOMED-CT code")


def test_code15_label_column_that_is_neither_true_nor_false_is_rejected(tmp_path):
    root = write_code15(tmp_path / "code15")
    edit(root / "exams.csv", "1169160,38,True,40.16,False,", "1169160,38,True,40.16,maybe,")
    store = prepared("code15", root, tmp_path)
    assert rejections(store)["1169160"] == (
        "bad_labels",
        "exams.csv: 1dAVb 'maybe' of exam 1169160 is not True or False",
    )
    assert ("code15", "2873686") in store.records()


# ---------------------------------------------------------------------------- 10: records without patient


def ptbxl_challenge_copy(tmp_path: Path, patients: dict[str, str]) -> Path:
    """The Challenge copy of PTB-XL (HR06000-HR06004; rows only for 6000 and 6001), patient ids changed."""
    root = tmp_path / "ptbxl_cinc2021"
    shutil.copytree(SAMPLE_DIR / "ptbxl_cinc2021", root)
    shutil.copy(SAMPLE_DIR / "ptbxl" / "scp_statements.csv", root)
    table = root / "ptbxl_database_rows.csv"
    with table.open(newline="") as handle:
        reader = csv.DictReader(handle)
        fields, rows = reader.fieldnames, list(reader)
    for row in rows:
        row["patient_id"] = patients.get(row["ecg_id"], row["patient_id"])
    with table.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    return root


def patients(store: SegmentStore) -> dict[str, str]:
    index = store.index
    return dict(
        zip(index.column("record_id").to_pylist(), index.column("patient_id").to_pylist(), strict=True)
    )


def test_record_without_patient_never_collides_with_a_real_patient(tmp_path):
    # Real patient "6002" (ecg 6001) and record 6002, whose patient is unknown (no metadata row).
    store = prepared("ptb", ptbxl_challenge_copy(tmp_path, {"6001": "6002.0"}), tmp_path)
    found = patients(store)
    assert found["6001"] == "6002" and found["6002"] == f"{OWN_PATIENT_PREFIX}6002"
    assert store.manifest["counts"]["records_without_patient"] == 3  # 6002, 6003, 6004
    records = splits.record_table([store.index])
    groups = dict(
        zip(records.column("record_id").to_pylist(), records.column("patient_id").to_pylist(), strict=True)
    )
    assert groups["6001"] != groups["6002"]


def test_nan_patient_ids_are_unknown_not_one_patient(tmp_path):
    store = prepared("ptb", ptbxl_challenge_copy(tmp_path, {"6000": "nan", "6001": "NaN"}), tmp_path)
    found = patients(store)
    assert found["6000"] == f"{OWN_PATIENT_PREFIX}6000" and found["6001"] == f"{OWN_PATIENT_PREFIX}6001"
    assert store.manifest["counts"]["records_without_patient"] == 5
    result = runner.invoke(app, ["data", "prepare", "ptb", "--root", str(tmp_path / "ptbxl_cinc2021"),
                                 "--out", str(store.path)])  # fmt: skip
    assert result.exit_code == 0 and "records without patient id" in result.output


def test_mimic_record_without_subject_is_its_own_patient(tmp_path):
    root = write_mimic(tmp_path / "mimic")
    edit(root / "record_list.csv", "10000032,40689238", ",40689238")
    store = prepared("mimic", root, tmp_path)
    assert patients(store) == {"40689238": f"{OWN_PATIENT_PREFIX}40689238"}
    assert store.manifest["counts"]["records_without_patient"] == 1


def test_splits_of_an_older_store_give_unknown_patients_their_own_id():
    from sets_helpers import index_table

    index = index_table(
        [
            {"corpus": "ptbxl", "record_id": "1", "patient_id": ""},
            {"corpus": "ptbxl", "record_id": "7", "patient_id": "1"},
        ]
    )
    records = splits.record_table([index])
    assert records.column("patient_id").to_pylist() == [f"{OWN_PATIENT_PREFIX}1", "1"]


# ----------------------------------------------------------------------------------------- 13: strat_fold


@pytest.mark.parametrize("fold", ["x", "3.5", "11", ""])
def test_bad_strat_fold_is_a_counted_rejection(tmp_path, fold):
    store = prepared("ptb", ptbxl_copy(tmp_path, {"strat_fold": fold}), tmp_path)
    assert rejections(store)["1"] == (
        "bad_metadata",
        f"ptbxl_database.csv, ecg_id 1: strat_fold {fold!r} is not a fold number 1-10",
    )


def test_strat_fold_written_as_a_float_is_kept(tmp_path):
    store = prepared("ptb", ptbxl_copy(tmp_path, {"strat_fold": "3.0"}), tmp_path)
    assert json.loads(store.index.column("meta")[0].as_py())["strat_fold"] == 3


def test_split_of_a_store_with_a_bad_strat_fold_is_one_line(tmp_path, sample_store):
    # A store prepared before the reader checked strat_fold, as its index holds it.
    store = tmp_path / "store"
    shutil.copytree(sample_store, store)
    index = pq.read_table(store / "index.parquet")
    metas = index.column("meta").to_pylist()
    metas[0] = json.dumps({**json.loads(metas[0]), "strat_fold": "x"})
    index = index.set_column(index.schema.get_field_index("meta"), "meta", pa.array(metas, pa.string()))
    pq.write_table(index, store / "index.parquet")
    args = ["data", "split", "--store", str(store), "--out", str(tmp_path / "split"), "--split-method",
            "strat_fold", "--folds", "10"]  # fmt: skip
    result = runner.invoke(app, args)
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "PTB-XL record 1 has strat_fold 'x', not a fold number 1-10" in result.output
    with pytest.raises(UserError, match=r"strat_fold 3\.5"):
        metas[0] = json.dumps({**json.loads(metas[0]), "strat_fold": 3.5})
        splits.record_table([index.set_column(index.schema.get_field_index("meta"), "meta", pa.array(metas))])
