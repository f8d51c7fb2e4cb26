"""ecgbench.files: atomic writes, Parquet / versioned-JSON / TOML reads with one-line errors, and digests."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pyarrow as pa
import pytest

from ecgbench.errors import CorruptFileError, UserError
from ecgbench.files import (
    atomic_write,
    read_folder_document,
    read_json_document,
    read_parquet,
    read_toml,
    sha256_file,
    sha256_path,
    write_parquet,
)
from ecgbench.resources import RECIPES_DIR, SAMPLE_DIR

PTBXL = SAMPLE_DIR / "ptbxl"  # real PTB-XL metadata and 100 Hz records (see resources/sample/README.md)


def test_atomic_write_replaces_the_file_and_leaves_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "deep" / "out.txt"
    atomic_write(target, lambda tmp: tmp.write_text("first"))
    atomic_write(target, lambda tmp: tmp.write_text("second"))
    assert target.read_text() == "second"
    assert sorted(p.name for p in target.parent.iterdir()) == ["out.txt"]


def test_interrupted_atomic_write_keeps_the_old_file(tmp_path: Path) -> None:
    target = tmp_path / "out.txt"
    target.write_text("old")

    def half_then_fail(tmp: Path) -> None:
        tmp.write_text("half of the new")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(target, half_then_fail)
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]


def test_parquet_round_trip_of_real_metadata(tmp_path: Path) -> None:
    lines = (PTBXL / "ptbxl_database.csv").read_text(encoding="utf-8").splitlines()
    header = lines[0].split(",")
    table = pa.table({"line": lines[1:], "columns": [len(header)] * (len(lines) - 1)})
    path = write_parquet(tmp_path / "meta.parquet", table)
    assert read_parquet(path, "metadata table").equals(table)


def test_parquet_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="splits file not found"):
        read_parquet(tmp_path / "absent.parquet", "splits file")
    not_parquet = tmp_path / "scp.parquet"
    shutil.copy(PTBXL / "scp_statements.csv", not_parquet)  # a real file, but CSV
    with pytest.raises(CorruptFileError, match="not a readable Parquet file"):
        read_parquet(not_parquet, "splits file")
    real = write_parquet(tmp_path / "cut.parquet", pa.table({"x": list(range(1000))}))
    real.write_bytes(real.read_bytes()[:200])  # truncated
    with pytest.raises(CorruptFileError, match=str(real)):
        read_parquet(real, "splits file")


def _document(tmp_path: Path, value: object) -> Path:
    path = tmp_path / "doc.json"
    path.write_text(value if isinstance(value, str) else json.dumps(value), encoding="utf-8")
    return path


def test_versioned_json_documents(tmp_path: Path) -> None:
    read = lambda path: read_json_document(path, fmt="ecgbench-thing", what="a thing", version=2)  # noqa: E731
    assert read(_document(tmp_path, {"format": "ecgbench-thing", "version": 1, "x": 3}))["x"] == 3
    cases = {
        '{"format": "ecgbench-thing", "vers': (CorruptFileError, "not valid JSON"),
        json.dumps({"format": "other", "version": 1}): (CorruptFileError, "is not a thing"),
        json.dumps([1, 2]): (CorruptFileError, "is not a thing"),
        json.dumps({"format": "ecgbench-thing"}): (CorruptFileError, "no valid 'version'"),
        json.dumps({"format": "ecgbench-thing", "version": "2"}): (CorruptFileError, "no valid 'version'"),
        json.dumps({"format": "ecgbench-thing", "version": 3}): (UserError, "upgrade ecgbench"),
    }
    for text, (error, message) in cases.items():
        with pytest.raises(error, match=message):
            read(_document(tmp_path, text))
    with pytest.raises(UserError, match="cannot read"):
        read(tmp_path)  # a folder where the file should be


def test_folder_documents(tmp_path: Path) -> None:
    folder = tmp_path / "ckpt"
    with pytest.raises(UserError, match="checkpoint folder not found"):
        read_folder_document(folder, "config.json", kind="checkpoint", fmt="f", version=1)
    folder.mkdir()
    with pytest.raises(UserError, match=r"is not an checkpoint \(no config.json\)"):
        read_folder_document(folder, "config.json", kind="checkpoint", fmt="f", version=1)
    (folder / "config.json").write_text(json.dumps({"format": "f", "format_version": 1}))
    found = read_folder_document(
        folder, "config.json", kind="checkpoint", fmt="f", version=1, version_key="format_version"
    )
    assert found["format_version"] == 1


def test_digests_of_real_files(tmp_path: Path) -> None:
    csv = PTBXL / "scp_statements.csv"
    assert sha256_file(csv) == hashlib.sha256(csv.read_bytes()).hexdigest()
    assert sha256_path(csv) == sha256_file(csv)
    copy = tmp_path / "ptbxl"
    shutil.copytree(PTBXL, copy)
    assert sha256_path(copy) == sha256_path(PTBXL)  # names relative to the folder, not where it lives
    (copy / "scp_statements.csv").rename(copy / "renamed.csv")
    assert sha256_path(copy) != sha256_path(PTBXL)  # a file's name is part of the folder's digest


def test_toml_files(tmp_path: Path) -> None:
    recipe = read_toml(RECIPES_DIR / "quickstart.toml", "recipe")
    assert recipe["stages"][0]["name"] == "prepare"
    with pytest.raises(UserError, match="config file not found"):
        read_toml(tmp_path / "absent.toml", "config file")
    broken = tmp_path / "broken.toml"
    broken.write_text("[data\nseg_len = 3\n")
    with pytest.raises(UserError, match=f"config file {broken} is not valid TOML"):
        read_toml(broken, "config file")
    latin = tmp_path / "latin.toml"
    latin.write_bytes("name = 'caf\xe9'\n".encode("latin-1"))
    with pytest.raises(UserError, match="is not valid TOML"):
        read_toml(latin, "recipe")
