"""File helpers every format of ours shares: atomic replacement, guards that keep outputs away from inputs
and segment stores, and Parquet, .npy and versioned-JSON reads with one-line errors."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tomllib
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ecgbench.errors import SHORT_WRITE, CorruptFileError, UserError, describe_os_error

if TYPE_CHECKING:  # numpy and pyarrow load only where they are used: `ecgbench --help` imports this module
    import numpy as np
    import pyarrow as pa

# A folder whose manifest.json carries this format tag is a segment store: only its writer writes inside it.
SEGMENT_STORE_FORMAT = "ecgbench-segment-store"


def atomic_write(path: Path, write: Callable[[Path], None], *, store_write: bool = False) -> None:
    """Write through a temporary file in the same folder, flush it to disk, then rename over ``path``, so an
    interrupted run leaves either the old file or the new one, never half of one.

    Refuses a path inside a segment store unless ``store_write`` (the store's own writer): an output
    written over a store's index or shards would ruin it."""
    path = Path(path)
    if not store_write:
        refuse_inside_store(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        write(tmp)
        with tmp.open("rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        raise write_error(path, exc) from None
    finally:
        tmp.unlink(missing_ok=True)


def write_error(path: Path, exc: OSError) -> UserError:
    """The one-line error for a failed write of ``path``: a full disk is named as such (numpy's short write
    loses the errno, so the free space decides), anything else with the system's reason."""
    short = SHORT_WRITE.search(str(exc))
    try:
        free = shutil.disk_usage(path.parent).free
    except OSError:
        free = None
    full = exc.errno in (28, 122) or (
        short is not None and free is not None and free < 1 << 20
    )  # ENOSPC, EDQUOT
    if full:
        left = f", {free:,} bytes free" if free is not None else ""
        return UserError(f"cannot write {path}: the disk is full (no space left on device{left})")
    if short is not None:
        return UserError(
            f"cannot write {path}: only {short[2]} of {short[1]} values were written "
            "(a full disk, a quota or a file-size limit stopped the write)"
        )
    reason = (
        describe_os_error(exc)
        if exc.filename is None
        else describe_os_error(OSError(exc.errno, exc.strerror))
    )
    return UserError(f"cannot write {path}: {reason}")


def write_parquet(
    path: Path, table: pa.Table, compression: str = "zstd", *, store_write: bool = False
) -> Path:
    """``table`` written atomically to ``path``."""
    import pyarrow.parquet as pq

    path = Path(path)
    atomic_write(
        path, lambda tmp: pq.write_table(table, tmp, compression=compression), store_write=store_write
    )
    return path


# ------------------------------------------------------------------------------------- path guards


def segment_store_at(folder: Path) -> bool:
    """Whether ``folder`` is a segment store, finished (a manifest of our format) or being written (a
    ``.progress/state.json``)."""
    manifest = folder / "manifest.json"
    if (folder / ".progress" / "state.json").is_file():
        return True
    if not manifest.is_file():
        return False
    try:
        return json.loads(manifest.read_text(encoding="utf-8")).get("format") == SEGMENT_STORE_FORMAT
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError):
        return False


def enclosing_store(path: Path) -> Path | None:
    """The segment store ``path`` lies in (or is), if any."""
    path = Path(path).absolute()
    for folder in (path, *path.parents):
        if folder.is_dir() and segment_store_at(folder):
            return folder
    return None


def refuse_inside_store(path: Path, flag: str = "the output") -> None:
    store = enclosing_store(Path(path).parent)
    if store is not None:
        raise UserError(
            f"{flag} {path} is inside the segment store {store}; writing there would damage it: "
            "choose a path outside the store"
        )


def check_output(path: Path | None, flag: str, inputs: Iterable[Path | None] = ()) -> None:
    """Refuse an output that would overwrite an input, land inside an input folder, or land inside (or
    be) a segment store: nothing the user has is overwritten by surprise."""
    if path is None:
        return
    path = Path(path)
    store = enclosing_store(path)
    if store is not None:
        raise UserError(
            f"{flag} {path} is inside the segment store {store}; writing there would damage it: "
            "choose a path outside the store"
        )
    target = path.resolve()
    for given in inputs:
        if given is None:
            continue
        source = Path(given).resolve()
        if target == source:
            raise UserError(f"{flag} {path} is also an input ({given}); choose another output path")
        if source.is_dir() and target.is_relative_to(source):
            raise UserError(f"{flag} {path} is inside the input folder {given}; choose a path outside it")


# ------------------------------------------------------------------------------------------- reading


def require_file(path: Path, what: str) -> Path:
    """``path`` if it is a readable regular file; else a one-line error saying what it is instead."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{what} {path} is a directory, not a file")
    if not path.exists():
        raise UserError(f"{what} not found: {path}")
    if not path.is_file():
        raise UserError(f"{what} {path} is not a regular file")
    return path


def read_npy(path: Path, what: str = ".npy file") -> np.ndarray:
    """A plain numeric .npy array, memory-mapped. A file that is not .npy at all, one holding pickled
    objects, and a truncated one each get their own one-line error."""
    import numpy as np

    path = require_file(path, what)
    try:
        with path.open("rb") as handle:
            if handle.read(len(np.lib.format.MAGIC_PREFIX)) != np.lib.format.MAGIC_PREFIX:
                raise CorruptFileError(f"{path} is not a .npy file (it does not start with the NumPy header)")
            handle.seek(0)
            version = np.lib.format.read_magic(handle)
            read_header = (
                np.lib.format.read_array_header_1_0
                if version == (1, 0)
                else np.lib.format.read_array_header_2_0
            )
            shape, _, dtype = read_header(handle)
            header_end = handle.tell()
    except CorruptFileError:
        raise
    except (ValueError, OSError, SyntaxError, EOFError) as exc:
        raise CorruptFileError(f"{path} has a damaged .npy header ({exc})") from None
    if dtype.hasobject:
        raise CorruptFileError(f"{path} is not a plain numeric .npy array (it holds pickled Python objects)")
    expected = header_end + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    size = path.stat().st_size
    if size < expected:
        raise CorruptFileError(f"{path} is truncated: {size:,} bytes, its header needs {expected:,}")
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError) as exc:
        raise CorruptFileError(f"{path} is not a readable .npy file ({exc})") from None


def read_parquet(path: Path, what: str, columns: Iterable[str] | None = None) -> pa.Table:
    """A Parquet file; ``what`` names it in the error when it is missing (a user error) or unreadable.
    ``columns``: read only those of these the file has (the caller checks for the ones it needs)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = require_file(path, what)
    try:
        if columns is not None:
            present = set(pq.read_schema(path).names)
            columns = [name for name in columns if name in present]
        return pq.read_table(path, columns=columns)
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
    require_file(path, what)
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{what} {path} is not valid TOML: {exc}") from None
