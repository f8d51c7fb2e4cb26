"""Uploads become exactly the segments `data prepare` makes, and every bad file is one clear message.

Real files: the bundled PTB-XL record 00001_lr (WFDB format 16, 100 Hz), the original CPSC 2018 A1980.mat
and its Challenge-2020 copy A0001.hea/.mat; .npy and CSV uploads are written from a real record's samples."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from ecgbench.data.readers.base import CANONICAL_LEADS, read_wfdb
from ecgbench.data.store import SegmentStore
from ecgbench.demo.inputs import (
    StoreCatalog,
    ecg_sha256,
    model_spec,
    process_upload,
    read_upload,
    store_spec,
)
from ecgbench.errors import UserError
from ecgbench.resources import SAMPLE_DIR

PTBXL = SAMPLE_DIR / "ptbxl" / "records100" / "00000" / "00001_lr"
CPSC_ORIGINAL = SAMPLE_DIR / "cpsc2018" / "TrainingSet" / "A1980.mat"
CPSC_CHALLENGE = SAMPLE_DIR / "cpsc2018_cinc2020" / "A0001"
MB = 1_000_000


def store_segments(store: Path, corpus: str, record_id: str) -> list[str]:
    """Hashes of a record's segments in the store, in order."""
    opened = SegmentStore.open(store)
    rows = opened.index.to_pylist()
    ids = [i for i, r in enumerate(rows) if (r["corpus"], r["record_id"]) == (corpus, record_id)]
    return [ecg_sha256(opened.read(i)) for i in ids]


@pytest.mark.parametrize(
    ("files", "corpus", "record_id"),
    [
        ([PTBXL.with_suffix(".hea"), PTBXL.with_suffix(".dat")], "ptbxl", "1"),
        ([CPSC_ORIGINAL], "cpsc", "A1980"),
        ([CPSC_CHALLENGE.with_suffix(".hea"), CPSC_CHALLENGE.with_suffix(".mat")], "cpsc", "A0001"),
    ],
    ids=["ptbxl-wfdb", "cpsc-original-mat", "cpsc-challenge-wfdb"],
)
def test_upload_gives_the_segments_data_prepare_made(
    sample_store: Path, files: list[Path], corpus: str, record_id: str
) -> None:
    upload = read_upload(files)
    # Both corpora were recorded on 50 Hz mains: the store's "auto" notch used 50 Hz for them.
    segments = process_upload(upload, store_spec(sample_store), 50.0)
    assert segments.dtype == np.float32 and segments.shape[1:] == (12, 1250)
    assert [ecg_sha256(s) for s in segments] == store_segments(sample_store, corpus, record_id)
    assert set(upload.source["files"]) == {f.name for f in files}


