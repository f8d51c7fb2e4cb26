"""Corpus readers on the real bundled records (and published-layout fixtures for MIMIC-IV-ECG and
CODE-15%, see corpus_fixtures.py), including broken input."""

from __future__ import annotations

import json

import numpy as np
import pytest
import scipy.io
import wfdb
from corpus_fixtures import MIMIC_LEADS, copy_record, write_code15, write_mimic

from ecgbench.data.readers import CANONICAL_LEADS, RecordRejected, code15, load_record
from ecgbench.data.readers.base import to_canonical_leads
from ecgbench.data.readers.code15 import Code15Reader
from ecgbench.data.readers.cpsc import CpscReader
from ecgbench.data.readers.csn import CsnReader
from ecgbench.data.readers.mimic import MimicReader
from ecgbench.data.readers.ptbxl import PtbXlReader, english_description, load_statements
from ecgbench.data.readers.wfdb_dir import WfdbReader
from ecgbench.errors import CorruptFileError, UserError
from ecgbench.resources import SAMPLE_DIR


def by_id(refs):
    return {r.record_id: r for r in refs}


def test_ptbxl_native_record_keeps_ids_fold_reports_and_wfdb_values():
    refs = PtbXlReader(SAMPLE_DIR / "ptbxl").discover()
    assert [r.record_id for r in refs] == ["1"]
    ref = refs[0]
    assert ref.patient_id == "15709"
    assert ref.meta["strat_fold"] == 3
    assert ref.meta["scp_codes"] == {"NORM": 100.0, "LVOLT": 0.0, "SR": 0.0}
    assert ref.labels == ("NORM", "LVOLT", "SR")
    assert ref.report_original == "sinusrhythmus periphere niederspannung"
    assert ref.report == "Normal ECG. Sinus rhythm. Low QRS voltages in the frontal and horizontal leads."
    assert (ref.sex, ref.age) == ("F", 56.0)
    assert ref.source_path == "records100/00000/00001_lr"  # records500 is absent, auto falls back
    raw = load_record(ref)
    expected = wfdb.rdrecord(str(SAMPLE_DIR / "ptbxl/records100/00000/00001_lr"))
    assert raw.fs == 100.0
    assert raw.lead_names == ["I", "II", "III", "AVR", "AVL", "AVF", "V1", "V2", "V3", "V4", "V5", "V6"]
    np.testing.assert_array_equal(raw.signal, expected.p_signal.T)


def test_ptbxl_records500_choice_is_counted_missing_when_absent(tmp_path):
    ref = PtbXlReader(SAMPLE_DIR / "ptbxl", ptbxl_source="records500").discover()[0]
    assert ref.source_path == "records500/00000/00001_hr"
    with pytest.raises(RecordRejected) as err:
        load_record(ref)
    assert err.value.reason == "missing_file"


def test_ptbxl_challenge_copies_join_metadata_rows_where_present():
    statements = SAMPLE_DIR / "ptbxl" / "scp_statements.csv"
    refs = by_id(PtbXlReader(SAMPLE_DIR / "ptbxl_cinc2021", scp_statements=statements).discover())
    assert sorted(refs) == ["6000", "6001", "6002", "6003", "6004"]
    assert refs["6000"].patient_id == "5028" and refs["6000"].meta["strat_fold"] == 10
    assert refs["6000"].labels == ("NORM", "NT_", "SR")
    assert refs["6001"].report_original.startswith("sinusrhythmus p-verbreiterung")
    assert refs["6001"].report == "Non-specific ST changes. Sinus rhythm."
    raw = load_record(refs["6002"])  # no metadata row: labels from the SNOMED codes of the header
    assert refs["6002"].patient_id is None
    assert raw.labels == ["sinus bradycardia", "sinus rhythm", "incomplete right bundle branch block"]
    assert raw.meta["snomed_codes"] == ["426177001", "426783006", "713426002"]
    assert (raw.age, raw.sex, raw.fs) == (29.0, "M", 500.0)


def test_english_description_hedges_by_likelihood():
    statements = load_statements(SAMPLE_DIR / "ptbxl" / "scp_statements.csv")
    text = english_description({"IMI": 50.0, "SR": 0.0, "ASMI": 100.0}, statements)
    assert (
        text == "Anteroseptal myocardial infarction. Probable inferior myocardial infarction. Sinus rhythm."
    )


