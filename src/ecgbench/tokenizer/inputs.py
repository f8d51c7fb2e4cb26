"""What a tokenizer reads: ECG segments in mV (``.npy`` files or a segment store) or symbol strings, and
chunked encoding of them under a progress bar."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ecgbench.console import progress
from ecgbench.errors import UserError
from ecgbench.tokenizer.core import ECGByteTokenizer
from ecgbench.tokenizer.symbols import SignalError, SignalScale, as_segments

# Segments read or encoded per progress step.
CHUNK = 512


@dataclass
class Inputs:
    """Segments in mV (from .npy files or a store) or symbol strings (from a text file)."""

    segments: list[np.ndarray] | None = None
    strings: list[str] | None = None

    def __len__(self) -> int:
        return len(self.segments if self.segments is not None else self.strings or [])

    def symbol_count(self) -> int:
        """Symbols the inputs make (one per sample and lead for segments)."""
        if self.strings is not None:
            return sum(len(s) for s in self.strings)
        return sum(s.size for s in self.segments or [])


def read_npy(path: Path) -> list[np.ndarray]:
    """The segments of a plain numeric ``.npy`` array, (N, leads, samples) or (leads, samples), in mV."""
    from ecgbench.files import read_npy as read_npy_file

    # A directory, a text file named .npy, pickled objects and a truncated file each get their own error.
    array = read_npy_file(path, "--npy file")
    if not isinstance(array, np.ndarray) or array.ndim not in (2, 3):
        raise UserError(f"{path}: expected an array (N, leads, samples) or (leads, samples)")
    if not np.issubdtype(array.dtype, np.number):
        raise UserError(f"{path}: expected numbers, found dtype {array.dtype}")
    return [np.asarray(s, dtype=np.float32) for s in as_segments(np.asarray(array))]


def read_store(path: Path, splits_path: Path | None = None, split: str | None = None) -> list[np.ndarray]:
    """Every segment of a store, or only those of one split."""
    from ecgbench.data.splits import split_segment_ids
    from ecgbench.data.store import SegmentStore

    store = SegmentStore.open(path, verify=True)  # training reads it all: check each shard's checksum
    chosen = split_segment_ids(store.index, splits_path, split)
    ids = np.arange(len(store)) if chosen is None else chosen
    segments: list[np.ndarray] = []
    with progress(transient=True) as bar:
        task = bar.add_task("reading segments", total=len(ids))
        for start in range(0, len(ids), CHUNK):
            batch = store.read_many(ids[start : start + CHUNK])
            segments.extend(np.asarray(batch, dtype=np.float32))
            bar.advance(task, len(batch))
    return segments


def read_symbols(path: Path) -> list[str]:
    """Symbol strings, one per non-empty line of an ASCII text file."""
    from ecgbench.files import require_file

    require_file(path, "--symbols file")
    try:
        text = path.read_text(encoding="ascii")
    except UnicodeDecodeError as exc:
        raise UserError(
            f"{path}: symbol strings must be ASCII a..z ({exc.reason} at byte {exc.start})"
        ) from None
    return [line.strip() for line in text.splitlines() if line.strip()]


def read_inputs(
    npy: list[Path] | None,
    store: Path | None,
    symbols: Path | None,
    *,
    required: bool,
    splits_path: Path | None = None,
    split: str | None = None,
) -> Inputs | None:
    """The one input kind given (``--npy`` files, a ``--store`` or a ``--symbols`` file); None when none is
    given and none is ``required``."""
    given = [name for name, value in (("--npy", npy), ("--store", store), ("--symbols", symbols)) if value]
    if (splits_path or split) and not store:
        raise UserError("--splits and --split select segments of a --store")
    if len(given) > 1:
        raise UserError(f"give one input kind, not {' and '.join(given)}")
    if not given:
        if required:
            raise UserError("no input: give --npy FILE, --store DIR or --symbols FILE")
        return None
    if symbols:
        inputs = Inputs(strings=read_symbols(symbols))
    elif store:
        inputs = Inputs(segments=read_store(store, splits_path, split))
    else:
        inputs = Inputs(segments=[s for path in npy or [] for s in read_npy(path)])
    if len(inputs) == 0:
        raise UserError("the input holds no segments")
    return inputs


def encode_inputs(
    tokenizer: ECGByteTokenizer, inputs: Inputs, mode: str | None, threads: int | None
) -> tuple[list[np.ndarray], list[SignalScale | None]]:
    """Encode in chunks under a progress bar; segments that cannot be symbolised are errors."""
    ids: list[np.ndarray] = []
    scales: list[SignalScale | None] = []
    with progress(transient=True) as bar:
        task = bar.add_task("encoding", total=len(inputs))
        for start in range(0, len(inputs), CHUNK):
            if inputs.strings is not None:
                chunk = inputs.strings[start : start + CHUNK]
                ids += tokenizer.encode_symbols_batch(chunk, mode=mode, threads=threads)
                scales += [None] * len(chunk)
            else:
                segments = inputs.segments[start : start + CHUNK] if inputs.segments else []
                try:
                    chunk_ids, chunk_scales = tokenizer.encode_batch(
                        segments, mode=mode, threads=threads, return_scales=True
                    )
                except SignalError as exc:
                    if exc.segment is None:
                        raise
                    raise UserError(f"input segment {start + exc.segment} {exc.detail}") from None
                ids += chunk_ids
                scales += chunk_scales
            bar.advance(task, len(chunk) if inputs.strings is not None else len(segments))
    return ids, scales
