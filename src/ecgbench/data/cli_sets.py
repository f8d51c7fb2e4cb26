"""``ecgbench data map | split | sample | stats | plot``: conversation sets, splits, samples, figures.

The library modules are imported inside each command, so ``ecgbench data --help`` loads none of them."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from ecgbench.commands import (
    SetsOption,
    SplitOption,
    SplitsOption,
    StoresOption,
    help_names,
    settings_options,
    state,
)
from ecgbench.console import console, stdout
from ecgbench.errors import UserError
from ecgbench.settings import SetsSettings, TokenizerSettings

if TYPE_CHECKING:
    import pyarrow as pa
    from rich.table import Table

    from ecgbench.data.mapping.common import MappingReport
    from ecgbench.data.store import SegmentStore

app = typer.Typer()  # merged into `ecgbench data` (ecgbench.data.cli)


def _set_names() -> str:
    from ecgbench.data.mapping import SOURCE_SETS, STORE_SETS

    return ", ".join([*SOURCE_SETS, *STORE_SETS])


def _store_set_names() -> str:
    from ecgbench.data.mapping import STORE_SETS

    return ", ".join(STORE_SETS)


def _open_stores(paths: list[Path]) -> list[SegmentStore]:
    from ecgbench.data.store import SegmentStore

    if not paths:
        raise UserError("give at least one --store")
    return [SegmentStore.open(p) for p in paths]


def _reasons(counts: dict[str, int]) -> str:
    return "; ".join(f"{reason} {n}" for reason, n in sorted(counts.items(), key=lambda kv: -kv[1]))


def _mapping_table(reports: list[MappingReport]) -> Table:
    from rich.table import Table

    table = Table(title="data map")
    for column in ("set", "items", "mapped", "repaired", "skipped", "reasons"):
        table.add_column(
            column, justify="right" if column in ("items", "mapped", "repaired", "skipped") else "left"
        )
    for r in reports:
        reasons = "; ".join(part for part in (_reasons(dict(r.repaired)), _reasons(dict(r.skipped))) if part)
        table.add_row(
            r.source,
            str(r.items),
            str(r.mapped),
            str(sum(r.repaired.values())),
            str(sum(r.skipped.values())),
            reasons,
        )
    return table


@app.command("map", cls=help_names(sets=_set_names, store_sets=_store_set_names))
@settings_options("sets.questions_per_record", "seed")
def map_command(
    set_names: Annotated[
        list[str],
        typer.Argument(metavar="SET...", help="one or more of: {sets}"),
    ],
    store: StoresOption,
    out: Annotated[Path, typer.Option("--out", help="folder for the conversation sets (<set>.parquet)")],
    source: Annotated[
        list[Path] | None,
        typer.Option(
            "--source",
            help="the set's file or folder, one per SET in the same order ({store_sets}: none)",
        ),
    ] = None,
    mix: Annotated[
        str | None,
        typer.Option("--mix", help="write all SETs mixed into one set <out>/<MIX>.parquet instead"),
    ] = None,
    *,
    sets: SetsSettings,
    seed: int,
) -> None:
    """Map question / instruction sets onto a segment store as normalised conversation sets.

    The set `labels` is built from the store itself: questions on each record's own labels and report
    (--questions-per-record and --seed apply to it)."""
    from ecgbench.data.conversations import mix_conversation_sets, write_conversation_set
    from ecgbench.data.mapping import SOURCE_SETS, STORE_SETS, map_source_set
    from ecgbench.data.mapping.common import RecordLookup
    from ecgbench.files import check_output

    known = [*SOURCE_SETS, *STORE_SETS]
    unknown = [name for name in set_names if name not in known]
    if unknown:
        raise UserError(f"unknown set {', '.join(map(repr, unknown))} (known: {', '.join(known)})")
    sourced = [name for name in set_names if name in SOURCE_SETS]
    source = source or []
    if len(source) != len(sourced):
        from_store = f" ({', '.join(STORE_SETS)} takes none)" if len(sourced) < len(set_names) else ""
        raise UserError(f"give one --source per set{from_store}: {len(sourced)} sets, {len(source)} sources")
    if mix is not None and (not mix or "/" in mix):
        raise UserError(f"invalid value for --mix: {mix!r} (a set name, without folders)")
    stores = _open_stores(store)
    for name in [mix] if mix is not None else set_names:
        check_output(out / f"{name}.parquet", "--out", [*store, *source])
    lookup = RecordLookup.from_stores(s.index for s in stores)
    store_paths = [str(Path(p).resolve()) for p in store]
    tables, reports = [], []
    sources = iter(source)
    for name in set_names:
        if name in STORE_SETS:
            from ecgbench.data.mapping.labels import map_store_labels

            console.print(f"mapping [bold]{name}[/bold] from the store")
            table, report = map_store_labels(
                [s.index for s in stores], questions_per_record=sets.questions_per_record, seed=seed
            )
        else:
            path = next(sources)
            console.print(f"mapping [bold]{name}[/bold] from {path}")
            table, report = map_source_set(name, path, lookup)
        if report.items and not report.mapped:
            console.print(f"[yellow]warning:[/yellow] no item of {name} was mapped (see the reasons below)")
        tables.append(table)
        reports.append(report)
    if mix is not None:
        mixed = mix_conversation_sets(tables)
        written = [write_conversation_set(out / f"{mix}.parquet", _with_stores(mixed, store_paths))]
    else:
        written = [
            write_conversation_set(out / f"{name}.parquet", _with_stores(table, store_paths))
            for name, table in zip(set_names, tables, strict=True)
        ]
    stdout.print(_mapping_table(reports))
    for path in written:
        stdout.print(f"wrote {path}")


def _with_stores(table: pa.Table, store_paths: list[str]) -> pa.Table:
    from ecgbench.data.conversations import with_info

    return with_info(table, stores=store_paths)


@app.command("split")
@settings_options("sets.folds", "sets.split_method", "sets.test_fold", "sets.val_fold", "seed")
def split_command(
    store: StoresOption,
    out: Annotated[
        Path, typer.Option("--out", help="folder for splits.parquet and the split conversation sets")
    ],
    sets: SetsOption = None,
    *,
    cfg: SetsSettings,
    seed: int,
) -> None:
    """Patient-grouped k-fold splits of the store's records; conversation sets follow their ECGs."""
    from rich.table import Table

    from ecgbench.data import splits
    from ecgbench.data.conversations import read_conversation_set, write_conversation_set
    from ecgbench.files import check_output

    set_tables = [(path, read_conversation_set(path)) for path in sets or []]
    records = splits.record_table([s.index for s in _open_stores(store)])
    for written in [out / "splits.parquet", *(out / path.name for path in sets or [])]:
        check_output(written, "--out", [*store, *(sets or [])])
    record_splits = splits.assign_folds(
        records,
        n_folds=cfg.folds,
        seed=seed,
        method=cfg.split_method,
        test_fold=cfg.test_fold,
        val_fold=cfg.val_fold,
    )
    out.mkdir(parents=True, exist_ok=True)
    splits.write_record_splits(out / "splits.parquet", record_splits)
    summary = splits.split_summary(record_splits)
    lookup = splits.record_split_lookup(record_splits)
    table = Table(title=f"data split ({cfg.split_method}, {cfg.folds} folds, seed {seed})")
    table.add_column("")
    for name in ("train", "val", "test", "unsplit"):
        table.add_column(name, justify="right")
    table.add_row("records", *(str(summary[n]["records"]) for n in ("train", "val", "test")), "")
    table.add_row("patients", *(str(summary[n]["patients"]) for n in ("train", "val", "test")), "")
    for path, conversations in set_tables:
        split_table, report = splits.split_conversations(conversations, lookup)
        written = write_conversation_set(out / path.name, split_table)
        table.add_row(
            path.name,
            *(str(report.splits.get(n, 0)) for n in ("train", "val", "test")),
            f"{sum(report.unsplit.values())} ({_reasons(dict(report.unsplit))})" if report.unsplit else "0",
        )
        console.print(f"wrote {written}")
    stdout.print(table)
    overlap = summary["overlap"]["patients_in_several_splits"]
    stdout.print(f"patients in more than one split: {overlap}")
    stdout.print(f"wrote {out / 'splits.parquet'}")


