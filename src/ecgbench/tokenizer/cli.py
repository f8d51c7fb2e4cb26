"""``ecgbench tokenizer``: train, encode, decode, inspect ECG-Byte tokenizers, and import the peer's."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer

from ecgbench.console import console, progress, stdout
from ecgbench.errors import CorruptFileError, UserError
from ecgbench.files import atomic_write
from ecgbench.settings import TokenizerSettings
from ecgbench.tokenizer.core import ECGByteTokenizer
from ecgbench.tokenizer.symbols import SignalError, SignalScale, as_segments

app = typer.Typer(
    help="ECG-Byte tokenizer: symbolise ECGs (a..z) and compress them with BPE.", no_args_is_help=True
)

# Segments encoded per progress step.
_CHUNK = 512
# What `encode` writes and `decode` reads.
ROW_SUFFIXES = (".parquet", ".jsonl")

NpyOpt = Annotated[
    list[Path] | None, typer.Option("--npy", help=".npy array (N, leads, L) or (leads, L) in mV; repeatable")
]
StoreOpt = Annotated[
    Path | None, typer.Option("--store", help="segment store directory (from `data prepare`)")
]
SymbolsOpt = Annotated[
    Path | None, typer.Option("--symbols", help="text file, one a..z symbol string per line")
]
SplitsOpt = Annotated[
    Path | None, typer.Option("--splits", help="splits.parquet from `data split` (with --store and --split)")
]
SplitOpt = Annotated[
    str | None, typer.Option("--split", help="train | val | test: only this split's segments")
]
ThreadsOpt = Annotated[int | None, typer.Option("--threads", help="worker threads (default: all cores)")]
ModeOpt = Annotated[str | None, typer.Option("--encode-mode", help="bpe (merge order) or greedy (peer's)")]


@dataclass
class Inputs:
    """Segments in mV (from .npy files or a store) or symbol strings (from a text file)."""

    segments: list[np.ndarray] | None = None
    strings: list[str] | None = None

    def __len__(self) -> int:
        return len(self.segments if self.segments is not None else self.strings or [])


def read_npy(path: Path) -> list[np.ndarray]:
    if not path.is_file():
        raise UserError(f"file not found: {path}")
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except ValueError as exc:
        if "allow_pickle" in str(exc) or "Python objects" in str(exc):
            raise CorruptFileError(
                f"{path} is not a plain numeric .npy array (it holds pickled objects)"
            ) from None
        raise CorruptFileError(f"{path} is truncated or damaged ({exc})") from None
    except (OSError, EOFError) as exc:
        raise CorruptFileError(f"{path} is truncated or not a .npy file ({exc})") from None
    if not isinstance(array, np.ndarray) or array.ndim not in (2, 3):
        raise UserError(f"{path}: expected an array (N, leads, samples) or (leads, samples)")
    if not np.issubdtype(array.dtype, np.number):
        raise UserError(f"{path}: expected numbers, found dtype {array.dtype}")
    return [np.asarray(s, dtype=np.float32) for s in as_segments(np.asarray(array))]


def read_store(path: Path, splits_path: Path | None = None, split: str | None = None) -> list[np.ndarray]:
    """Every segment of a store, or only those of one split."""
    from ecgbench.data.splits import split_segment_ids
    from ecgbench.data.store import SegmentStore

    store = SegmentStore.open(path)
    chosen = split_segment_ids(store.index, splits_path, split)
    ids = np.arange(len(store)) if chosen is None else chosen
    segments: list[np.ndarray] = []
    with progress(transient=True) as bar:
        task = bar.add_task("reading segments", total=len(ids))
        for start in range(0, len(ids), _CHUNK):
            batch = store.read_many(ids[start : start + _CHUNK])
            segments.extend(np.asarray(batch, dtype=np.float32))
            bar.advance(task, len(batch))
    return segments


def read_symbols(path: Path) -> list[str]:
    if not path.is_file():
        raise UserError(f"file not found: {path}")
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
        for start in range(0, len(inputs), _CHUNK):
            if inputs.strings is not None:
                chunk = inputs.strings[start : start + _CHUNK]
                ids += tokenizer.encode_symbols_batch(chunk, mode=mode, threads=threads)
                scales += [None] * len(chunk)
            else:
                segments = inputs.segments[start : start + _CHUNK] if inputs.segments else []
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


def tokenizer_settings(ctx: typer.Context, **flags: Any) -> TokenizerSettings:
    from ecgbench.cli import state  # the root app imports this module

    return state(ctx).settings(tokenizer=flags).tokenizer


@app.command()
def train(
    ctx: typer.Context,
    out: Annotated[Path, typer.Option("--out", "-o", help="where to write tokenizer.json")],
    npy: NpyOpt = None,
    store: StoreOpt = None,
    symbols: SymbolsOpt = None,
    num_merges: Annotated[int | None, typer.Option("--num-merges", help="BPE merges to learn")] = None,
    normalization: Annotated[
        str | None, typer.Option("--normalization", help="segment (peer's), lead, or percentile")
    ] = None,
    percentile_low: Annotated[float | None, typer.Option("--percentile-low")] = None,
    percentile_high: Annotated[float | None, typer.Option("--percentile-high")] = None,
    percentile_margin: Annotated[float | None, typer.Option("--percentile-margin")] = None,
    lead_boundaries: Annotated[
        bool | None,
        typer.Option("--lead-boundaries/--no-lead-boundaries", help="also stop merges at lead boundaries"),
    ] = None,
    encode_mode: ModeOpt = None,
    threads: ThreadsOpt = None,
    splits_path: SplitsOpt = None,
    split: SplitOpt = None,
) -> None:
    """Learn an ECG-Byte tokenizer from .npy signals, a segment store, or symbol strings."""
    cfg = tokenizer_settings(
        ctx,
        num_merges=num_merges,
        normalization=normalization,
        percentile_low=percentile_low,
        percentile_high=percentile_high,
        percentile_margin=percentile_margin,
        lead_boundaries=lead_boundaries,
        encode_mode=encode_mode,
        threads=threads,
    )
    inputs = read_inputs(npy, store, symbols, required=True, splits_path=splits_path, split=split)
    assert inputs is not None
    if inputs.strings is not None:
        signal_flags = {
            "--normalization": normalization,
            "--percentile-low": percentile_low,
            "--percentile-high": percentile_high,
            "--percentile-margin": percentile_margin,
            "--lead-boundaries": lead_boundaries,
        }
        given = [flag for flag, value in signal_flags.items() if value is not None]
        if given:
            raise UserError(
                f"{', '.join(given)}: only for signal input (--symbols strings are symbols already)"
            )
        tokenizer = ECGByteTokenizer.train_symbols(
            inputs.strings, cfg.num_merges, threads=cfg.threads, show_progress=True
        )
        tokenizer.encode_mode = cfg.encode_mode
    else:
        tokenizer = ECGByteTokenizer.train(
            inputs.segments or [],
            cfg.num_merges,
            normalization=cfg.normalization,
            lead_boundaries=cfg.lead_boundaries,
            percentile_low=cfg.percentile_low,
            percentile_high=cfg.percentile_high,
            percentile_margin=cfg.percentile_margin,
            encode_mode=cfg.encode_mode,
            on_invalid="skip",
            threads=cfg.threads,
            show_progress=True,
        )
    path = tokenizer.save(out)
    stats = tokenizer.training or {}
    if stats.get("skipped_segments"):
        console.print(f"[yellow]skipped {stats['skipped_segments']} segments[/yellow] (NaN/Inf or flat)")
    if stats.get("merges_learned", 0) < cfg.num_merges:
        console.print(
            f"[yellow]stopped after {stats['merges_learned']} merges[/yellow]: no pair occurs twice any more"
        )
    stdout.print(
        f"wrote {path}: vocab {tokenizer.vocab_size}, {stats.get('symbols', 0):,} symbols -> "
        f"{stats.get('tokens', 0):,} tokens (compression {stats.get('compression_ratio', 0):.2f}x) "
        f"in {stats.get('seconds', 0):.2f} s",
        soft_wrap=True,
    )


@app.command()
def encode(
    ctx: typer.Context,
    tokenizer_path: Annotated[Path, typer.Argument(metavar="TOKENIZER", help="tokenizer.json")],
    npy: NpyOpt = None,
    store: StoreOpt = None,
    symbols: SymbolsOpt = None,
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help=".parquet or .jsonl (default: JSON lines on stdout)")
    ] = None,
    encode_mode: ModeOpt = None,
    threads: ThreadsOpt = None,
) -> None:
    """Encode segments into token ids (with the per-lead scale that decoding a signal needs)."""
    cfg = tokenizer_settings(ctx, encode_mode=encode_mode, threads=threads)
    if out is not None and out.suffix not in ROW_SUFFIXES:
        raise UserError(f"--out must end in .parquet or .jsonl, got {out.name}")
    tokenizer = ECGByteTokenizer.load(tokenizer_path)
    # --encode-mode overrides the mode stored in the tokenizer (bpe, or greedy for imported peer files).
    mode = cfg.encode_mode if encode_mode is not None else None
    inputs = read_inputs(npy, store, symbols, required=True)
    assert inputs is not None
    ids, scales = encode_inputs(tokenizer, inputs, mode, cfg.threads)
    rows = [
        {
            "index": i,
            "ids": seq.tolist(),
            "n_leads": scale.n_leads if scale else None,
            "lo": scale.lo.tolist() if scale else None,
            "hi": scale.hi.tolist() if scale else None,
        }
        for i, (seq, scale) in enumerate(zip(ids, scales, strict=True))
    ]
    write_rows(rows, out)
    n_symbols = (
        sum(len(s) for s in inputs.strings)
        if inputs.strings is not None
        else sum(s.size for s in inputs.segments or [])
    )
    n_tokens = sum(len(s) for s in ids)
    console.print(
        f"{len(rows)} segments, {n_symbols:,} symbols -> {n_tokens:,} tokens ({n_symbols / n_tokens:.2f}x)"
    )


def write_rows(rows: list[dict[str, Any]], out: Path | None) -> None:
    if out is None:
        for row in rows:
            stdout.print(json.dumps(row), markup=False, highlight=False, soft_wrap=True)
    else:
        atomic_write(out, lambda tmp: _write_rows_file(rows, tmp, out.suffix))


def _write_rows_file(rows: list[dict[str, Any]], tmp: Path, suffix: str) -> None:
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
    elif suffix == ".jsonl":
        tmp.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    else:
        raise ValueError(f"unsupported ids file suffix {suffix!r}")  # encode checked --out already


def read_rows(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        raise UserError(f"file not found: {path}")
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


@app.command()
def decode(
    tokenizer_path: Annotated[Path, typer.Argument(metavar="TOKENIZER", help="tokenizer.json")],
    ids_path: Annotated[Path, typer.Argument(metavar="IDS", help=".parquet or .jsonl written by `encode`")],
    to: Annotated[str, typer.Option("--to", help="symbols (text lines) or signal (.npy, mV)")] = "symbols",
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="output file (symbols: default stdout)")
    ] = None,
) -> None:
    """Decode token ids back to symbol strings or to signals (bin centres, within half a bin)."""
    if to not in ("symbols", "signal"):
        raise UserError(f"invalid value for --to: {to!r} (allowed: symbols, signal)")
    if to == "signal" and (out is None or out.suffix != ".npy"):
        raise UserError("--to signal needs --out FILE.npy")
    tokenizer = ECGByteTokenizer.load(tokenizer_path)
    rows = read_rows(ids_path)
    if to == "symbols":
        lines = [tokenizer.decode_symbols(np.asarray(r["ids"], dtype=np.int64)) for r in rows]
        if out is None:
            for line in lines:
                stdout.print(line, markup=False, highlight=False, soft_wrap=True)
        else:
            text = "".join(line + "\n" for line in lines)
            atomic_write(out, lambda tmp: tmp.write_text(text, encoding="ascii"))
        return
    assert out is not None
    signals = []
    for n, row in enumerate(rows):
        scale = SignalScale.from_json(row) if row.get("lo") is not None else None
        if scale is None and tokenizer.symbolizer.value_range is None:
            raise UserError(f"row {n} has no lo/hi scale (symbol input?): cannot rebuild a signal")
        signals.append(tokenizer.decode_signal(np.asarray(row["ids"], dtype=np.int64), scale))
    if len({s.shape for s in signals}) != 1:
        raise UserError("decoded segments differ in shape; cannot stack them into one .npy")
    stacked = np.stack(signals)
    atomic_write(out, lambda tmp: _save_npy(tmp, stacked))
    console.print(f"wrote {out}: {len(signals)} segments of shape {signals[0].shape}")


def _save_npy(path: Path, array: np.ndarray) -> None:
    with path.open("wb") as file:  # a file object, so np.save does not append ".npy" to the name
        np.save(file, array)


@app.command()
def inspect(
    ctx: typer.Context,
    tokenizer_path: Annotated[Path, typer.Argument(metavar="TOKENIZER", help="tokenizer.json")],
    npy: NpyOpt = None,
    store: StoreOpt = None,
    symbols: SymbolsOpt = None,
    histogram: Annotated[
        Path | None, typer.Option("--histogram", help="write a token-length histogram PNG")
    ] = None,
    threads: ThreadsOpt = None,
    splits_path: SplitsOpt = None,
    split: SplitOpt = None,
) -> None:
    """Vocabulary, symbolisation, and (given held-out segments) compression and token lengths."""
    cfg = tokenizer_settings(ctx, threads=threads)
    tokenizer = ECGByteTokenizer.load(tokenizer_path)
    lengths = tokenizer.token_lengths()
    info: dict[str, Any] = {
        "vocab_size": tokenizer.vocab_size,
        "merges": tokenizer.num_merges,
        "normalization": tokenizer.symbolizer.normalization,
        "lead_boundaries": tokenizer.lead_boundaries,
        "encode_mode": tokenizer.encode_mode,
        "vocab_token_length": {"mean": float(lengths.mean()), "max": int(lengths.max())},
    }
    if tokenizer.training:
        info["training"] = tokenizer.training
    if tokenizer.imported_from:
        info["imported_from"] = {k: v for k, v in tokenizer.imported_from.items() if k != "peer_ids"}
    used: np.ndarray | None = None
    inputs = read_inputs(npy, store, symbols, required=False, splits_path=splits_path, split=split)
    if inputs is not None:
        held_out: dict[str, Any] = {"segments": len(inputs)}
        if split is not None:
            held_out["split"] = split
        for mode in ("bpe", "greedy"):
            ids, _ = encode_inputs(tokenizer, inputs, mode, cfg.threads)
            n_tokens = sum(len(s) for s in ids)
            n_symbols = sum(int(lengths[s].sum()) for s in ids)
            held_out[mode] = {
                "symbols": n_symbols,
                "tokens": n_tokens,
                "compression_ratio": n_symbols / n_tokens,
            }
            if mode == tokenizer.encode_mode:
                used = lengths[np.concatenate(ids)] if ids else None
        info["held_out"] = held_out
    stdout.print_json(json.dumps(info))
    if histogram is not None:
        write_histogram(histogram, lengths, used)
        console.print(f"wrote {histogram}")


def write_histogram(path: Path, vocab_lengths: np.ndarray, used_lengths: np.ndarray | None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("vocabulary", vocab_lengths)] + (
        [("held-out tokens", used_lengths)] if used_lengths is not None else []
    )
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.5), squeeze=False)
    for ax, (title, values) in zip(axes[0], panels, strict=True):
        bins = np.arange(1, int(values.max()) + 2) - 0.5
        ax.hist(values, bins=bins, color="#3a6ea5")
        ax.set_title(f"symbols per token: {title}")
        ax.set_xlabel("symbols per token")
        ax.set_ylabel("count")
        ax.set_yscale("log")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


@app.command("import-pkl")
def import_pkl(
    pickle_path: Annotated[Path, typer.Argument(metavar="PKL", help="the peer's ecg_byte_tokenizer_*.pkl")],
    out: Annotated[Path, typer.Option("--out", "-o", help="where to write tokenizer.json")],
) -> None:
    """Convert a peer ECG-Byte pickle to tokenizer.json (read without running any code in it)."""
    from ecgbench.tokenizer.peer_pickle import import_peer_tokenizer

    tokenizer = import_peer_tokenizer(pickle_path)
    tokenizer.save(out)
    imported = tokenizer.imported_from or {}
    stdout.print(
        f"wrote {out}: vocab {tokenizer.vocab_size} ({tokenizer.num_merges} merges; "
        f"{imported.get('ambiguous_pairs', 0)} pairs recovered from ambiguous expansions), "
        f"normalization {tokenizer.symbolizer.normalization}, encode mode {tokenizer.encode_mode}",
        soft_wrap=True,
    )
