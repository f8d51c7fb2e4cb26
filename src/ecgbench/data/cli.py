"""The ``ecgbench data`` command group: ``prepare`` and ``export`` live here; ``map``, ``split``,
``sample``, ``stats`` and ``plot`` are added to the same ``data_app`` by ``ecgbench.data.cli_sets``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from ecgbench.console import console, stdout
from ecgbench.data.readers import READERS

data_app = typer.Typer(
    help="Prepare corpora into segment stores and build conversation sets.", no_args_is_help=True
)

CORPORA = ", ".join(READERS)


@data_app.command("prepare")
def prepare_command(
    ctx: typer.Context,
    corpus: Annotated[str, typer.Argument(help=f"corpus reader: {CORPORA}")],
    out: Annotated[Path, typer.Option("--out", help="folder of the segment store to write")],
    root: Annotated[
        Path | None, typer.Option("--root", help="folder of the raw corpus (not needed for `sample`)")
    ] = None,
    seg_len: Annotated[int | None, typer.Option("--seg-len", help="samples per segment")] = None,
    target_fs: Annotated[
        int | None, typer.Option("--target-fs", help="sampling rate of the store, Hz")
    ] = None,
    stride: Annotated[int | None, typer.Option("--stride", help="samples between segment starts")] = None,
    remainder: Annotated[
        str | None, typer.Option("--remainder", help="short last segment: drop or pad")
    ] = None,
    dtype: Annotated[str | None, typer.Option("--dtype", help="float16 or float32 shards")] = None,
    workers: Annotated[int | None, typer.Option("--workers", help="worker processes")] = None,
    bandpass_low: Annotated[
        float | None, typer.Option("--bandpass-low", help="high-pass edge, Hz (0 = off)")
    ] = None,
    bandpass_high: Annotated[
        float | None, typer.Option("--bandpass-high", help="low-pass edge, Hz (0 = off)")
    ] = None,
    filter_order: Annotated[int | None, typer.Option("--filter-order", help="Butterworth order")] = None,
    notch: Annotated[str | None, typer.Option("--notch", help="power-line notch: auto, off or Hz")] = None,
    notch_q: Annotated[float | None, typer.Option("--notch-q", help="notch quality factor")] = None,
    baseline: Annotated[
        str | None, typer.Option("--baseline", help="extra baseline removal: off or median")
    ] = None,
    nan_max_gap: Annotated[
        float | None, typer.Option("--nan-max-gap", help="longest NaN gap interpolated, seconds")
    ] = None,
    missing_leads: Annotated[
        str | None, typer.Option("--missing-leads", help="record without 12 leads: reject, derive or zero")
    ] = None,
    flat_threshold: Annotated[
        float | None, typer.Option("--flat-threshold", help="peak-to-peak (mV) below which a lead is flat")
    ] = None,
    saturation_ms: Annotated[
        float | None, typer.Option("--saturation-ms", help="plateau length (ms) that flags saturation")
    ] = None,
    shard_segments: Annotated[
        int | None, typer.Option("--shard-segments", help="segments per shard file")
    ] = None,
    ptbxl_source: Annotated[
        str | None, typer.Option("--ptbxl-source", help="PTB-XL waveforms: auto, records500 or records100")
    ] = None,
    shard: Annotated[
        str | None, typer.Option("--shard", help="prepare only block i of n (i/n) into OUT/part-i-of-n")
    ] = None,
    limit: Annotated[int | None, typer.Option("--limit", min=1, help="only the first N records")] = None,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="replace an existing store at --out")
    ] = False,
) -> None:
    """Read a corpus, filter, resample and segment every record into a segment store.

    Rerunning the same command resumes an interrupted run and does nothing on a finished store.
    After all `--shard i/n` jobs finish, run the command once more without --shard to join them."""
    from ecgbench.cli import state  # the root app imports this module
    from ecgbench.data.prepare import parse_shard, prepare

    settings = state(ctx).settings(
        data={
            "seg_len": seg_len,
            "target_fs": target_fs,
            "stride": stride,
            "remainder": remainder,
            "dtype": dtype,
            "workers": workers,
            "bandpass_low": bandpass_low,
            "bandpass_high": bandpass_high,
            "filter_order": filter_order,
            "notch": notch,
            "notch_q": notch_q,
            "baseline": baseline,
            "nan_max_gap": nan_max_gap,
            "missing_leads": missing_leads,
            "flat_threshold": flat_threshold,
            "saturation_ms": saturation_ms,
            "shard_segments": shard_segments,
            "ptbxl_source": ptbxl_source,
        }
    )
    job = parse_shard(shard)
    result = prepare(corpus, root, out, settings.data, shard=job, overwrite=overwrite, limit=limit)
    store = result.store
    if result.skipped:
        console.print(f"{store.path} is already prepared with these settings; nothing to do")
    counts = store.manifest["counts"]
    table = Table(title=f"{store.path}", show_header=False)
    table.add_row("records kept", str(counts["records_kept"]))
    for reason, n in counts["rejected"].items():
        table.add_row(f"rejected: {reason}", str(n))
    table.add_row("segments", f"{len(store)} x 12 x {store.seg_len} at {store.fs} Hz ({store.dtype.name})")
    table.add_row("segments with flat leads", str(counts["flat_lead_segments"]))
    table.add_row("segments with saturation", str(counts["saturated_segments"]))
    table.add_row("records with NaN filled", str(counts["nan_filled_records"]))
    if result.records_processed:
        rate = result.records_processed / max(result.seconds, 1e-9)
        table.add_row("time", f"{result.seconds:.1f} s ({rate:.1f} records/s)")
    stdout.print(table)
    if counts["rejected"]:
        console.print(f"rejected records are listed in {store.path / 'rejected.parquet'}")


@data_app.command("export")
def export_command(
    store: Annotated[Path, typer.Argument(help="segment store folder")],
    out: Annotated[Path | None, typer.Option("--out", help="folder for datasets.save_to_disk")] = None,
    push_to_hub: Annotated[
        str | None, typer.Option("--push-to-hub", help="also upload to this Hugging Face dataset repo")
    ] = None,
    public: Annotated[
        bool, typer.Option("--public", help="make a pushed dataset public (default private)")
    ] = False,
) -> None:
    """Export a segment store as a Hugging Face `datasets` dataset (signal + every index column)."""
    from ecgbench.data.export import export_store

    dataset = export_store(store, out, push_to_hub=push_to_hub, private=not public)
    if out is not None:
        stdout.print(f"wrote {dataset.num_rows} segments to {out}")
    if push_to_hub is not None:
        stdout.print(f"pushed to https://huggingface.co/datasets/{push_to_hub}")


from ecgbench.data import cli_sets  # noqa: E402,F401
