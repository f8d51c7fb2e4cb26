"""Token-id files: what ``tokenizer encode`` writes and ``tokenizer decode`` reads.

One row per segment: ``index``, ``ids`` (int32 list) and, for signal input, the per-lead scale that
decoding a signal needs (``n_leads``, ``lo``, ``hi``). Parquet or JSON lines, chosen by the suffix."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from ecgbench.errors import CorruptFileError, UserError
from ecgbench.files import atomic_write
from ecgbench.tokenizer.core import ECGByteTokenizer
from ecgbench.tokenizer.symbols import SignalScale

SUFFIXES = (".parquet", ".jsonl")


def check_ids_path(path: Path) -> None:
    if path.suffix not in SUFFIXES:
        raise UserError(f"--out must end in .parquet or .jsonl, got {path.name}")


def id_rows(ids: list[np.ndarray], scales: list[SignalScale | None]) -> list[dict[str, Any]]:
    return [
        {
            "index": i,
            "ids": seq.tolist(),
            "n_leads": scale.n_leads if scale else None,
            "lo": scale.lo.tolist() if scale else None,
            "hi": scale.hi.tolist() if scale else None,
        }
        for i, (seq, scale) in enumerate(zip(ids, scales, strict=True))
    ]


def write_ids(path: Path, rows: list[dict[str, Any]]) -> None:
    """``rows`` written atomically as Parquet or JSON lines (by ``path``'s suffix)."""
    check_ids_path(path)
    atomic_write(path, lambda tmp: _write(rows, tmp, path.suffix))


def _write(rows: list[dict[str, Any]], tmp: Path, suffix: str) -> None:
    if suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        table = pa.table(
            {
                "index": pa.array([r["index"] for r in rows], pa.int64()),
                "ids": pa.array([r["ids"] for r in rows], pa.list_(pa.int32())),
                "n_leads": pa.array([r["n_leads"] for r in rows], pa.int32()),
                "lo": pa.array([r["lo"] for r in rows], pa.list_(pa.float64())),
                "hi": pa.array([r["hi"] for r in rows], pa.list_(pa.float64())),
            }
        )
        pq.write_table(table, tmp)
    else:
        tmp.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def read_ids(path: Path) -> list[dict[str, Any]]:
    """The rows of an ids file, each checked: an ``ids`` list of integers and a well-formed scale."""
    from ecgbench.files import require_file

    require_file(path, "ids file")
    if path.suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            rows = pq.read_table(path).to_pylist()
        except (pa.ArrowException, OSError) as exc:
            raise CorruptFileError(f"{path} is not a readable Parquet file ({exc})") from None
    elif path.suffix == ".jsonl":
        rows = []
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise CorruptFileError(f"{path}:{n}: malformed JSON line ({exc.msg})") from None
    else:
        raise UserError(f"ids file must end in .parquet or .jsonl, got {path.name}")
    if not rows:
        raise CorruptFileError(f"{path} holds no rows")
    for n, row in enumerate(rows):
        ids = row.get("ids") if isinstance(row, dict) else None
        if not isinstance(ids, list) or not all(type(i) is int for i in ids):
            raise CorruptFileError(f"{path}: row {n} has no 'ids' list of integers")
        lo, hi = row.get("lo"), row.get("hi")
        if (lo, hi) != (None, None) and not (
            _is_number_list(lo) and _is_number_list(hi) and len(lo) == len(hi) > 0
        ):
            raise CorruptFileError(
                f"{path}: row {n} has a malformed lo/hi scale (two equal-length number lists)"
            )
    return rows


def _is_number_list(value: Any) -> bool:
    return isinstance(value, list) and all(type(v) in (int, float) for v in value)


def decode_symbols(tokenizer: ECGByteTokenizer, rows: list[dict[str, Any]]) -> list[str]:
    return [tokenizer.decode_symbols(np.asarray(r["ids"], dtype=np.int64)) for r in rows]


def decode_signals(tokenizer: ECGByteTokenizer, rows: list[dict[str, Any]]) -> np.ndarray:
    """The rows decoded to signals (bin centres, mV) stacked into one (N, leads, samples) array."""
    signals = []
    for n, row in enumerate(rows):
        scale = SignalScale.from_json(row) if row.get("lo") is not None else None
        if scale is None and tokenizer.symbolizer.value_range is None:
            raise UserError(f"row {n} has no lo/hi scale (symbol input?): cannot rebuild a signal")
        signals.append(tokenizer.decode_signal(np.asarray(row["ids"], dtype=np.int64), scale))
    if len({s.shape for s in signals}) != 1:
        raise UserError("decoded segments differ in shape; cannot stack them into one .npy")
    return np.stack(signals)


def write_npy(path: Path, array: np.ndarray) -> None:
    def save(tmp: Path) -> None:
        with tmp.open("wb") as file:  # a file object, so np.save does not append ".npy" to the name
            np.save(file, array)

    atomic_write(path, save)
