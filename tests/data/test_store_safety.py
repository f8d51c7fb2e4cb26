"""Issue 7, the segment store under bad inputs and faults: nothing the user has is deleted or overwritten,
one writer per store, resumption checks what it resumes, damage is noticed, and every failure is one line
naming the file. Stores are prepared from the bundled real sample (``--limit`` keeps them small)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from ecgbench.cli import app
from ecgbench.data import store as store_module
from ecgbench.data.prepare import prepare
from ecgbench.data.store import SegmentStore, StoreLock, StoreWriter, store_state
from ecgbench.errors import describe_os_error
from ecgbench.resources import SAMPLE_DIR
from ecgbench.settings import DataSettings

runner = CliRunner()
ECGBENCH = Path(sys.executable).parent / "ecgbench"
LIMIT = 12  # records of the bundled sample: PTB-XL, its Challenge copies, CPSC 2018 (some long ones)
SMALL = DataSettings(shard_segments=7)  # several shards, so resumption has commits to check


def run(*args: str):
    result = runner.invoke(app, [str(a) for a in args])
    assert "Traceback" not in result.output, result.output
    return result


def fails(*args: str) -> str:
    result = run(*args)
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, result.output
    return lines[0]


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> SegmentStore:
    """The first LIMIT sample records, prepared in one uninterrupted run."""
    return prepare("sample", None, tmp_path_factory.mktemp("ref") / "store", SMALL, limit=LIMIT).store


def same_store(a: SegmentStore, b: SegmentStore) -> None:
    assert len(a) == len(b)
    assert a.index.drop_columns(["shard", "offset"]).equals(b.index.drop_columns(["shard", "offset"]))
    np.testing.assert_array_equal(a.read_many(range(len(a))), b.read_many(range(len(b))))
    assert a.manifest["counts"] == b.manifest["counts"]
    assert sorted(p.name for p in (a.path / "shards").iterdir()) == [
        Path(s["file"]).name for s in a.manifest["shards"]
    ]
    assert not (a.path / ".progress").exists() and not (a.path / ".lock").exists()


def kill_after_commits(monkeypatch, commits: int) -> None:
    """The next preparation stops (as if killed) right after its ``commits``-th commit."""
    real_commit = StoreWriter.commit
    calls = {"n": 0}

    def commit_then_die(self):
        real_commit(self)
        calls["n"] += 1
        if calls["n"] == commits:
            raise KeyboardInterrupt

    monkeypatch.setattr(StoreWriter, "commit", commit_then_die)


# ------------------------------------------------------------------- 1: --overwrite deletes nothing of yours


def test_overwrite_refuses_a_folder_whose_manifest_is_not_a_store(tmp_path):
    proj = tmp_path / "proj"
    (proj / "src").mkdir(parents=True)
    (proj / "manifest.json").write_text('{"name":"app"}')
    (proj / "src" / "thesis.tex").write_text("x")
    line = fails("data", "prepare", "sample", "--out", proj, "--overwrite")
    assert "not a segment store" in line and str(proj) in line
    assert (proj / "src" / "thesis.tex").read_text() == "x"
    assert (proj / "manifest.json").read_text() == '{"name":"app"}'
    assert sorted(p.name for p in proj.iterdir()) == ["manifest.json", "src"]  # no lock left behind
    assert store_state(proj) == "foreign"


def test_overwrite_of_a_store_removes_only_the_store_files(tmp_path):
    out = tmp_path / "store"
    assert run("data", "prepare", "sample", "--out", out, "--limit", 3).exit_code == 0
    (out / "notes.txt").write_text("my notes")
    (out / "shards" / "README").write_text("mine too")
    result = run("data", "prepare", "sample", "--out", out, "--limit", 3, "--seg-len", 1000, "--overwrite")
    assert result.exit_code == 0, result.output
    assert (out / "notes.txt").read_text() == "my notes" and (out / "shards" / "README").exists()
    assert SegmentStore.open(out).seg_len == 1000


def test_a_shard_job_into_a_finished_store_is_refused(tmp_path, reference):
    out = tmp_path / "store"
    shutil.copytree(reference.path, out)
    line = fails("data", "prepare", "sample", "--out", out, "--limit", LIMIT, "--shard", "0/2")
    assert "already holds a finished store" in line
    assert not list(out.glob("part-*"))


def test_a_progress_folder_of_someone_else_is_not_taken_for_a_store(tmp_path):
    out = tmp_path / "work"
    (out / ".progress").mkdir(parents=True)
    (out / ".progress" / "todo.txt").write_text("keep")
    assert "not a segment store" in fails("data", "prepare", "sample", "--out", out, "--overwrite")
    assert (out / ".progress" / "todo.txt").read_text() == "keep"


# ------------------------------------------------------------------- 2: outputs inside a store are refused


def test_outputs_inside_a_store_are_refused(tmp_path, sample_store):
    store = tmp_path / "store"
    shutil.copytree(sample_store, store)
    index = (store / "index.parquet").read_bytes()
    line = fails("data", "sample", "--store", store, "--out", store / "index.parquet", "--sample-size", 4)
    assert "inside the segment store" in line
    assert (store / "index.parquet").read_bytes() == index
    for args in (
        [
            "data",
            "sample",
            "--store",
            store,
            "--out",
            tmp_path / "s.parquet",
            "--npy",
            store / "shards/x.npy",
        ],
        ["data", "split", "--store", store, "--out", store / "splits"],
        ["data", "stats", "--store", store, "--out", store],
        ["data", "plot", "--store", store, "--segment", 0, "--out", store / "shards" / "p.png"],
        ["data", "prepare", "sample", "--out", store / "shards" / "inner", "--limit", 2],
    ):
        assert "inside the segment store" in fails(*args), args
    assert SegmentStore.open(store).verify() is None
    assert sorted(p.name for p in store.iterdir()) == sorted(p.name for p in sample_store.iterdir())


def test_prepare_refuses_an_out_in_or_around_the_corpus(tmp_path):
    root = tmp_path / "cpsc2018"
    shutil.copytree(SAMPLE_DIR / "cpsc2018", root)
    for out in (root, root / "store", tmp_path):
        assert "overlap" in fails("data", "prepare", "cpsc", "--root", root, "--out", out), out
    assert sorted(p.name for p in root.iterdir()) == ["REFERENCE.csv", "TrainingSet"]


def test_split_refuses_to_overwrite_its_input_set(tmp_path, sample_store):
    sets = tmp_path / "sets"
    result = run("data", "map", "labels", "--store", sample_store, "--out", sets)
    assert result.exit_code == 0, result.output
    before = (sets / "labels.parquet").read_bytes()
    line = fails("data", "split", "--store", sample_store, "--sets", sets / "labels.parquet", "--out", sets)
    assert "is also an input" in line
    assert (sets / "labels.parquet").read_bytes() == before


# ------------------------------------------------------------------------------- 3: one writer per store


def test_second_prepare_fails_at_once_naming_the_holder(tmp_path):
    out = tmp_path / "store"
    with StoreLock(out):
        started = time.perf_counter()
        line = fails("data", "prepare", "sample", "--out", out, "--bandpass-low", "1.0")
        assert time.perf_counter() - started < 30
    assert "being written by another" in line and f"pid {os.getpid()}" in line
    assert socket.gethostname() in line
    assert store_state(out) == "empty" and not (out / ".lock").exists()


def test_stale_lock_of_a_dead_process_is_taken_over(tmp_path):
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    out = tmp_path / "store"
    out.mkdir()
    holder = {"pid": int(dead.stdout), "host": socket.gethostname(), "started": "2024-01-01T00:00:00+00:00"}
    (out / ".lock").write_text(json.dumps(holder))
    result = run("data", "prepare", "sample", "--out", out, "--limit", 2)
    assert result.exit_code == 0, result.output
    assert not (out / ".lock").exists() and len(SegmentStore.open(out)) > 0


def test_concurrent_prepare_with_other_settings_is_refused_and_the_first_is_intact(tmp_path, sample_store):
    out = tmp_path / "store"
    first = subprocess.Popen(
        [str(ECGBENCH), "data", "prepare", "sample", "--out", str(out)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while not (out / ".lock").exists() and first.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert (out / ".lock").exists(), "the first run never took the lock"
        line = fails("data", "prepare", "sample", "--out", out, "--bandpass-low", "1.0")
        assert f"pid {first.pid}" in line
        assert first.wait(timeout=120) == 0, first.stderr.read()
    finally:
        first.kill()
        first.wait()
    finished = SegmentStore.open(out)
    assert finished.manifest["parameters"]["bandpass_low"] == 0.5
    same_store(finished, SegmentStore.open(sample_store))


# ------------------------------------------------------------------- 4, 19, 22: resumption checks its parts


def test_resume_redoes_a_committed_shard_that_was_deleted(tmp_path, reference, monkeypatch):
    out = tmp_path / "store"
    kill_after_commits(monkeypatch, 3)
    with pytest.raises(KeyboardInterrupt):
        prepare("sample", None, out, SMALL, limit=LIMIT)
    monkeypatch.undo()
    (out / "shards/shard-00001.npy").unlink()
    result = run("data", "prepare", "sample", "--out", out, "--limit", LIMIT, "--shard-segments", 7)
    assert result.exit_code == 0, result.output
    assert "shard-00001.npy is missing" in result.output and "preparing it again" in result.output
    same_store(SegmentStore.open(out), reference)


def test_resume_redoes_a_committed_shard_that_was_altered(tmp_path, reference, monkeypatch):
    out = tmp_path / "store"
    kill_after_commits(monkeypatch, 2)
    with pytest.raises(KeyboardInterrupt):
        prepare("sample", None, out, SMALL, limit=LIMIT)
    monkeypatch.undo()
    shard = out / "shards/shard-00000.npy"
    data = bytearray(shard.read_bytes())
    data[-16:] = bytes(16)  # finite values: only the checksum can tell
    shard.write_bytes(bytes(data))
    same_store(prepare("sample", None, out, SMALL, limit=LIMIT).store, reference)


def test_deleted_progress_part_is_redone_not_a_bare_path(tmp_path, reference, monkeypatch):
    out = tmp_path / "store"
    kill_after_commits(monkeypatch, 3)
    with pytest.raises(KeyboardInterrupt):
        prepare("sample", None, out, SMALL, limit=LIMIT)
    monkeypatch.undo()
    (out / ".progress/index-00000.parquet").unlink()
    result = run("data", "prepare", "sample", "--out", out, "--limit", LIMIT, "--shard-segments", 7)
    assert result.exit_code == 0, result.output
    assert "index-00000.parquet is missing or unreadable" in result.output
    same_store(SegmentStore.open(out), reference)


def test_a_path_alone_is_never_the_whole_error():
    assert describe_os_error(FileNotFoundError("kX/.progress/index-00000.parquet")) == (
        "file not found: kX/.progress/index-00000.parquet"
    )


def test_leftover_progress_in_a_finished_store_is_cleaned_up(tmp_path, reference):
    out = tmp_path / "store"
    shutil.copytree(reference.path, out)
    (out / ".progress").mkdir()
    (out / ".progress" / "state.json").write_text("{}")
    (out / ".progress" / "index-00000.parquet").write_bytes(b"left over")
    (out / ".index.parquet.tmp-4242").write_bytes(b"half")
    again = prepare("sample", None, out, SMALL, limit=LIMIT)
    assert again.skipped
    assert not (out / ".progress").exists() and not (out / ".index.parquet.tmp-4242").exists()


def test_finished_store_with_a_deleted_shard_is_not_reported_done(tmp_path, reference):
    out = tmp_path / "store"
    shutil.copytree(reference.path, out)
    (out / "shards/shard-00001.npy").unlink()
    line = fails("data", "prepare", "sample", "--out", out, "--limit", LIMIT, "--shard-segments", 7)
    assert "is damaged" in line and "shard-00001.npy is missing" in line and "--overwrite" in line


def test_stale_files_of_a_run_killed_before_its_first_commit_are_removed(tmp_path, reference, monkeypatch):
    out = tmp_path / "store"
    real_write_json = store_module.write_json
    calls = {"n": 0}

    def die_at_first_commit(path, value):
        if path.name == "state.json":
            calls["n"] += 1
            if calls["n"] == 2:  # the shard and index part of commit 0 are on disk, its state is not
                raise KeyboardInterrupt
        real_write_json(path, value)

    monkeypatch.setattr(store_module, "write_json", die_at_first_commit)
    with pytest.raises(KeyboardInterrupt):
        prepare("sample", None, out, SMALL, limit=LIMIT)
    monkeypatch.undo()
    assert (out / "shards/shard-00000.npy").exists()
    # what a kill -9 in the middle of a shard write leaves: the writer's temporary file
    (out / "shards" / ".shard-00000.npy.tmp-99999").write_bytes(b"\x93NUMPY half a shard")
    same_store(prepare("sample", None, out, SMALL, limit=LIMIT).store, reference)


def test_killed_before_the_first_state_leaves_a_store_that_resumes(tmp_path, reference):
    # The layout of a run killed between creating its folders and writing its first state.
    out = tmp_path / "store"
    (out / ".progress").mkdir(parents=True)
    (out / "shards").mkdir()
    (out / "shards" / ".shard-00000.npy.tmp-12345").write_bytes(b"partial")
    (out / "shards" / "shard-00000.npy").write_bytes(b"stale")
    assert store_state(out) == "partial"
    same_store(prepare("sample", None, out, SMALL, limit=LIMIT).store, reference)


def test_damaged_progress_state_is_one_line_and_overwrite_recovers(tmp_path, monkeypatch):
    out = tmp_path / "store"
    kill_after_commits(monkeypatch, 1)
    with pytest.raises(KeyboardInterrupt):
        prepare("sample", None, out, SMALL, limit=LIMIT)
    monkeypatch.undo()
    (out / ".progress" / "state.json").write_text('{"fingerprint": {"corp')
    line = fails("data", "prepare", "sample", "--out", out, "--limit", LIMIT, "--shard-segments", 7)
    assert "state.json is not valid JSON" in line and "--overwrite" in line
    args = ["data", "prepare", "sample", "--out", out, "--limit", LIMIT, "--shard-segments", 7, "--overwrite"]
    assert run(*args).exit_code == 0


# --------------------------------------------------------------------------- 14: index of the wrong schema


@pytest.fixture
def copied_store(tmp_path, sample_store) -> Path:
    store = tmp_path / "store"
    shutil.copytree(sample_store, store)
    return store


def test_index_with_the_wrong_schema_is_one_line_in_every_command(tmp_path, copied_store):
    index = pq.read_table(copied_store / "index.parquet")
    pq.write_table(index.drop_columns(["labels"]), copied_store / "index.parquet")
    commands = [
        ["data", "stats", "--store", copied_store],
        ["data", "split", "--store", copied_store, "--out", tmp_path / "split"],
        ["data", "plot", "--store", copied_store, "--record", "1", "--out", tmp_path / "p.png"],
        ["data", "map", "labels", "--store", copied_store, "--out", tmp_path / "sets"],
    ]
    message = "index.parquet is not a segment-store index: it lacks the columns labels"
    for args in commands:
        assert message in fails(*args), args
    verified = run("data", "verify", copied_store)
    assert verified.exit_code == 2 and message in verified.output
    retyped = index.set_column(
        index.schema.get_field_index("record_id"), "record_id", pa.array(range(len(index)), pa.int64())
    )
    pq.write_table(retyped, copied_store / "index.parquet")
    assert "column 'record_id' is int64, expected string" in fails("data", "stats", "--store", copied_store)


# ------------------------------------------------------------------------------- 15: damaged shard data


def _damage(store: Path, fill: bytes) -> int:
    """Overwrite 16 bytes inside segment 1 of shard 0; returns that segment's id."""
    shard = store / "shards/shard-00000.npy"
    array = np.load(shard, mmap_mode="r")
    header = shard.stat().st_size - array.nbytes
    data = bytearray(shard.read_bytes())
    at = header + array[0].nbytes + 400
    data[at : at + 16] = fill
    shard.write_bytes(bytes(data))
    return 1


