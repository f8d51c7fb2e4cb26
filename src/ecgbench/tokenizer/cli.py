"""``ecgbench tokenizer``: train, encode, decode, inspect ECG-Byte tokenizers, and import the peer's.

Thin over the tokenizer library (``inputs``: what a tokenizer reads, ``ids_file``: token-id files,
``report``: what inspect shows), which each command imports when it runs.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from ecgbench.commands import SplitOption, SplitsOption, given_flags, new_group, out_option, settings_options
from ecgbench.console import console, stdout
from ecgbench.errors import UserError
from ecgbench.settings import TokenizerSettings

app = new_group()

NpyOpt = Annotated[
    list[Path] | None, typer.Option("--npy", help=".npy array (N, leads, L) or (leads, L) in mV; repeatable")
]
StoreOpt = Annotated[
    Path | None, typer.Option("--store", help="segment store directory (from `data prepare`)")
]
SymbolsOpt = Annotated[
    Path | None, typer.Option("--symbols", help="text file, one a..z symbol string per line")
]
TokenizerArg = Annotated[Path, typer.Argument(metavar="TOKENIZER", help="tokenizer.json")]
# Settings that shape symbolisation: they mean nothing for --symbols input.
SIGNAL_FLAGS = (
    "--normalization",
    "--percentile-low",
    "--percentile-high",
    "--percentile-margin",
    "--lead-boundaries",
)


@app.command()
@settings_options("tokenizer")
def train(
    ctx: typer.Context,
    out: Annotated[Path, out_option("where to write tokenizer.json")],
    npy: NpyOpt = None,
    store: StoreOpt = None,
    symbols: SymbolsOpt = None,
    splits_path: SplitsOption = None,
    split: SplitOption = None,
    *,
    cfg: TokenizerSettings,
) -> None:
    """Learn an ECG-Byte tokenizer from .npy signals, a segment store, or symbol strings."""
    from ecgbench.files import check_output
    from ecgbench.tokenizer.core import ECGByteTokenizer
    from ecgbench.tokenizer.inputs import read_inputs

    check_output(out, "--out", [*(npy or []), store, symbols, splits_path])
    inputs = read_inputs(npy, store, symbols, required=True, splits_path=splits_path, split=split)
    assert inputs is not None
    if inputs.strings is not None:
        given = [flag for flag in SIGNAL_FLAGS if flag in given_flags(ctx)]
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
@settings_options("tokenizer.encode_mode", "tokenizer.threads")
def encode(
    tokenizer_path: TokenizerArg,
    npy: NpyOpt = None,
    store: StoreOpt = None,
    symbols: SymbolsOpt = None,
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help=".parquet or .jsonl (default: JSON lines on stdout)")
    ] = None,
    *,
    cfg: TokenizerSettings,
) -> None:
    """Encode segments into token ids (with the per-lead scale that decoding a signal needs)."""
    from ecgbench.files import check_output
    from ecgbench.tokenizer.core import ECGByteTokenizer
    from ecgbench.tokenizer.ids_file import check_ids_path, id_rows, write_ids
    from ecgbench.tokenizer.inputs import encode_inputs, read_inputs

    if out is not None:
        check_ids_path(out)
    check_output(out, "--out", [tokenizer_path, *(npy or []), store, symbols])
    tokenizer = ECGByteTokenizer.load(tokenizer_path)
    # An encode mode that was asked for (flag, ECGBENCH_* or --config) overrides the one stored in the
    # tokenizer (bpe, or greedy for imported peer files); the default does not.
    mode = cfg.encode_mode if "encode_mode" in cfg.model_fields_set else None
    inputs = read_inputs(npy, store, symbols, required=True)
    assert inputs is not None
    ids, scales = encode_inputs(tokenizer, inputs, mode, cfg.threads)
    rows = id_rows(ids, scales)
    if out is None:
        for row in rows:
            stdout.print(json.dumps(row), markup=False, highlight=False, soft_wrap=True)
    else:
        write_ids(out, rows)
    n_symbols = inputs.symbol_count()
    n_tokens = sum(len(s) for s in ids)
    console.print(
        f"{len(rows)} segments, {n_symbols:,} symbols -> {n_tokens:,} tokens ({n_symbols / n_tokens:.2f}x)"
    )


@app.command()
def decode(
    tokenizer_path: TokenizerArg,
    ids_path: Annotated[Path, typer.Argument(metavar="IDS", help=".parquet or .jsonl written by `encode`")],
    to: Annotated[str, typer.Option("--to", help="symbols (text lines) or signal (.npy, mV)")] = "symbols",
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="output file (symbols: default stdout)")
    ] = None,
) -> None:
    """Decode token ids back to symbol strings or to signals (bin centres, within half a bin)."""
    from ecgbench.files import atomic_write
    from ecgbench.tokenizer.core import ECGByteTokenizer
    from ecgbench.tokenizer.ids_file import decode_signals, decode_symbols, read_ids, write_npy

    if to not in ("symbols", "signal"):
        raise UserError(f"invalid value for --to: {to!r} (allowed: symbols, signal)")
    if to == "signal" and (out is None or out.suffix != ".npy"):
        raise UserError("--to signal needs --out FILE.npy")
    from ecgbench.files import check_output

    check_output(out, "--out", [tokenizer_path, ids_path])
    tokenizer = ECGByteTokenizer.load(tokenizer_path)
    rows = read_ids(ids_path)
    if to == "symbols":
        lines = decode_symbols(tokenizer, rows)
        if out is None:
            for line in lines:
                stdout.print(line, markup=False, highlight=False, soft_wrap=True)
        else:
            text = "".join(line + "\n" for line in lines)
            atomic_write(out, lambda tmp: tmp.write_text(text, encoding="ascii"))
        return
    assert out is not None
    signals = decode_signals(tokenizer, rows)
    write_npy(out, signals)
    console.print(f"wrote {out}: {len(signals)} segments of shape {signals[0].shape}")


@app.command()
@settings_options("tokenizer.threads")
def inspect(
    tokenizer_path: TokenizerArg,
    npy: NpyOpt = None,
    store: StoreOpt = None,
    symbols: SymbolsOpt = None,
    histogram: Annotated[
        Path | None, typer.Option("--histogram", help="write a token-length histogram PNG")
    ] = None,
    splits_path: SplitsOption = None,
    split: SplitOption = None,
    *,
    cfg: TokenizerSettings,
) -> None:
    """Vocabulary, symbolisation, and (given held-out segments) compression and token lengths."""
    from ecgbench.files import check_output
    from ecgbench.tokenizer.core import ECGByteTokenizer
    from ecgbench.tokenizer.inputs import read_inputs
    from ecgbench.tokenizer.report import describe, write_histogram

    check_output(histogram, "--histogram", [tokenizer_path, *(npy or []), store, symbols])
    tokenizer = ECGByteTokenizer.load(tokenizer_path)
    inputs = read_inputs(npy, store, symbols, required=False, splits_path=splits_path, split=split)
    info, used = describe(tokenizer, inputs, split=split, threads=cfg.threads)
    stdout.print_json(json.dumps(info))
    if histogram is not None:
        write_histogram(histogram, tokenizer.token_lengths(), used)
        console.print(f"wrote {histogram}")


@app.command("import-pkl")
def import_pkl(
    pickle_path: Annotated[Path, typer.Argument(metavar="PKL", help="the peer's ecg_byte_tokenizer_*.pkl")],
    out: Annotated[Path, out_option("where to write tokenizer.json")],
) -> None:
    """Convert a peer ECG-Byte pickle to tokenizer.json (read without running any code in it)."""
    from ecgbench.files import check_output
    from ecgbench.tokenizer.peer_pickle import import_peer_tokenizer

    check_output(out, "--out", [pickle_path])
    tokenizer = import_peer_tokenizer(pickle_path)
    tokenizer.save(out)
    imported = tokenizer.imported_from or {}
    stdout.print(
        f"wrote {out}: vocab {tokenizer.vocab_size} ({tokenizer.num_merges} merges; "
        f"{imported.get('ambiguous_pairs', 0)} pairs recovered from ambiguous expansions), "
        f"normalization {tokenizer.symbolizer.normalization}, encode mode {tokenizer.encode_mode}",
        soft_wrap=True,
    )
