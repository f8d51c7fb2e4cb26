"""File helpers every format of ours shares: atomic replacement, and Parquet and versioned-JSON reads with
one-line errors."""

from __future__ import annotations

import hashlib
import json
import os
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from ecgbench.errors import CorruptFileError, UserError


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Write through a temporary file in the same folder, flush it to disk, then rename over ``path``, so an
    interrupted run leaves either the old file or the new one, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        write(tmp)
        with tmp.open("rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_parquet(path: Path, table: pa.Table, compression: str = "zstd") -> Path:
    """``table`` written atomically to ``path``."""
    path = Path(path)
    atomic_write(path, lambda tmp: pq.write_table(table, tmp, compression=compression))
    return path


def read_parquet(path: Path, what: str) -> pa.Table:
    """A Parquet file; ``what`` names it in the error when it is missing (a user error) or unreadable."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{what} not found: {path}")
    try:
        return pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as exc:
        raise CorruptFileError(f"{path} is not a readable Parquet file: {exc}") from None


def read_json_document(
    path: Path, *, fmt: str, what: str, version: int, version_key: str = "version"
) -> dict[str, Any]:
    """A JSON object written by ecgbench: its ``format`` tag must be ``fmt`` and its version at most
    ``version`` (older versions are read; a newer one names the upgrade it needs)."""
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CorruptFileError(f"{path} is not valid JSON (truncated or damaged): {exc}") from None
    except OSError as exc:
        raise UserError(f"cannot read {path}: {exc.strerror or exc}") from None
    if not isinstance(document, dict) or document.get("format") != fmt:
        raise CorruptFileError(f"{path} is not {what} (expected format {fmt!r})")
    found = document.get(version_key)
    if type(found) is not int or found < 1:
        raise CorruptFileError(f"{path} has no valid {version_key!r}")
    if found > version:
        raise UserError(
            f"{path} has {what} format version {found}; this ecgbench reads up to {version}: upgrade ecgbench"
        )
    return document


def read_folder_document(
    directory: Path, name: str, *, kind: str, fmt: str, version: int, version_key: str = "version"
) -> dict[str, Any]:
    """The versioned JSON file ``name`` that marks ``directory`` as a ``kind`` (e.g. an ELM checkpoint)."""
    path = directory / name
    if not directory.is_dir():
        raise UserError(f"{kind} folder not found: {directory}")
    if not path.is_file():
        raise UserError(f"{directory} is not an {kind} (no {name})")
    return read_json_document(
        path, fmt=fmt, what=f"an ecgbench {kind} config", version=version, version_key=version_key
    )


def _hash_file(digest: Any, path: Path) -> None:
    with path.open("rb") as handle:
        while block := handle.read(1 << 22):
            digest.update(block)


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    _hash_file(digest, path)
    return digest.hexdigest()


def sha256_path(path: Path) -> str:
    """SHA-256 of a file, or of a folder's files (relative names and contents, in sorted order)."""
    if not path.is_dir():
        return sha256_file(path)
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(file.relative_to(path).as_posix().encode() + b"\0")
        _hash_file(digest, file)
    return digest.hexdigest()


def read_toml(path: Path, what: str) -> dict[str, Any]:
    """A TOML file the user wrote (``what``: "config file", "recipe"), with one-line errors."""
    if not path.is_file():
        raise UserError(f"{what} not found: {path}")
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{what} {path} is not valid TOML: {exc}") from None