def test_nan_damage_is_noticed_by_every_reader(tmp_path, copied_store):
    segment = _damage(copied_store, b"\xff" * 16)  # float32 NaNs
    line = fails(
        "data", "sample", "--store", copied_store, "--out", tmp_path / "s.parquet", "--sample-size", 10
    )
    assert "holds NaN or Inf values: the shard is damaged" in line and "ecgbench data verify" in line
    line = fails("data", "plot", "--store", copied_store, "--segment", segment, "--out", tmp_path / "p.png")
    assert "does not match its checksum" in line
    store = SegmentStore.open(copied_store)
    store.read(0)  # the undamaged segments of the shard still read
    with pytest.raises(store_module.CorruptFileError, match=f"segment {segment} .* NaN"):
        store.read_many([0, segment])


def test_finite_damage_is_found_by_checksums(tmp_path, copied_store):
    _damage(copied_store, bytes(16))  # zeros: plausible values, only the checksum can tell
    result = run("data", "verify", copied_store)
    assert result.exit_code == 2
    assert "shard-00000.npy does not match its checksum" in result.output
    assert "1 problem(s) found" in result.output
    line = fails("data", "plot", "--store", copied_store, "--segment", 2, "--out", tmp_path / "p.png")
    assert "does not match its checksum" in line
    assert "checksum" in fails("data", "export", copied_store, "--out", tmp_path / "hf")


