"""``ecgbench data prepare`` end to end: the bundled sample, published-layout fixtures, bad input,
parallel workers, ``--shard i/n`` jobs, and the Hugging Face export."""

from __future__ import annotations

import json
import math

import numpy as np
import pyarrow.parquet as pq
import pytest
import wfdb
from corpus_fixtures import copy_record, write_code15, write_mimic
from typer.testing import CliRunner

from ecgbench.cli import app
from ecgbench.data.prepare import prepare
from ecgbench.data.readers import CANONICAL_LEADS
from ecgbench.data.readers.sample import SampleReader
from ecgbench.data.store import SegmentStore
from ecgbench.resources import SAMPLE_DIR
from ecgbench.settings import DataSettings

runner = CliRunner()
RAW = {"bandpass_low": 0.0, "bandpass_high": 0.0, "notch": "off"}  # no filtering: samples comparable


@pytest.fixture(scope="module")
def sample_store(tmp_path_factory):
    out = tmp_path_factory.mktemp("prepare") / "sample"
    result = runner.invoke(app, ["data", "prepare", "sample", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "records kept" in result.output
    return SegmentStore.open(out)


def test_sample_store_has_every_bundled_corpus_and_segments_from_durations(sample_store):
    index = sample_store.index.to_pylist()
    assert {r["corpus"] for r in index} == {"ptbxl", "cpsc", "csn", "wfdb"}
    per_record: dict[str, int] = {}
    for row in index:
        per_record[row["record_id"]] = per_record.get(row["record_id"], 0) + 1
    for ref in SampleReader().discover():
        header = (
            wfdb.rdheader(str(SAMPLE_DIR / ref.source_path)) if ref.extra.get("form") != "original" else None
        )
        seconds = header.sig_len / header.fs if header else None
        if seconds is None:  # CPSC original .mat: 500 Hz, length from the data
            import scipy.io

            seconds = scipy.io.loadmat(ref.path)["ECG"][0, 0]["data"].shape[1] / 500
        assert per_record[ref.record_id] == math.floor(seconds * 250 / 1250), ref.record_id
    assert sample_store.manifest["counts"]["records_kept"] == 28
    assert sample_store.manifest["counts"]["rejected"] == {}
    first = index[0]
    assert (first["record_id"], first["patient_id"], first["source_fs"]) == ("1", "15709", 100.0)
    assert json.loads(first["meta"])["strat_fold"] == 3
    assert any("up-sampled" in note for note in sample_store.manifest["notes"])


def test_no_patient_is_in_two_ptbxl_folds(sample_store):
    folds: dict[str, set[int]] = {}
    for row in sample_store.index.to_pylist():
        fold = json.loads(row["meta"]).get("strat_fold")
        if row["corpus"] == "ptbxl" and fold is not None:
            folds.setdefault(row["patient_id"], set()).add(fold)
    assert folds and all(len(f) == 1 for f in folds.values())


def test_stored_values_are_wfdb_values_in_canonical_order(tmp_path):
    # 500 Hz kept, no filters: a stored segment must equal wfdb's physical samples, lead by name.
    settings = DataSettings(target_fs=500, seg_len=1000, **RAW)
    store = prepare("csn", SAMPLE_DIR / "chapman_shaoxing_ningbo_cinc2021", tmp_path / "csn", settings).store
    record = wfdb.rdrecord(str(SAMPLE_DIR / "chapman_shaoxing_ningbo_cinc2021/JS00666"))
    segments = store.records()[("csn", "JS00666")]
    assert len(segments) == 5
    for k, segment_id in enumerate(segments):
        got = store.read(segment_id)
        for lead, name in enumerate(CANONICAL_LEADS):
            expected = record.p_signal[k * 1000 : (k + 1) * 1000, record.sig_name.index(name)]
            np.testing.assert_allclose(got[lead], expected, rtol=1e-6, atol=1e-6)


def test_parallel_workers_give_the_same_store(tmp_path, sample_store):
    store = prepare("sample", None, tmp_path / "w2", DataSettings(workers=2)).store
    assert store.index.drop_columns(["shard", "offset"]).equals(
        sample_store.index.drop_columns(["shard", "offset"])
    )
    np.testing.assert_array_equal(
        store.read_many(range(len(store))), sample_store.read_many(range(len(store)))
    )


def test_shard_jobs_join_into_the_single_run_store(tmp_path, sample_store):
    out = tmp_path / "jobs"
    for job in ("1/3", "0/3"):
        result = runner.invoke(app, ["data", "prepare", "sample", "--out", str(out), "--shard", job])
        assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["data", "prepare", "sample", "--out", str(out)])
    assert result.exit_code == 2 and "part-2-of-3" in result.output  # a job is missing
    runner.invoke(app, ["data", "prepare", "sample", "--out", str(out), "--shard", "2/3"])
    result = runner.invoke(app, ["data", "prepare", "sample", "--out", str(out)])
    assert result.exit_code == 0, result.output
    joined = SegmentStore.open(out)
    assert not list(out.glob("part-*"))
    assert joined.index.drop_columns(["shard", "offset"]).equals(
        sample_store.index.drop_columns(["shard", "offset"])
    )
    np.testing.assert_array_equal(joined.read_many(range(len(joined))), sample_store.read_many(range(68)))
    assert joined.manifest["counts"] == sample_store.manifest["counts"]
    again = prepare("sample", None, out, DataSettings())
    assert again.skipped


def test_overwrite_replaces_unfinished_shard_jobs_with_one_run(tmp_path, sample_store):
    out = tmp_path / "jobs"
    result = runner.invoke(app, ["data", "prepare", "sample", "--out", str(out), "--shard", "0/3"])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["data", "prepare", "sample", "--out", str(out), "--overwrite"])
    assert result.exit_code == 0, result.output
    assert not list(out.glob("part-*"))
    assert len(SegmentStore.open(out)) == len(sample_store)


