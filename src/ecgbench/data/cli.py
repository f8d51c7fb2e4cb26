"""The ``ecgbench data`` command group: ``prepare`` and ``export`` live here; ``map``, ``split``,
``sample``, ``stats`` and ``plot`` come from ``ecgbench.data.cli_sets``. Library modules are imported
inside the commands, so the group's help and completion load none of them."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ecgbench.commands import help_names, new_group, out_option, settings_options
from ecgbench.console import console, stdout
from ecgbench.data import cli_sets
from ecgbench.rag import cli as rag_cli
from ecgbench.settings import DataSettings

data_app = new_group()


def _corpora() -> str:
    from ecgbench.data.readers import READERS

    return ", ".join(READERS)


def _complete_corpus(incomplete: str) -> list[str]:
    from ecgbench.data.readers import READERS

    return [name for name in READERS if name.startswith(incomplete)]


@data_app.command("prepare", cls=help_names(corpora=_corpora))
@settings_options("data")
def prepare_command(
    corpus: Annotated[str, typer.Argument(help="corpus reader: {corpora}", autocompletion=_complete_corpus)],
    out: Annotated[Path, out_option("folder of the segment store to write")],
    root: Annotated[
        Path | None, typer.Option("--root", help="folder of the raw corpus (not needed for `sample`)")
    ] = None,
    shard: Annotated[
        str | None, typer.Option("--shard", help="prepare only block i of n (i/n) into OUT/part-i-of-n")
    ] = None,
    limit: Annotated[int | None, typer.Option("--limit", min=1, help="only the first N records")] = None,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="replace an existing store at --out")
    ] = False,
    *,
    data: DataSettings,
) -> None:
    """Read a corpus, filter, resample and segment every record into a segment store.

    Rerunning the same command resumes an interrupted run and does nothing on a finished store.
    After all `--shard i/n` jobs finish, run the command once more without --shard to join them."""
    from ecgbench.data.prepare import parse_shard, prepare

    job = parse_shard(shard)
    result = prepare(corpus, root, out, data, shard=job, overwrite=overwrite, limit=limit)
    store = result.store
    if result.skipped:
        console.print(f"{store.path} is already prepared with these settings; nothing to do")
    counts = store.manifest["counts"]
    from rich.table import Table

    table = Table(title=f"{store.path}", show_header=False)
    table.add_row("records kept", str(counts["records_kept"]))
    for reason, n in counts["rejected"].items():
        table.add_row(f"rejected: {reason}", str(n))
    table.add_row("segments", f"{len(store)} x 12 x {store.seg_len} at {store.fs} Hz ({store.dtype.name})")
    table.add_row("segments with flat leads", str(counts["flat_lead_segments"]))
    table.add_row("segments with saturation", str(counts["saturated_segments"]))
    table.add_row("records with NaN filled", str(counts["nan_filled_records"]))
    table.add_row("records without patient id", str(counts.get("records_without_patient", 0)))
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


@data_app.command("verify")
def verify_command(
    store: Annotated[Path, typer.Argument(help="segment store folder")],
) -> None:
    """Check a whole segment store: every shard against its checksum, shape and type, the index and the
    rejections table (reads all data; readers only check what they read)."""
    from ecgbench.data.store import verify_store
    from ecgbench.errors import CorruptFileError

    checked, problems, notes = verify_store(store)
    for note in notes:
        console.print(f"note: {note}", soft_wrap=True, markup=False)
    if problems:
        for problem in problems:
            console.print(f"damaged: {problem}", soft_wrap=True, markup=False)
        raise CorruptFileError(
            f"{store}: {len(problems)} problem(s) found; prepare the store again (--overwrite)"
        )
    stdout.print(
        f"{store}: ok ({len(checked)} segments in {len(checked.manifest['shards'])} shards, checksums match)"
    )


data_app.add_typer(cli_sets.app)  # map, split, sample, stats, plot
data_app.add_typer(rag_cli.app, name="rag")  # rag build | query
