"""`ecgbench data rag build | query` on the bundled real sample, split by patient (`data split --folds 5`)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from ecgbench.cli import app
from ecgbench.data.store import SegmentStore
from ecgbench.rag.index import RagIndex, build_index, feature_vectors, segment_keys

runner = CliRunner()


def invoke(*args: object) -> tuple[int, str]:
    result = runner.invoke(app, [str(a) for a in args])
    return result.exit_code, result.output


@pytest.fixture(scope="module")
def rag_index(sample_store: Path, split_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The index of the sample store's train split (val and test excluded, the default)."""
    out = tmp_path_factory.mktemp("rag") / "index"
    splits = split_dir / "splits.parquet"
    code, output = invoke("data", "rag", "build", "--store", sample_store, "--splits", splits, "--out", out)
    assert code == 0, output
    return out


def test_build_indexes_only_the_train_split(rag_index: Path, sample_store: Path, split_dir: Path) -> None:
    from ecgbench.data.splits import read_record_splits, segments_in_split

    store = SegmentStore.open(sample_store)
    train = segments_in_split(store.index, read_record_splits(split_dir / "splits.parquet"), "train")
    index = RagIndex.open(rag_index)
    assert index.rows == len(train) and index.faiss_index.ntotal == len(train)
    assert sorted(index.records.column("segment_id").to_pylist()) == train.tolist()
    assert set(index.records.column("split").to_pylist()) == {"train"}
    manifest = index.manifest
    assert manifest["faiss"]["type"] == "flat" and manifest["recall_at_10"] is None  # small: exact
    assert manifest["splits"]["excluded"] == ["val", "test"]
    assert manifest["excluded_segments"]["test"] + manifest["excluded_segments"]["val"] == len(store) - len(
        train
    )


def test_query_never_returns_own_record_patient_or_eval_split(rag_index: Path, sample_store: Path) -> None:
    store = SegmentStore.open(sample_store)
    index = RagIndex.open(rag_index)
    ids = np.arange(len(store))  # every segment, of every split, asks
    records, patients = segment_keys(store.index)
    hits = index.search(index.standardise(feature_vectors(store, ids)), [[r] for r in records],
                        [[p] for p in patients], 5)  # fmt: skip
    for record, patient, found in zip(records, patients, hits, strict=True):
        assert len(found) == 5
        keys = [(h.corpus, h.record_id) for h in found]
        assert len(set(keys)) == 5  # one neighbour per record
        assert all(f"{c}\x1f{r}" != record for c, r in keys)
        assert all(f"{h.corpus}\x1f{h.patient_id}" != patient for h in found)
        assert {h.split for h in found} == {"train"}


def test_without_the_rule_the_nearest_would_be_its_own_record(sample_store: Path, tmp_path: Path) -> None:
    """The peer's defect, shown on an index of every split: raw faiss neighbours of a two-segment record
    include its other segment; the search drops it (and all of its patient)."""
    build_index(sample_store, tmp_path / "all")
    store = SegmentStore.open(sample_store)
    index = RagIndex.open(tmp_path / "all")
    ids = np.asarray(store.records()[("ptbxl", "1")])
    vectors = index.standardise(feature_vectors(store, ids[:1]))
    _, raw = index.faiss_index.search(vectors, 3)
    raw_records = index.records.take(raw[0]).column("record_id").to_pylist()
    assert raw_records[:2] == ["1", "1"]  # itself, then its other segment
    records, patients = segment_keys(store.index.take(ids[:1]))
    found = index.search(vectors, [list(records)], [list(patients)], 3)[0]
    assert all(h.record_id != "1" and h.patient_id != "15709" for h in found if h.corpus == "ptbxl")


def test_query_command_prints_neighbours_as_json(rag_index: Path, sample_store: Path) -> None:
    code, output = invoke("data", "rag", "query", rag_index, "--store", sample_store, "--record", "ptbxl/1",
                          "-k", "2", "--json")  # fmt: skip
    assert code == 0, output
    row = json.loads(output)
    assert row["query"]["record_id"] == "1" and len(row["neighbours"]) == 2
    assert all(n["record_id"] != "1" and n["split"] == "train" for n in row["neighbours"])


