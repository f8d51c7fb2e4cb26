"""The fast WFDB reader gives exactly what wfdb.rdrecord gives, and leaves everything else to wfdb.

Headers written here follow the WFDB header format (https://physionet.org/physiotools/wag/header-5.htm);
they are edits of the bundled real records or files written by wfdb.wrsamp itself."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import wfdb
from corpus_fixtures import copy_record

from ecgbench.data.readers.base import RecordRejected, _read_wfdb_with_wfdb, read_wfdb
from ecgbench.data.readers.wfdb_fast import read_format16
from ecgbench.resources import SAMPLE_DIR

SAMPLE_RECORDS = sorted(
    h.relative_to(SAMPLE_DIR).with_suffix("").as_posix() for h in SAMPLE_DIR.rglob("*.hea")
)


def _forbid_wfdb(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args, **kwargs):
        raise AssertionError("wfdb.rdrecord was called: the fast path was not taken")

    monkeypatch.setattr(wfdb, "rdrecord", refuse)


def _count_wfdb_calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    calls: list[str] = []
    real = wfdb.rdrecord

    def counting(path, *args, **kwargs):
        calls.append(path)
        return real(path, *args, **kwargs)

    monkeypatch.setattr(wfdb, "rdrecord", counting)
    return calls


def _assert_same_as_wfdb(path: str, read: tuple) -> None:
    expected = wfdb.rdrecord(path)
    signal, names, units, fs, comments = read
    assert signal.dtype == np.float64 and signal.shape == expected.p_signal.T.shape
    np.testing.assert_array_equal(signal, expected.p_signal.T)  # bit-identical (NaN where NaN)
    assert names == expected.sig_name
    assert units == expected.units
    assert fs == float(expected.fs)
    assert comments == expected.comments


def test_every_sample_record_is_a_fast_path_record():
    assert len(SAMPLE_RECORDS) >= 23
    # every bundled header is format 16 (plain .dat or the Challenge's MATLAB .mat with 16+24)
    assert all(read_format16(str(SAMPLE_DIR / name)) is not None for name in SAMPLE_RECORDS)


@pytest.mark.parametrize("name", SAMPLE_RECORDS)
def test_fast_path_equals_wfdb_on_real_records(name, monkeypatch):
    path = str(SAMPLE_DIR / name)
    expected = wfdb.rdrecord(path)
    _forbid_wfdb(monkeypatch)
    signal, names, units, fs, comments = read_wfdb(path)
    np.testing.assert_array_equal(signal, expected.p_signal.T)
    assert (names, units, fs, comments) == (
        expected.sig_name,
        expected.units,
        float(expected.fs),
        expected.comments,
    )


def test_signals_in_two_files_keep_header_order(monkeypatch):
    path = str(SAMPLE_DIR / "physionet_wfdb_misc/ptbdb/s0010_re")  # 12 leads in .dat, Frank XYZ in .xyz
    expected = wfdb.rdrecord(path)
    _forbid_wfdb(monkeypatch)
    signal, names, *_ = read_wfdb(path)
    assert names[-3:] == ["vx", "vy", "vz"] and signal.shape == (15, 38400)
    np.testing.assert_array_equal(signal[12:], expected.p_signal[:, 12:].T)


def test_header_defaults_follow_wfdb(tmp_path, monkeypatch):
    """A missing baseline is the ADC zero, missing units are mV, other units are kept, a base time and
    date are accepted, comments anywhere are collected. (Gain 0, uncalibrated, is rejected: see
    test_data_reliability.py.)"""
    header = copy_record("ptbxl_cinc2021/HR06000", tmp_path)
    lines = header.read_text().splitlines()
    lines[0] = lines[0] + " 10:20:30 25/12/2020"
    lines[1] = lines[1].replace("1000.0(0)/mv 16 0", "1000 16 0")
    lines[2] = lines[2].replace("1000.0(0)/mv 16 0", "500/uV 16 37")
    lines[3] = lines[3].replace("1000.0(0)/mv 16 0", "2.5e2(-12) 16 5")
    lines.insert(5, "# a comment between signal lines")
    header.write_text("\n".join(lines) + "\n")
    path = str(header.with_suffix(""))
    expected_units = wfdb.rdrecord(path).units
    assert expected_units[:3] == ["mV", "uV", "mV"]
    with monkeypatch.context() as patch:
        _forbid_wfdb(patch)
        read = read_wfdb(path)
    _assert_same_as_wfdb(path, read)


def test_missing_samples_become_nan(tmp_path, monkeypatch):
    signal = np.sin(np.linspace(0, 20, 3000)).reshape(1000, 3)
    signal[100:110, 1] = np.nan
    wfdb.wrsamp(
        "nan16", fs=250, units=["mV"] * 3, sig_name=["I", "II", "V1"], p_signal=signal, fmt=["16"] * 3,
        write_dir=str(tmp_path),
    )  # fmt: skip
    path = str(tmp_path / "nan16")
    with monkeypatch.context() as patch:
        _forbid_wfdb(patch)
        read = read_wfdb(path)
    assert np.isnan(read[0][1, 100:110]).all() and np.isnan(read[0]).sum() == 10
    _assert_same_as_wfdb(path, read)


def test_other_formats_are_read_by_wfdb(tmp_path, monkeypatch):
    signal = np.cos(np.linspace(0, 20, 2000)).reshape(1000, 2)
    wfdb.wrsamp(
        "rec212", fs=360, units=["mV", "mV"], sig_name=["II", "V5"], p_signal=signal, fmt=["212", "212"],
        write_dir=str(tmp_path),
    )  # fmt: skip
    path = str(tmp_path / "rec212")
    assert read_format16(path) is None
    calls = _count_wfdb_calls(monkeypatch)
    read = read_wfdb(path)
    assert calls == [path]
    monkeypatch.undo()
    _assert_same_as_wfdb(path, read)


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("HR06000 12", "HR06000/2 12"),  # multi-segment record line
        ("16x1+24", "16x2+24"),  # two samples per frame
        ("16x1+24", "16:3+24"),  # skew
        ("16x1+24", "212+24"),  # another format
        ("1000.0(0)/mv", "1000.0(0)/m V"),  # units wfdb would split
    ],
    ids=["multi-segment", "samples-per-frame", "skew", "format-212", "odd-units"],
)
def test_headers_outside_the_fast_subset_fall_back(tmp_path, old, new):
    header = copy_record("ptbxl_cinc2021/HR06000", tmp_path)
    text = header.read_text()
    assert old in text
    header.write_text(text.replace(old, new, 1))
    assert read_format16(str(header.with_suffix(""))) is None


def _damage_and_compare(header: Path) -> RecordRejected:
    """read_wfdb rejects the record with the same reason and detail as the wfdb path does."""
    path = str(header.with_suffix(""))
    with pytest.raises(RecordRejected) as wfdb_way:
        _read_wfdb_with_wfdb(path, header)
    with pytest.raises(RecordRejected) as ours:
        read_wfdb(path)
    assert (ours.value.reason, ours.value.detail) == (wfdb_way.value.reason, wfdb_way.value.detail)
    return ours.value


def test_truncated_signal_file_is_a_corrupt_file(tmp_path):
    header = copy_record("chapman_shaoxing_ningbo_cinc2021/JS20001", tmp_path)
    mat = header.with_suffix(".mat")
    mat.write_bytes(mat.read_bytes()[:20000])
    assert _damage_and_compare(header).reason == "corrupt_file"


def test_header_claiming_more_samples_than_the_file_holds_is_a_corrupt_file(tmp_path):
    header = copy_record("ptbxl_cinc2021/HR06000", tmp_path)
    header.write_text(header.read_text().replace("HR06000 12 500 5000", "HR06000 12 500 5001", 1))
    assert read_format16(str(header.with_suffix(""))) is None
    assert _damage_and_compare(header).reason == "corrupt_file"


def test_truncated_second_signal_file_is_a_corrupt_file(tmp_path):
    header = copy_record("physionet_wfdb_misc/ptbdb/s0010_re", tmp_path)
    xyz = header.with_suffix(".xyz")
    xyz.write_bytes(xyz.read_bytes()[:-2])
    assert _damage_and_compare(header).reason == "corrupt_file"


def test_missing_second_signal_file_is_a_missing_file(tmp_path):
    header = copy_record("physionet_wfdb_misc/ptbdb/s0010_re", tmp_path)
    header.with_suffix(".xyz").unlink()
    assert _damage_and_compare(header).reason == "missing_file"


@pytest.mark.parametrize(
    "damage",
    [
        lambda text: text.replace(".mat 16x1+24", ".mat sixteen", 1),  # corrupt signal line
        lambda text: text.replace("JS20000 12 500 5000", "JS20000 twelve leads", 1),  # corrupt record line
        lambda text: text.replace("JS20000 12 500 5000", "JS20000 12 500 5000 99:99:99", 1),  # bad base time
        lambda text: "\n".join(text.splitlines()[:6]) + "\n",  # signal lines cut off
    ],
    ids=["signal-line", "record-line", "base-time", "cut-header"],
)
def test_corrupt_headers_keep_wfdb_errors(tmp_path, damage):
    header = copy_record("chapman_shaoxing_ningbo_cinc2021/JS20000", tmp_path)
    header.write_text(damage(header.read_text()))
    assert read_format16(str(header.with_suffix(""))) is None
    assert _damage_and_compare(header).reason == "corrupt_file"


def test_missing_header_is_a_missing_file(tmp_path):
    with pytest.raises(RecordRejected) as err:
        read_wfdb(str(tmp_path / "nothing"))
    assert err.value.reason == "missing_file"