def test_npy_and_csv_uploads_map_leads_and_take_the_given_rate(sample_store: Path, tmp_path: Path) -> None:
    signal, names, _, fs, _ = read_wfdb(str(PTBXL))  # 100 Hz, header lead names in canonical order
    assert [n.upper() for n in names] == [n.upper() for n in CANONICAL_LEADS]
    spec = store_spec(sample_store)
    np.save(tmp_path / "ecg.npy", signal.astype(np.float32))
    from_npy = process_upload(read_upload([tmp_path / "ecg.npy"], fs=fs), spec, 50.0)
    # CSV: one column per lead under its name, in a shuffled order, lower case, with a time column; in uV.
    order = np.random.default_rng(0).permutation(12)
    header = ["time"] + [CANONICAL_LEADS[k].lower() for k in order]
    lines = [",".join(header)] + [
        ",".join([f"{t / fs:.3f}"] + [repr(float(v) * 1000) for v in signal[order, t]])
        for t in range(signal.shape[1])
    ]
    (tmp_path / "ecg.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    from_csv = process_upload(read_upload([tmp_path / "ecg.csv"], fs=fs, units="uV"), spec, 50.0)
    np.testing.assert_allclose(from_csv, from_npy, atol=1e-5)
    # the float32 .npy holds the WFDB record's values: the segments are the store's to float32 precision
    opened = SegmentStore.open(sample_store)
    np.testing.assert_allclose(from_npy[0], opened.read(0), atol=1e-4)
    # a CSV without header: 12 columns in the canonical order
    (tmp_path / "plain.csv").write_text(
        "\n".join(",".join(repr(float(v)) for v in signal[:, t]) for t in range(signal.shape[1])), "utf-8"
    )
    plain = process_upload(read_upload([tmp_path / "plain.csv"], fs=fs), spec, 50.0)
    np.testing.assert_allclose(plain, from_npy, atol=1e-5)


def _write(path: Path, data: bytes | str) -> Path:
    if isinstance(data, str):
        path.write_text(data, encoding="utf-8")
    else:
        path.write_bytes(data)
    return path


def bad_uploads(tmp: Path) -> dict[str, tuple[list[Path], dict, str]]:
    """name -> (files, read_upload options, words the message must hold)."""
    signal, *_ = read_wfdb(str(PTBXL))
    header = PTBXL.with_suffix(".hea").read_text()
    truncated = tmp / "truncated"
    truncated.mkdir()
    _write(truncated / "00001_lr.hea", header)
    _write(truncated / "00001_lr.dat", PTBXL.with_suffix(".dat").read_bytes()[:5000])
    nan = signal.copy()
    nan[3, 100:400] = np.nan  # 3 s of lead aVR missing
    cases = {
        "header of noise": ([_write(tmp / "noise.hea", b"\x00\x9f\xffnot a header\n")], {}, "cannot be read"),
        "truncated signal file": ([truncated / "00001_lr.hea", truncated / "00001_lr.dat"], {}, "truncated"),
        "header without its signal file": ([PTBXL.with_suffix(".hea")], {}, "00001_lr.dat"),
        "signal file alone": ([PTBXL.with_suffix(".dat")], {}, "with its .hea"),
        "not a cpsc mat": ([_write(tmp / "x.mat", b"MATLAB 5.0 MAT-file garbage")], {}, "not a CPSC 2018"),
        "npy of noise": ([_write(tmp / "noise.npy", b"\x93NUMPY garbage bytes")], {"fs": 500}, ".npy"),
        "npy of 3 leads": ([_save(tmp / "three.npy", signal[:3])], {"fs": 100}, "(12, N)"),
        "npy samples x leads": ([_save(tmp / "t.npy", signal.T)], {"fs": 100}, "array.T"),
        "npy 3-d": ([_save(tmp / "cube.npy", signal[None])], {"fs": 100}, "shape (1, 12, 1000)"),
        "npy of text": ([_save(tmp / "text.npy", np.array([["a"] * 5] * 12))], {"fs": 100}, "real numbers"),
        "npy without rate": ([_save(tmp / "norate.npy", signal)], {}, "sampling rate"),
        "npy rate implausible": ([_save(tmp / "rate.npy", signal)], {"fs": 3}, "sampling rate"),
        "npy NaN-filled": ([_save(tmp / "nan.npy", np.full_like(signal, np.nan))], {"fs": 100}, "NaN"),
        "npy long NaN gap": ([_save(tmp / "gap.npy", nan)], {"fs": 100}, "missing samples in a row"),
        "npy too short": ([_save(tmp / "short.npy", signal[:, :300])], {"fs": 100}, "too short"),
        "csv with text": ([_write(tmp / "t.csv", "I,II\n1,x\n")], {"fs": 100}, "'x' is not a number"),
        "csv unknown lead": ([_write(tmp / "u.csv", "I,II,foo\n1,2,3\n")], {"fs": 100}, "'foo'"),
        "csv missing leads": ([_write(tmp / "m.csv", "I,II\n1,2\n3,4\n")], {"fs": 100}, "missing III"),
        "csv ragged": ([_write(tmp / "r.csv", "I,II\n1,2\n3\n")], {"fs": 100}, "row 3 has 1 fields"),
        "csv binary": ([_write(tmp / "b.csv", b"\xff\xfe\x00\x81")], {"fs": 100}, "not a text CSV"),
        "unknown kind": ([_write(tmp / "ecg.xml", "<ecg/>")], {}, "not a file the demo reads"),
        "two records": (
            [PTBXL.with_suffix(".hea"), CPSC_CHALLENGE.with_suffix(".hea")],
            {},
            "several WFDB headers",
        ),
        "nothing": ([], {}, "no file uploaded"),
        "oversized": (
            [PTBXL.with_suffix(".dat")],
            {"max_bytes": 10_000},
            "is 0.024 MB; the demo reads at most 0.01 MB",
        ),
    }
    return cases


def _save(path: Path, array: np.ndarray) -> Path:
    np.save(path, array)
    return path


def test_bad_uploads_get_one_clear_message(sample_store: Path, tmp_path: Path) -> None:
    spec = store_spec(sample_store)
    for name, (files, options, words) in bad_uploads(tmp_path).items():
        with pytest.raises(UserError) as caught:
            process_upload(read_upload(files, **options), spec, None)
        message = str(caught.value)
        assert words in message, (name, message)
        assert "\n" not in message and str(tmp_path / "ecgbench-upload") not in message, (name, message)
        assert "ecgbench-upload-" not in message, (name, message)  # names the user's file, not our copy


def test_store_catalog_reads_segments_by_label(sample_store: Path) -> None:
    catalog = StoreCatalog([sample_store])
    labels = catalog.choices()
    assert labels[0] == "ptbxl/1 #0" and len(labels) == len(SegmentStore.open(sample_store))
    ecg = catalog.read("cpsc/A1980 #1")
    assert ecg.sha256 == store_segments(sample_store, "cpsc", "A1980")[1]
    assert ecg.source == {
        "kind": "store",
        "store": str(sample_store.resolve()),
        "corpus": "cpsc",
        "record_id": "A1980",
        "segment_index": 1,
        "segment_id": labels.index("cpsc/A1980 #1"),
    }
    for wrong in ("cpsc/A1980 #9", "A1980", ""):
        with pytest.raises(UserError, match=r"not a segment of|pick a record"):
            catalog.read(wrong)
    two = StoreCatalog([sample_store, sample_store])
    assert two.choices()[0] == "[0] ptbxl/1 #0" and two.read("[1] ptbxl/1 #0").sha256 == ecg_sha256(
        SegmentStore.open(sample_store).read(0)
    )


def test_model_spec_takes_the_store_of_the_model_rate_and_length(sample_store: Path, tmp_path: Path) -> None:
    assert model_spec(250.0, 1250, [sample_store]).store == sample_store
    fallback = model_spec(500.0, 2500, [sample_store])  # no store of that rate: defaults at it
    assert (fallback.fs, fallback.length, fallback.store) == (500.0, 2500, None)
    assert "default" in fallback.origin
    damaged = tmp_path / "store"
    shutil.copytree(sample_store, damaged)
    manifest = (damaged / "manifest.json").read_text().replace('"target_fs": 250', '"target_fs": "x"')
    (damaged / "manifest.json").write_text(manifest)
    with pytest.raises(UserError, match="signal parameters"):
        store_spec(damaged)