def test_bad_records_are_counted_and_the_rest_prepared(tmp_path):
    root = tmp_path / "mixed"
    copy_record("chapman_shaoxing_ningbo_cinc2021/JS00666", root)  # good
    bad_header = copy_record("chapman_shaoxing_ningbo_cinc2021/JS20000", root)
    bad_header.write_text("JS20000 twelve leads\n")
    truncated = copy_record("chapman_shaoxing_ningbo_cinc2021/JS20001", root).with_suffix(".mat")
    truncated.write_bytes(truncated.read_bytes()[:20000])
    unknown = copy_record("chapman_shaoxing_ningbo_cinc2021/JS20002", root)
    unknown.write_text(unknown.read_text().replace(" V4\n", " Vx4\n"))
    wrong_fs = copy_record("chapman_shaoxing_ningbo_cinc2021/JS20003", root)
    wrong_fs.write_text(wrong_fs.read_text().replace("JS20003 12 500 5000", "JS20003 12 250 5000"))
    copy_record("chapman_shaoxing_ningbo_cinc2021/JS20004", root).with_suffix(".mat").unlink()
    store = prepare("csn", root, tmp_path / "store", DataSettings()).store
    assert sorted(store.records()) == [("csn", "JS00666")]
    assert store.manifest["counts"]["rejected"] == {
        "corrupt_file": 2,
        "missing_file": 1,
        "unexpected_fs": 1,
        "unknown_lead": 1,
    }
    rejected = {r["record_id"]: r for r in pq.read_table(store.path / "rejected.parquet").to_pylist()}
    assert rejected["JS20003"]["detail"].startswith("250 Hz")
    assert "Vx4" in rejected["JS20002"]["detail"]


@pytest.mark.parametrize(("span", "kept"), [(20, True), (400, False)], ids=["short-gap", "long-gap"])
def test_mimic_nan_stretches_follow_the_nan_policy(tmp_path, span, kept):
    root = write_mimic(tmp_path / "mimic", nan_span=(4, 1000, 1000 + span))  # lead aVF in MIMIC order
    store = prepare("mimic", root, tmp_path / "store", DataSettings()).store
    counts = store.manifest["counts"]
    if kept:
        assert counts["nan_filled_records"] == 1
        rows = store.index.to_pylist()
        assert {r["nan_filled"] for r in rows} == {span}
        assert rows[0]["report"] == "Sinus rhythm. Possible right atrial abnormality. Borderline ECG."
        assert rows[0]["patient_id"] == "10000032" and np.isfinite(store.read_many([0, 1])).all()
    else:
        assert counts["rejected"] == {"nan_gap": 1} and len(store) == 0


def test_code15_zero_padding_never_becomes_segments(tmp_path):
    store = prepare("code15", write_code15(tmp_path / "code15"), tmp_path / "store", DataSettings()).store
    records = store.records()
    # 7 s -> one 5 s segment (10.24 s with padding would give 2)
    assert len(records[("code15", "1169160")]) == 1
    assert len(records[("code15", "2873686")]) == 2  # 10 s -> two
    assert store.manifest["counts"]["rejected"] == {"missing_file": 1}
    assert any("CODE-15%" in note for note in store.manifest["notes"])


def test_export_to_huggingface_datasets(tmp_path, sample_store):
    datasets = pytest.importorskip("datasets")
    out = tmp_path / "hf"
    result = runner.invoke(app, ["data", "export", str(sample_store.path), "--out", str(out)])
    assert result.exit_code == 0, result.output
    dataset = datasets.load_from_disk(str(out))
    assert dataset.num_rows == len(sample_store)
    row = dataset[7]
    assert row["record_id"] == sample_store.index.column("record_id")[7].as_py()
    np.testing.assert_array_equal(np.asarray(row["signal"], dtype=np.float32), sample_store.read(7))
    result = runner.invoke(app, ["data", "export", str(sample_store.path), "--out", str(out)])
    assert result.exit_code == 2 and "not empty" in result.output


def test_cli_errors_are_one_line(tmp_path):
    for args, message in [
        (["data", "prepare", "ptb", "--out", str(tmp_path / "x")], "--root is required"),
        (["data", "prepare", "nope", "--out", str(tmp_path / "x")], "unknown corpus"),
        (
            ["data", "prepare", "csn", "--root", str(tmp_path), "--out", str(tmp_path / "x")],
            "no .hea records",
        ),
        (["data", "prepare", "sample", "--out", str(tmp_path / "x"), "--notch", "loud"], "--notch"),
        (
            ["data", "prepare", "sample", "--out", str(tmp_path / "x"), "--target-fs", "100"],
            "--bandpass-high",
        ),
        (
            ["data", "prepare", "sample", "--out", str(tmp_path / "x"), "--bandpass-low", "120"],
            "--bandpass-low",
        ),
        (["data", "prepare", "sample", "--out", str(tmp_path / "x"), "--notch", "150"], "--notch"),
        (["data", "export", str(tmp_path), "--out", str(tmp_path / "hf")], "not a segment store"),
    ]:
        result = runner.invoke(app, args)
        assert result.exit_code == 2, (args, result.output)
        assert message in result.output and "Traceback" not in result.output
