"""The segment store: interface B, lazy opening, O(1) reads, corruption, atomic commits and resume."""

from __future__ import annotations

import json
import time

import numpy as np
import pyarrow.parquet as pq
import pytest

from ecgbench.data import store as store_module
from ecgbench.data.prepare import prepare
from ecgbench.data.store import INDEX_SCHEMA, SegmentStore, StoreWriter
from ecgbench.errors import CorruptFileError, UserError
from ecgbench.settings import DataSettings

INTERFACE_B_COLUMNS = [
    "segment_id", "corpus", "record_id", "patient_id", "segment_index", "shard", "offset", "fs", "n_samples",
    "labels", "report", "report_original", "age", "sex", "source_path", "flat_leads", "saturated",
    "nan_filled", "meta",
]  # fmt: skip


@pytest.fixture(scope="module")
def small_shards(tmp_path_factory):
    """The bundled sample in shards of at most 7 segments (several shards, split between records)."""
    out = tmp_path_factory.mktemp("store") / "sample"
    return prepare("sample", None, out, DataSettings(shard_segments=7)).store


def test_store_follows_interface_b(small_shards):
    store = SegmentStore.open(small_shards.path)
    assert (
        "_records" not in store.__dict__ and "index" not in store.__dict__
    )  # opening reads the manifest only
    assert (store.fs, store.seg_len, store.corpus, len(store)) == (250, 1250, "sample", 68)
    assert store.index.schema.names[: len(INTERFACE_B_COLUMNS)] == INTERFACE_B_COLUMNS
    assert store.index.schema == INDEX_SCHEMA
    assert store.index.column("segment_id").to_pylist() == list(range(68))
    assert len(store.manifest["shards"]) > 5
    assert all(s["segments"] <= 7 for s in store.manifest["shards"])
    segment = store.read(10)
    assert segment.dtype == np.float32 and segment.shape == (12, 1250)
    row = store.index.slice(10, 1).to_pylist()[0]
    shard = np.load(store.path / f"shards/shard-{row['shard']:05d}.npy", mmap_mode="r")
    np.testing.assert_array_equal(segment, shard[row["offset"]])
    records = store.records()
    js00666 = records[("csn", "JS00666")]
    assert records[("ptbxl", "1")] == [0, 1] and js00666 == sorted(js00666)
    assert sum(len(v) for v in records.values()) == 68


def test_read_many_matches_read_in_any_order(small_shards):
    ids = [67, 0, 33, 33, 12, 5]
    many = small_shards.read_many(ids)
    for k, i in enumerate(ids):
        np.testing.assert_array_equal(many[k], small_shards.read(i))
    with pytest.raises(IndexError):
        small_shards.read(68)
    with pytest.raises(IndexError):
        small_shards.read_many([0, -1])


def test_float16_store_is_half_the_size_and_close(tmp_path, small_shards):
    half = prepare("sample", None, tmp_path / "f16", DataSettings(dtype="float16")).store
    assert half.dtype == np.float16
    assert half.read(3).dtype == np.float32
    np.testing.assert_allclose(half.read_many(range(68)), small_shards.read_many(range(68)), atol=2e-3)


def test_truncated_or_altered_shard_is_a_corruption_error(tmp_path):
    store = prepare("sample", None, tmp_path / "s", DataSettings(shard_segments=20)).store
    shard = store.path / store.manifest["shards"][1]["file"]
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) // 2])
    reopened = SegmentStore.open(store.path)
    reopened.read(0)  # other shards still read
    with pytest.raises(CorruptFileError, match="truncated"):
        reopened.read(25)
    shard.write_bytes(data[:-8] + b"\x00" * 8)  # same size, different bytes
    with pytest.raises(CorruptFileError, match="checksum"):
        SegmentStore.open(store.path).verify()


def test_opening_something_else_is_a_clear_error(tmp_path):
    with pytest.raises(UserError, match="not a segment store"):
        SegmentStore.open(tmp_path)
    (tmp_path / "manifest.json").write_text("{ truncated")
    with pytest.raises(CorruptFileError, match="not valid JSON"):
        SegmentStore.open(tmp_path)
    (tmp_path / "manifest.json").write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(CorruptFileError):
        SegmentStore.open(tmp_path)