def test_verify_passes_an_intact_store(sample_store):
    result = run("data", "verify", sample_store)
    assert result.exit_code == 0 and "checksums match" in result.output


def test_a_float16_overflow_is_rejected_not_stored_as_inf(tmp_path, monkeypatch):
    from ecgbench.data import prepare as prepare_module

    real = prepare_module.process_record

    def amplified(raw, *args, **kwargs):  # a record whose values do not fit float16 (e.g. wrong units)
        processed = real(raw, *args, **kwargs)
        if raw.ref.record_id == "1":
            processed.segments *= 1e5
        return processed

    monkeypatch.setattr(prepare_module, "process_record", amplified)
    store = prepare("sample", None, tmp_path / "s", DataSettings(dtype="float16"), limit=3).store
    assert store.manifest["counts"]["rejected"] == {"out_of_range": 1}
    assert "1" not in {record for _, record in store.records()}
    assert np.isfinite(store.read_many(range(len(store)))).all()


# ---------------------------------------------------------------------------------------- 20: disk full


def _unshare_works() -> bool:
    probe = (
        subprocess.run(["unshare", "-rm", "true"], capture_output=True) if shutil.which("unshare") else None
    )
    return probe is not None and probe.returncode == 0


@pytest.mark.skipif(
    not _unshare_works(), reason="needs `unshare -rm` (user and mount namespaces) for a tmpfs"
)
def test_disk_full_during_a_shard_write_names_the_file(tmp_path):
    # A real full disk: a 512 KB tmpfs in a private mount namespace; the shard of ten records needs 1.3 MB.
    disk = tmp_path / "disk"
    disk.mkdir()
    prepare_ten = f'"{ECGBENCH}" data prepare sample --limit 10 --out "{disk}/s"'
    script = f'mount -t tmpfs -o size=512k tmpfs "{disk}" && exec {prepare_ten}'
    done = subprocess.run(["unshare", "-rm", "sh", "-c", script], capture_output=True, text=True, timeout=180)
    assert done.returncode == 2, done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in done.stderr
    assert f"cannot write {disk}/s/shards/shard-00000.npy: the disk is full" in errors[0]


def test_short_write_names_the_file_and_the_cause(tmp_path):
    # The same numpy short write without a namespace: a file-size limit stops the shard write.
    out = tmp_path / "s"
    code = (
        "import resource, signal; signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
        "resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 19, 1 << 19)); "
        f"from ecgbench.cli import main; import sys; sys.argv = ['ecgbench', 'data', 'prepare', 'sample', "
        f"'--limit', '10', '--out', {str(out)!r}]; main()"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=180)
    assert done.returncode == 2, done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in done.stderr
    assert f"cannot write {out}/shards/shard-00000.npy" in errors[0]
    assert "requested and" not in errors[0]
    assert "values were written (a full disk, a quota or a file-size limit" in errors[0]