@app.command("sample")
@settings_options("sets.sample_size", "sets.sample_method", "sets.clusters", "sets.sample_pool", "seed")
def sample_command(
    store: Annotated[Path, typer.Option("--store", help="segment store directory")],
    out: Annotated[Path, typer.Option("--out", help="Parquet file of the selected segment ids")],
    npy: Annotated[
        Path | None, typer.Option("--npy", help="also write the selected segments as one float32 .npy")
    ] = None,
    splits_path: SplitsOption = None,
    split: SplitOption = None,
    *,
    cfg: SetsSettings,
    tokenizer: TokenizerSettings,
    seed: int,
) -> None:
    """Select segments for tokenizer training and estimate their value percentiles."""
    from rich.table import Table

    from ecgbench.data import sampling, splits
    from ecgbench.data.store import SegmentStore
    from ecgbench.files import check_output

    segment_store = SegmentStore.open(store)
    check_output(out, "--out", [store, splits_path])
    check_output(npy, "--npy", [store, splits_path, out])
    population = splits.split_segment_ids(segment_store.index, splits_path, split)
    qs = sorted(
        {*sampling.DEFAULT_PERCENTILES, tokenizer.percentile_low, tokenizer.percentile_high}
    )
    sample = sampling.select_segments(
        segment_store,
        cfg.sample_size,
        method=cfg.sample_method,
        seed=seed,
        clusters=cfg.clusters,
        pool=cfg.sample_pool,
        percentiles=qs,
        population=population,
    )
    sampling.write_sample(out, sample)
    if npy is not None:
        sampling.export_segments(segment_store, sample.segment_ids, npy)
    pool = f"the {split} split's {len(population)}" if population is not None else f"{len(segment_store)}"
    table = Table(title=f"data sample: {len(sample.segment_ids)} of {pool} segments ({sample.method})")
    table.add_column("percentile", justify="right")
    table.add_column("mV (all leads)", justify="right")
    for q, value in sample.percentiles["global"].items():
        table.add_row(q, f"{value:.3f}")
    stdout.print(table)
    if sample.method == "stratified":
        stdout.print(f"clusters used: {len(set(sample.clusters.tolist()))}")
    for path in (out, npy):
        if path is not None:
            stdout.print(f"wrote {path}")