def _same_store(a: SegmentStore, b: SegmentStore) -> None:
    assert len(a) == len(b)
    assert a.index.drop_columns(["shard", "offset"]).equals(b.index.drop_columns(["shard", "offset"]))
    np.testing.assert_array_equal(a.read_many(range(len(a))), b.read_many(range(len(b))))
    assert a.manifest["counts"] == b.manifest["counts"]


def test_killed_run_resumes_without_gaps_or_duplicates(tmp_path, small_shards, monkeypatch):
    real_commit = StoreWriter.commit
    calls = {"n": 0}

    def commit_then_die(self):
        real_commit(self)
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt  # the process is stopped right after a commit

    monkeypatch.setattr(StoreWriter, "commit", commit_then_die)
    out = tmp_path / "resumed"
    with pytest.raises(KeyboardInterrupt):
        prepare("sample", None, out, DataSettings(shard_segments=7))
    assert not (out / "manifest.json").exists()
    state = json.loads((out / ".progress/state.json").read_text())
    assert 0 < state["records_done"] < 28
    monkeypatch.setattr(StoreWriter, "commit", real_commit)
    _same_store(prepare("sample", None, out, DataSettings(shard_segments=7)).store, small_shards)


def test_crash_inside_a_commit_leaves_no_orphans(tmp_path, small_shards, monkeypatch):
    real_write_json = store_module.write_json
    calls = {"n": 0}

    def die_before_second_state(path, value):
        if path.name == "state.json":
            calls["n"] += 1
            # the writer's first state.json (no commits yet), then commit 0, then commit 1:
            if calls["n"] == 3:
                raise OSError("disk full")  # shard 1 and its index part are on disk, the state is not
        real_write_json(path, value)

    monkeypatch.setattr(store_module, "write_json", die_before_second_state)
    out = tmp_path / "crashed"
    with pytest.raises(OSError):
        prepare("sample", None, out, DataSettings(shard_segments=7))
    assert (out / "shards/shard-00001.npy").exists()
    monkeypatch.setattr(store_module, "write_json", real_write_json)
    resumed = prepare("sample", None, out, DataSettings(shard_segments=7)).store
    _same_store(resumed, small_shards)
    assert sorted(p.name for p in (out / "shards").iterdir()) == [
        f"shard-{i:05d}.npy" for i in range(len(resumed.manifest["shards"]))
    ]


def test_resume_with_other_settings_is_refused(tmp_path, monkeypatch):
    real_commit = StoreWriter.commit

    def die(self):
        real_commit(self)
        raise KeyboardInterrupt

    monkeypatch.setattr(StoreWriter, "commit", die)
    with pytest.raises(KeyboardInterrupt):
        prepare("sample", None, tmp_path / "s", DataSettings(shard_segments=7))
    monkeypatch.setattr(StoreWriter, "commit", real_commit)
    with pytest.raises(UserError, match="other settings"):
        prepare("sample", None, tmp_path / "s", DataSettings(shard_segments=7, seg_len=1000))
    store = prepare("sample", None, tmp_path / "s", DataSettings(seg_len=1000), overwrite=True).store
    assert store.seg_len == 1000


def test_second_run_is_a_no_op(tmp_path):
    out = tmp_path / "s"
    first = prepare("sample", None, out, DataSettings())
    stamp = (out / "manifest.json").stat().st_mtime_ns
    time.sleep(0.01)
    second = prepare("sample", None, out, DataSettings())
    assert second.skipped and not first.skipped
    assert (out / "manifest.json").stat().st_mtime_ns == stamp


def test_rejections_are_stored_with_reasons(tmp_path):
    store = prepare("sample", None, tmp_path / "s", DataSettings(seg_len=4000, target_fs=250)).store
    # 4000 samples at 250 Hz = 16 s: only two CPSC records and the PTB Diagnostic record are that long
    rejected = pq.read_table(store.path / "rejected.parquet").to_pylist()
    assert {r["reason"] for r in rejected} == {"too_short"}
    assert store.manifest["counts"]["rejected"] == {"too_short": len(rejected)}
    assert len(rejected) + store.manifest["counts"]["records_kept"] == 28
    kept = [("cpsc", "A0005"), ("cpsc", "A1984"), ("wfdb", "s0010_re")]  # 25 s, 19 s, 38.4 s
    assert sorted(store.records()) == kept