def test_build_refuses_an_existing_folder_and_keeps_it(rag_index: Path, sample_store: Path) -> None:
    before = (rag_index / "manifest.json").read_bytes()
    code, output = invoke("data", "rag", "build", "--store", sample_store, "--out", rag_index)
    assert code == 2 and "already exists and is not empty; nothing was overwritten" in output
    assert len(output.strip().splitlines()) == 1
    assert (rag_index / "manifest.json").read_bytes() == before


def test_query_refuses_an_index_of_another_store(rag_index: Path, tmp_path: Path) -> None:
    other = tmp_path / "other"
    code, output = invoke("data", "prepare", "sample", "--out", other, "--limit", "3")
    assert code == 0, output
    code, output = invoke("data", "rag", "query", rag_index, "--store", other, "--segment", "0")
    assert code == 2 and "was built from another store" in output
    assert len(output.strip().splitlines()) == 1


def test_empty_and_missing_indexes_are_one_line_errors(
    rag_index: Path, sample_store: Path, tmp_path: Path
) -> None:
    (tmp_path / "nothing").mkdir()
    code, output = invoke(
        "data", "rag", "query", tmp_path / "nothing", "--store", sample_store, "--segment", "0"
    )
    assert code == 2 and "is not a RAG index" in output
    empty = tmp_path / "empty"
    shutil.copytree(rag_index, empty)
    manifest = json.loads((empty / "manifest.json").read_text())
    (empty / "manifest.json").write_text(json.dumps({**manifest, "rows": 0}))
    code, output = invoke("data", "rag", "query", empty, "--store", sample_store, "--segment", "0")
    assert code == 2 and "is empty" in output and len(output.strip().splitlines()) == 1


def test_build_refuses_a_split_that_leaves_nothing(
    sample_store: Path, split_dir: Path, tmp_path: Path
) -> None:
    args = ["data", "rag", "build", "--store", sample_store, "--splits", split_dir / "splits.parquet",
            "--out", tmp_path / "idx"]  # fmt: skip
    code, output = invoke(*args, *[f for s in ("train", "val", "test") for f in ("--exclude-split", s)])
    assert code == 2 and "no segment" in output and not (tmp_path / "idx").exists()


def test_embeddings_index_of_encoder_embed_layout(sample_store: Path, tmp_path: Path) -> None:
    """An index over vectors in `encoder embed`'s layout (segment_id, corpus, record_id, fixed-size
    float32 list; ecgbench.train.encoder.embed_segments), here holding the feature vectors themselves."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    store = SegmentStore.open(sample_store)
    ids = np.arange(len(store))
    values = feature_vectors(store, ids)
    keys = store.index.select(["segment_id", "corpus", "record_id"])
    column = pa.FixedSizeListArray.from_arrays(pa.array(values.reshape(-1)), values.shape[1])
    pq.write_table(keys.append_column("embedding", column), tmp_path / "emb.parquet")
    code, output = invoke(
        "data",
        "rag",
        "build",
        "--store",
        sample_store,
        "--vectors",
        "embeddings",
        "--embeddings",
        tmp_path / "emb.parquet",
        "--index-type",
        "hnsw",
        "--out",
        tmp_path / "e",
    )
    assert code == 0, output
    index = RagIndex.open(tmp_path / "e")
    assert index.vector_kind == "embeddings" and 0.0 < index.manifest["recall_at_10"]["value"] <= 1.0
    query = ["data", "rag", "query", tmp_path / "e", "--store", sample_store, "--record", "ptbxl/1"]
    code, output = invoke(*query, "--json", "-k", "1")
    assert code == 0, output
    assert json.loads(output)["neighbours"][0]["record_id"] != "1"