def test_cpsc_both_forms_use_one_label_vocabulary():
    original = by_id(CpscReader(SAMPLE_DIR / "cpsc2018").discover())
    assert sorted(original) == ["A1980", "A1981", "A1982", "A1983", "A1984"]
    raw = load_record(original["A1980"])
    data = scipy.io.loadmat(str(SAMPLE_DIR / "cpsc2018/TrainingSet/A1980.mat"))["ECG"][0, 0]["data"]
    np.testing.assert_array_equal(raw.signal, data)
    assert raw.labels == ["premature atrial contraction"]  # class 6 (PAC)
    assert (raw.sex, raw.age, raw.fs) == ("M", 52.0, 500.0)
    assert load_record(original["A1983"]).labels == ["sinus rhythm"]  # class 1 (Normal)
    challenge = by_id(CpscReader(SAMPLE_DIR / "cpsc2018_cinc2020").discover())
    raw = load_record(challenge["A0001"])
    assert raw.labels == ["right bundle branch block"]  # Dx 59118001 = class 5 (RBBB)
    assert (raw.sex, raw.age, raw.signal.shape) == ("M", 74.0, (12, 7500))


def test_csn_maps_snomed_codes_to_condition_names():
    refs = by_id(CsnReader(SAMPLE_DIR / "chapman_shaoxing_ningbo_cinc2021").discover())
    assert len(refs) == 11
    assert refs["JS00666"].meta["hospital"] == "chapman-shaoxing"
    assert refs["JS20000"].meta["hospital"] == "ningbo"
    assert load_record(refs["JS00666"]).labels == ["sinus tachycardia"]  # "#Dx: 427084000", no space
    raw = load_record(refs["JS20000"])
    assert raw.labels == [
        "premature atrial contraction",
        "sinus tachycardia",
        "nonspecific intraventricular conduction disorder",
        "s t changes",
    ]


def test_generic_wfdb_reader_takes_the_12_leads_by_name_and_drops_frank_leads():
    refs = WfdbReader(SAMPLE_DIR / "physionet_wfdb_misc").discover()
    assert [(r.record_id, r.source_path) for r in refs] == [("s0010_re", "ptbdb/s0010_re")]
    raw = load_record(refs[0])
    assert (raw.fs, raw.age, raw.sex) == (1000.0, 81.0, "F")
    canonical, not_measured = to_canonical_leads(raw.signal, raw.lead_names)
    assert not_measured == []
    expected = wfdb.rdrecord(str(SAMPLE_DIR / "physionet_wfdb_misc/ptbdb/s0010_re"))
    for k, name in enumerate(CANONICAL_LEADS):
        np.testing.assert_array_equal(
            canonical[k], expected.p_signal[:, expected.sig_name.index(name.lower())]
        )


def test_mimic_fixture_joins_measurements_and_maps_its_lead_order(tmp_path):
    root = write_mimic(tmp_path / "mimic")
    (ref,) = MimicReader(root).discover()
    assert (ref.record_id, ref.patient_id) == ("40689238", "10000032")
    assert ref.source_path == "files/p1000/p10000032/s40689238/40689238"
    assert ref.report == "Sinus rhythm. Possible right atrial abnormality. Borderline ECG."
    assert ref.meta["filtering"] == "60 Hz notch Baseline filter" and ref.meta["qrs_axis"] == "77"
    raw = load_record(ref)
    assert raw.lead_names == MIMIC_LEADS
    canonical, _ = to_canonical_leads(raw.signal, raw.lead_names)
    source = wfdb.rdrecord(str(SAMPLE_DIR / "ptbxl_cinc2021/HR06000"))
    for k, name in enumerate(CANONICAL_LEADS):  # aVL/aVF swap undone by name; 200 adu/mV = 5 uV steps
        np.testing.assert_allclose(canonical[k], source.p_signal[:, source.sig_name.index(name)], atol=2.5e-3)