@app.command("stats")
def stats_command(
    ctx: typer.Context,
    store: Annotated[list[Path] | None, typer.Option("--store", help="segment store directory")] = None,
    sets: SetsOption = None,
    out: Annotated[Path | None, typer.Option("--out", help="folder for stats.json and PNG plots")] = None,
) -> None:
    """Counts, durations, labels, quality flags and rejections of a store; contents of conversation sets."""
    from ecgbench.data import stats
    from ecgbench.data.conversations import read_conversation_set
    from ecgbench.files import check_output

    state(ctx).settings()  # a bad --config or environment value is reported before any work
    if not store and not sets:
        raise UserError("give a --store and/or --sets to describe")
    check_output(out / "stats.json" if out else None, "--out", [*(store or []), *(sets or [])])
    result: dict = {}
    if store:
        opened = _open_stores(store)
        result["store"] = stats.store_stats([s.index for s in opened], [s.manifest for s in opened])
        stdout.print(_store_table(result["store"]))
    if sets:
        result["sets"] = {str(path): stats.set_stats(read_conversation_set(path)) for path in sets}
        stdout.print(_sets_table(result["sets"]))
    if out is not None:
        for path in stats.write_stats(result, out):
            stdout.print(f"wrote {path}")


def _store_table(s: dict) -> Table:
    from rich.table import Table

    table = Table(
        title=f"segment store: {s['segments']} segments, {s['records']} records, {s['hours']:.2f} h"
    )
    for column in ("corpus", "records", "patients", "segments", "hours"):
        table.add_column(column, justify="left" if column == "corpus" else "right")
    for corpus, c in s["corpora"].items():
        table.add_row(corpus, str(c["records"]), str(c["patients"]), str(c["segments"]), f"{c['hours']:.2f}")
    q = s["quality"]
    table.caption = (
        f"labels: {len(s['labels'])} distinct, top {', '.join(list(s['labels'])[:5]) or '-'}; "
        f"no label: {s['records_without_labels']} records; "
        f"flat-lead segments {q['segments_with_flat_leads']}, "
        f"saturated {q['segments_saturated']}, gap-filled {q['segments_with_filled_gaps']}; "
        f"rejected: {_reasons(s['rejected']) or 'none'}"
    )
    return table


