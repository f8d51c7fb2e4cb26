"""``ecgbench data rag build | query``: a retrieval index over a segment store, and searching it.

Kept light at import time (``ecgbench data --help`` loads no faiss, numpy or pyarrow)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ecgbench.commands import SplitsOption, StoreOption, new_group, out_option
from ecgbench.console import console, stdout
from ecgbench.errors import UserError

app = new_group(name="rag", help="Retrieval index over a segment store: build, query.")


@app.command("build")
def build_command(
    store: StoreOption,
    out: Annotated[
        Path, out_option("new folder for the index (manifest.json, index.faiss, records.parquet)")
    ],
    splits: SplitsOption = None,
    exclude_split: Annotated[
        list[str] | None,
        typer.Option(
            "--exclude-split",
            help="split kept out of the index, with --splits (repeatable; default: val and test)",
        ),
    ] = None,
    vectors: Annotated[
        str, typer.Option("--vectors", help="features (per-lead ECG features) or embeddings (--embeddings)")
    ] = "features",
    embeddings: Annotated[
        Path | None,
        typer.Option("--embeddings", help="Parquet file from `ecgbench encoder embed` (whole store)"),
    ] = None,
    index_type: Annotated[
        str,
        typer.Option("--index-type", help="auto (exact up to --exact-max rows, else hnsw), flat, hnsw, ivf"),
    ] = "auto",
    exact_max: Annotated[
        int, typer.Option("--exact-max", min=1, help="largest exact index of --index-type auto")
    ] = 50_000,
) -> None:
    """Index every retrievable segment of a store: its vectors in faiss, its records, reports and labels in
    a Parquet table beside them. With --splits, the evaluation splits stay out of the index."""
    from ecgbench.console import progress
    from ecgbench.rag.index import SPLITS_DEFAULT, build_index

    if vectors not in ("features", "embeddings"):
        raise UserError(f"invalid value for --vectors: {vectors!r} (allowed: features, embeddings)")
    if index_type not in ("auto", "flat", "hnsw", "ivf"):
        raise UserError(f"invalid value for --index-type: {index_type!r} (allowed: auto, flat, hnsw, ivf)")
    if exclude_split and splits is None:
        raise UserError("--exclude-split needs --splits (the file that places each record in a split)")
    from ecgbench.files import check_output
    from ecgbench.rag.index import check_new_folder

    check_output(out, "--out", [store, splits, embeddings])  # refused before any progress is drawn
    check_new_folder(out)
    with progress() as bar:
        task = bar.add_task("rag build", total=None)
        result = build_index(
            store,
            out,
            splits_path=splits,
            exclude_splits=tuple(exclude_split) if exclude_split else SPLITS_DEFAULT,
            vectors=vectors,  # type: ignore[arg-type]
            embeddings=embeddings,
            kind=index_type,  # type: ignore[arg-type]
            exact_max=exact_max,
            progress=lambda n: bar.advance(task, n),
        )
    if splits is None:
        console.print(
            "[yellow]note[/yellow]: built without --splits: every split is retrievable; give --splits to "
            "keep the evaluation split out"
        )
    if result.recall_at_10 is not None and result.recall_at_10 < 0.95:
        console.print(
            f"[yellow]note[/yellow]: the {result.kind} index finds {result.recall_at_10:.1%} of the exact 10 "
            "nearest neighbours; --index-type flat is exact"
        )
    excluded = ", ".join(f"{name} {n}" for name, n in result.excluded.items()) or "none"
    recall = "" if result.recall_at_10 is None else f", recall@10 {result.recall_at_10:.3f} vs exact"
    stdout.print(
        f"indexed {result.rows} segments ({result.dim} dims, {result.kind}{recall}) in "
        f"{result.seconds:.1f} s; excluded: {excluded}"
    )
    stdout.print(f"wrote {result.out}")


@app.command("query")
def query_command(
    index: Annotated[Path, typer.Argument(help="index folder from `data rag build`")],
    store: StoreOption,
    record: Annotated[
        list[str] | None,
        typer.Option("--record", help="query record CORPUS/RECORD_ID of the store (repeatable)"),
    ] = None,
    segment: Annotated[
        list[int] | None, typer.Option("--segment", help="query segment id of the store (repeatable)")
    ] = None,
    k: Annotated[int, typer.Option("--k", "-k", min=1, help="neighbours per query")] = 3,
    splits: SplitsOption = None,
    exclude_split: Annotated[
        list[str] | None,
        typer.Option(
            "--exclude-split", help="also filter these splits of --splits at query time (repeatable)"
        ),
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="one JSON line per query instead of a table")
    ] = False,
) -> None:
    """The k nearest retrievable records of store segments: never the query's own record, its patient,
    or an excluded split."""
    import json

    import numpy as np

    from ecgbench.data.store import SegmentStore
    from ecgbench.rag.index import RagIndex, _store_splits, feature_vectors, read_embeddings, segment_keys

    opened = RagIndex.open(index)
    opened.check_store(store)
    segment_store = SegmentStore.open(store)
    store_index = segment_store.index
    ids = list(segment or [])
    if record:
        records = segment_store.records()
        for name in record:
            corpus, _, record_id = name.partition("/")
            if (corpus, record_id) not in records:
                raise UserError(f"--record {name}: no such record in {store} (give CORPUS/RECORD_ID)")
            ids.append(records[(corpus, record_id)][0])
    if not ids:
        raise UserError("give at least one --record CORPUS/RECORD_ID or --segment ID to query")
    bad = [i for i in ids if not 0 <= i < len(segment_store)]
    if bad:
        raise UserError(f"--segment {bad[0]} is not a segment of {store} (0..{len(segment_store) - 1})")
    query_ids = np.asarray(ids, dtype=np.int64)
    if opened.vector_kind == "features":
        opened.check_signals(segment_store.fs, segment_store.seg_len)
        vectors = opened.standardise(feature_vectors(segment_store, query_ids))
    else:
        vectors = opened.standardise(
            read_embeddings(Path(opened.manifest["vectors"]["file"]), store_index, query_ids)
        )
    keys, patients = segment_keys(store_index.take(query_ids))
    override = None
    if exclude_split and splits is None:
        raise UserError("--exclude-split needs --splits")
    if splits is not None:
        override = np.asarray(_store_splits(opened.records, splits), dtype=object)
    hits = opened.search(
        vectors,
        [[key] for key in keys],
        [[p] for p in patients],
        k,
        exclude_splits=tuple(exclude_split or ("val", "test") if splits is not None else ()),
        splits_override=override,
    )
    rows = store_index.take(query_ids).select(["corpus", "record_id"]).to_pylist()
    if as_json:
        for sid, row, found in zip(ids, rows, hits, strict=True):
            stdout.print_json(
                json.dumps(
                    {
                        "query": {"segment_id": int(sid), **row},
                        "neighbours": [h.__dict__ for h in found],
                    },
                    ensure_ascii=False,
                )
            )
        return
    from rich.table import Table

    for sid, row, found in zip(ids, rows, hits, strict=True):
        table = Table(title=f"{row['corpus']}/{row['record_id']} (segment {sid})")
        for column in ("rank", "record", "patient", "split", "distance", "report / labels"):
            table.add_column(column)
        for rank, hit in enumerate(found, 1):
            from ecgbench.rag.retrieval import context_line

            table.add_row(
                str(rank),
                f"{hit.corpus}/{hit.record_id}",
                hit.patient_id,
                hit.split or "-",
                f"{hit.distance:.2f}",
                context_line(hit),
            )
        stdout.print(table)
        if len(found) < k:
            console.print(f"only {len(found)} retrievable records for this query (k = {k})")