def test_code15_fixture_strips_zero_padding_and_reads_labels(tmp_path):
    root = write_code15(tmp_path / "code15")
    refs = by_id(Code15Reader(root).discover())
    assert sorted(refs) == ["1169160", "168405", "2873686"]
    short, long = load_record(refs["1169160"]), load_record(refs["2873686"])
    assert short.signal.shape == (12, 2800) and short.meta["padding_stripped"] == [648, 648]
    assert long.signal.shape == (12, 4000) and long.meta["padding_stripped"] == [48, 48]
    assert refs["1169160"].labels == ("sinus tachycardia",)
    assert refs["2873686"].labels == ("right bundle branch block",)
    assert refs["2873686"].patient_id == "1724173" and refs["2873686"].sex == "M"
    with pytest.raises(RecordRejected) as err:
        load_record(refs["168405"])  # exams_part1.hdf5 is not there
    assert err.value.reason == "missing_file"


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        (lambda hea: hea.write_text("this is not a header\n"), "corrupt_file"),
        (
            lambda hea: hea.with_suffix(".dat").write_bytes(hea.with_suffix(".dat").read_bytes()[:5000]),
            "corrupt_file",
        ),
        (lambda hea: hea.with_suffix(".dat").unlink(), "missing_file"),
        (lambda hea: hea.write_text(hea.read_text().replace(" V3\n", " XYZ\n")), "unknown_lead"),
    ],
    ids=["garbage-header", "truncated-signal", "missing-signal", "unknown-lead"],
)
def test_broken_wfdb_records_give_a_counted_reason(tmp_path, damage, reason):
    header = copy_record("ptbxl/records100/00000/00001_lr", tmp_path / "db")
    damage(header)
    (ref,) = WfdbReader(tmp_path / "db").discover()
    with pytest.raises(RecordRejected) as err:
        raw = load_record(ref)
        to_canonical_leads(raw.signal, raw.lead_names)
    assert err.value.reason == reason


def test_missing_record_file_listed_in_the_csv_is_counted(tmp_path):
    root = tmp_path / "ptbxl"
    (root / "records100").mkdir(parents=True)
    text = (SAMPLE_DIR / "ptbxl/ptbxl_database.csv").read_text()
    (root / "ptbxl_database.csv").write_text(text)
    (ref,) = PtbXlReader(root).discover()
    with pytest.raises(RecordRejected) as err:
        load_record(ref)
    assert err.value.reason == "missing_file"


@pytest.mark.parametrize(
    "reader", [PtbXlReader, MimicReader, Code15Reader, CpscReader, CsnReader, WfdbReader]
)
def test_empty_directory_is_a_clear_user_error(tmp_path, reader):
    with pytest.raises(UserError):
        reader(tmp_path).discover()


def test_malformed_metadata_table_is_a_user_error(tmp_path):
    (tmp_path / "records100").mkdir()
    (tmp_path / "ptbxl_database.csv").write_text(json.dumps({"not": "a csv"}))
    with pytest.raises(UserError, match="lacks the columns ecg_id, patient_id"):
        PtbXlReader(tmp_path).discover()


def test_truncated_metadata_table_is_a_corruption_error(tmp_path):
    # ptbxl_database.csv cut inside its only data row: the row is shorter than the header.
    (tmp_path / "records100").mkdir()
    text = (SAMPLE_DIR / "ptbxl/ptbxl_database.csv").read_text()
    (tmp_path / "ptbxl_database.csv").write_text(text[: text.index("\n") + 60])
    with pytest.raises(CorruptFileError, match="data row 1 is shorter than the header"):
        PtbXlReader(tmp_path).discover()


def test_code15_unreadable_age_is_unknown_and_a_truncated_hdf5_is_a_corruption_error(tmp_path):
    root = write_code15(tmp_path / "code15")
    exams = root / "exams.csv"
    exams.write_text(exams.read_text().replace("1169160,38,True,", "1169160,n/a,,"))
    refs = by_id(Code15Reader(root).discover())
    assert (refs["1169160"].age, refs["1169160"].sex) == (None, None)
    assert (refs["2873686"].age, refs["2873686"].sex) == (73.0, "M")
    hdf5 = root / "exams_part0.hdf5"
    hdf5.write_bytes(hdf5.read_bytes()[:50_000])
    code15._open_hdf5.cache_clear()  # the handle of the intact file is cached in this process
    with pytest.raises(CorruptFileError, match=r"exams_part0\.hdf5 is not a CODE-15% HDF5 file"):
        Code15Reader(root).discover()