def _sets_table(all_sets: dict) -> Table:
    from rich.table import Table

    table = Table(title="conversation sets")
    for column in ("set", "conversations", "ECGs", "question types", "splits"):
        table.add_column(column)
    for name, s in all_sets.items():
        table.add_row(
            Path(name).name,
            str(s["conversations"]),
            str(s["distinct_ecgs"]),
            _reasons(s["question_types"]),
            _reasons(s["splits"]),
        )
    return table


@app.command("plot")
@settings_options("sets.renderer")
def plot_command(
    store: Annotated[Path, typer.Option("--store", help="segment store directory")],
    out: Annotated[Path, typer.Option("--out", help="image file: .png, .svg or .pdf")],
    segment: Annotated[int | None, typer.Option("--segment", help="segment id")] = None,
    record: Annotated[
        str | None, typer.Option("--record", help="record id (its first segment, or --part)")
    ] = None,
    corpus: Annotated[str | None, typer.Option("--corpus", help="corpus of --record if ids repeat")] = None,
    part: Annotated[int, typer.Option("--part", help="segment number within --record")] = 0,
    *,
    cfg: SetsSettings,
) -> None:
    """Draw one segment as a standard 12-lead paper-style ECG (3x4 + lead II, 25 mm/s, 10 mm/mV)."""
    from ecgbench.data import plotting
    from ecgbench.data.store import SegmentStore
    from ecgbench.files import check_output

    segment_store = SegmentStore.open(store, verify=True)  # checks the one shard it reads
    check_output(out, "--out", [store])
    segment_id = _segment_id(segment_store, segment, record, corpus, part)
    signal = segment_store.read(segment_id)
    row = segment_store.index.slice(segment_id, 1).to_pylist()[0]
    title = f"{row['corpus']} {row['record_id']} segment {row['segment_index']} (id {segment_id})"
    path = plotting.plot_segment(signal, float(segment_store.fs), out, renderer=cfg.renderer, title=title)
    stdout.print(f"wrote {path}")


def _segment_id(
    store: SegmentStore, segment: int | None, record: str | None, corpus: str | None, part: int
) -> int:
    if (segment is None) == (record is None):
        raise UserError("give either --segment or --record")
    if segment is not None:
        if not 0 <= segment < len(store):
            raise UserError(f"invalid value for --segment: {segment} (the store has {len(store)} segments)")
        return segment
    index = store.index.select(["corpus", "record_id", "segment_id"])
    matches = [
        (c, s)
        for c, r, s in zip(
            *(index.column(n).to_pylist() for n in ("corpus", "record_id", "segment_id")), strict=True
        )
        if r == record and (corpus is None or c == corpus)
    ]
    if not matches:
        raise UserError(f"record {record!r} is not in the store" + (f" (corpus {corpus})" if corpus else ""))
    if len({c for c, _ in matches}) > 1:
        raise UserError(f"record {record!r} is in several corpora: add --corpus")
    if not 0 <= part < len(matches):
        raise UserError(f"invalid value for --part: {part} (record {record} has {len(matches)} segments)")
    return sorted(s for _, s in matches)[part]
