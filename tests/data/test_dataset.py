"""The one data path (ConversationDataset, RecordIndex) on the prepared real sample and its `labels` set."""

from __future__ import annotations

import json
import pickle
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from ecgbench.cli import app
from ecgbench.data.conversations import (
    SPLITS,
    Conversation,
    EcgRef,
    conversation_table,
    iter_conversations,
    read_conversation_set,
    with_info,
    write_conversation_set,
)
from ecgbench.data.dataset import ConversationDataset, RecordIndex
from ecgbench.data.prepare import prepare
from ecgbench.data.splits import read_record_splits, record_split_lookup, split_conversations
from ecgbench.data.store import SegmentStore
from ecgbench.errors import UserError
from ecgbench.resources import SAMPLE_DIR
from ecgbench.settings import DataSettings


def invoke(*args: str) -> None:
    result = CliRunner().invoke(app, list(args))
    assert result.exit_code == 0, result.output


def first_segments(store: SegmentStore) -> dict[tuple[str, str], int]:
    """(corpus, record_id) -> its first segment id, read from the store's index."""
    first: dict[tuple[str, str], int] = {}
    for row in store.index.select(["corpus", "record_id", "segment_id"]).to_pylist():
        key = (row["corpus"], row["record_id"])
        first[key] = min(first.get(key, row["segment_id"]), row["segment_id"])
    return first


@pytest.fixture(scope="module")
def store(sample_store: Path) -> SegmentStore:
    return SegmentStore.open(sample_store)


@pytest.fixture(scope="module")
def split_set(split_dir: Path) -> Path:
    return split_dir / "labels.parquet"


@pytest.fixture(scope="module")
def corpus_stores(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The bundled Chapman-Shaoxing-Ningbo and CPSC 2018 records, each prepared into a store of its own
    (the sample store holds both corpora too)."""
    root = tmp_path_factory.mktemp("corpus_stores")
    sources = {"csn": "chapman_shaoxing_ningbo_cinc2021", "cpsc": "cpsc2018"}
    return {
        corpus: prepare(corpus, SAMPLE_DIR / folder, root / corpus, DataSettings()).store.path
        for corpus, folder in sources.items()
    }


@pytest.fixture(scope="module")
def comparison_set(store: SegmentStore, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A set with one two-ECG conversation (the bundled ECG-QA comparison question, asked about two real
    records of the store) and one without any ECG."""
    question = json.loads((SAMPLE_DIR / "ecgqa/ptbxl/paraphrased/test/80000.json").read_text())[0]
    records = [EcgRef(c, r) for c, r in sorted(first_segments(store))[:2]]
    conversations = [
        Conversation(
            source="comparison",
            source_id="0",
            turns=[
                {"role": "user", "content": f"First ECG: <ecg>\nSecond ECG: <ecg>\n{question['question']}"},
                {"role": "assistant", "content": ", ".join(question["answer"])},
            ],
            ecgs=records,
            question_type=question["question_type"],
        ),
        Conversation(
            source="comparison",
            source_id="1",
            turns=[
                {"role": "user", "content": "What does a normal sinus rhythm look like?"},
                {"role": "assistant", "content": "Regular P waves before every QRS complex, 60-100 bpm."},
            ],
            ecgs=[],
        ),
    ]
    path = tmp_path_factory.mktemp("comparison") / "comparison.parquet"
    return write_conversation_set(path, with_info(conversation_table(conversations), sources=["comparison"]))


# ------------------------------------------------------------------------------------------ items


def test_items_are_the_set_rows_with_the_first_segment_of_each_record(store, split_set) -> None:
    expected = list(iter_conversations(read_conversation_set(split_set)))
    dataset = ConversationDataset([split_set], [store.path])
    assert len(dataset) == len(expected) > 100
    first = first_segments(store)
    segments = Counter(
        zip(*(store.index.column(n).to_pylist() for n in ("corpus", "record_id")), strict=True)
    )
    multi_segment = 0
    for i, conversation in enumerate(expected):
        item = dataset[i]
        assert item.conversation_id == conversation.conversation_id == dataset.conversation_id(i)
        assert item.source == "labels" and item.split == conversation.split in SPLITS
        assert item.turns == conversation.turns == dataset.turns(i)
        assert item.ecg_refs == conversation.ecgs == dataset.ecg_refs(i)
        assert item.question_type == conversation.question_type
        assert item.answer_options == conversation.answer_options
        assert len(item.ecgs) == len(conversation.ecgs) == 1
        ref = conversation.ecgs[0]
        ecg = item.ecgs[0]
        assert ecg.dtype == np.float32 and ecg.shape == (12, store.seg_len)
        np.testing.assert_array_equal(ecg, store.read(first[(ref.corpus, ref.record_id)]))
        np.testing.assert_array_equal(dataset.ecgs(i)[0], ecg)
        if segments[(ref.corpus, ref.record_id)] > 1:
            multi_segment += 1
            assert not np.array_equal(ecg, store.read(first[(ref.corpus, ref.record_id)] + 1))
    assert multi_segment > 50  # most sample records span several segments: the first one is served
    assert dataset[-1].conversation_id == expected[-1].conversation_id
    with pytest.raises(IndexError):
        dataset[len(dataset)]


def test_a_set_read_in_many_blocks_gives_the_same_items(store, split_set, tmp_path) -> None:
    # A large set comes back from Parquet as several record batches; rows must not shift between them.
    table = read_conversation_set(split_set)
    blocks = tmp_path / "blocks.parquet"
    pq.write_table(table, blocks, row_group_size=7)
    assert pq.ParquetFile(blocks).metadata.num_row_groups > 10
    whole = ConversationDataset([split_set], [store.path], split="train")
    parts = ConversationDataset([blocks], [store.path], split="train")
    assert len(parts) == len(whole)
    for i in range(len(whole)):
        a, b = whole[i], parts[i]
        assert (a.conversation_id, a.turns, a.ecg_refs, a.answer_options) == (
            b.conversation_id,
            b.turns,
            b.ecg_refs,
            b.answer_options,
        )
        np.testing.assert_array_equal(a.ecgs[0], b.ecgs[0])


def test_multi_ecg_and_ecg_free_conversations(store, comparison_set) -> None:
    dataset = ConversationDataset([comparison_set], [store.path])
    first = first_segments(store)
    pair, plain = dataset[0], dataset[1]
    assert [e.shape for e in pair.ecgs] == [(12, store.seg_len)] * 2
    for ref, ecg in zip(pair.ecg_refs, pair.ecgs, strict=True):
        np.testing.assert_array_equal(ecg, store.read(first[(ref.corpus, ref.record_id)]))
    assert plain.ecgs == [] and plain.ecg_refs == [] and plain.split is None and plain.answer_options == []


# ------------------------------------------------------------------------------------------ splits


def test_split_column_and_splits_file_select_the_same_conversations(
    store, labels_set, split_set, split_dir
) -> None:
    record_split = {
        (r["corpus"], r["record_id"]): r["split"]
        for r in pq.read_table(split_dir / "splits.parquet").to_pylist()
    }
    seen = []
    for split in SPLITS:
        by_column = ConversationDataset([split_set], [store.path], split=split)
        by_file = ConversationDataset(
            [labels_set], [store.path], split=split, splits=split_dir / "splits.parquet"
        )
        ids = [by_column.conversation_id(i) for i in range(len(by_column))]
        assert ids == [by_file.conversation_id(i) for i in range(len(by_file))] and ids
        for i in range(len(by_file)):
            item = by_file[i]
            assert item.split == split == record_split[(item.ecg_refs[0].corpus, item.ecg_refs[0].record_id)]
        seen += ids
    every = [c.conversation_id for c in iter_conversations(read_conversation_set(labels_set))]
    assert sorted(seen) == sorted(every)  # each labels conversation has one ECG, so every one is placed


def test_a_conversation_takes_the_split_its_ecgs_share(store, split_dir, tmp_path) -> None:
    record_splits = read_record_splits(split_dir / "splits.parquet")
    by_split: dict[str, list[EcgRef]] = {}
    for r in record_splits.to_pylist():
        by_split.setdefault(r["split"], []).append(EcgRef(r["corpus"], r["record_id"]))
    pairs = {"same": by_split["train"][:2], "mixed": [by_split["train"][0], by_split["test"][0]]}
    turns = [
        {"role": "user", "content": "<ecg> and <ecg>: same rhythm?"},
        {"role": "assistant", "content": "no"},
    ]
    table = conversation_table(Conversation("pairs", name, turns, refs) for name, refs in pairs.items())
    path = write_conversation_set(tmp_path / "pairs.parquet", with_info(table, sources=["pairs"]))
    splits = split_dir / "splits.parquet"
    train = ConversationDataset([path], [store.path], split="train", splits=splits)
    assert [train.conversation_id(i) for i in range(len(train))] == ["pairs/same"]
    for split in ("val", "test"):  # ECGs in two splits: the conversation is in none, as `data split` says
        with pytest.raises(UserError, match=f"no conversation in the {split} split"):
            ConversationDataset([path], [store.path], split=split, splits=splits)
    placed, _ = split_conversations(table, record_split_lookup(record_splits))
    assert placed.column("split").to_pylist() == ["train", None]


def test_split_errors(store, labels_set, split_set, split_dir, tmp_path) -> None:
    with pytest.raises(UserError, match="has no splits: run `ecgbench data split"):
        ConversationDataset([labels_set], [store.path], split="train")
    # every val conversation moved to train: the val split is empty
    table = read_conversation_set(split_set)
    rows = table.to_pylist()
    for row in rows:
        row["split"] = "train" if row["split"] == "val" else row["split"]
    no_val = tmp_path / "no_val.parquet"
    write_conversation_set(no_val, table.from_pylist(rows, schema=table.schema))
    with pytest.raises(UserError, match="has no conversation in the val split"):
        ConversationDataset([no_val], [store.path], split="val")
    assert len(ConversationDataset([no_val], [store.path], split="train")) > len(
        ConversationDataset([split_set], [store.path], split="train")
    )
    with pytest.raises(UserError, match="invalid split 'dev'"):
        ConversationDataset([split_set], [store.path], split="dev")
    with pytest.raises(UserError, match="splits file not found"):
        ConversationDataset([labels_set], [store.path], split="train", splits=tmp_path / "none.parquet")


def test_splits_of_other_records_place_no_conversation(store, labels_set, split_dir, tmp_path) -> None:
    # a splits file that lists none of the set's records (made from another store)
    splits = pq.read_table(split_dir / "splits.parquet")
    other = splits.set_column(splits.schema.get_field_index("record_id"), "record_id",
                              [[f"other-{r}" for r in splits.column("record_id").to_pylist()]])  # fmt: skip
    pq.write_table(other, tmp_path / "splits.parquet")
    with pytest.raises(UserError, match=r"no conversation of .* has all its ECGs in one split of"):
        ConversationDataset([labels_set], [store.path], split="train", splits=tmp_path / "splits.parquet")


# ------------------------------------------------------------------------------------------ mixing


def test_weights_repeat_halve_and_are_seeded(store, split_set, comparison_set) -> None:
    labels = ConversationDataset([split_set], [store.path])
    n = len(labels)
    labels_ids = [labels.conversation_id(i) for i in range(n)]

    def ids(dataset: ConversationDataset) -> list[str]:
        return [dataset.conversation_id(i) for i in range(len(dataset))]

    twice = ConversationDataset([split_set, comparison_set], [store.path], weights=[1.0, 2.0])
    assert len(twice) == n + 4
    assert Counter(ids(twice)) == Counter(labels_ids + ["comparison/0", "comparison/1"] * 2)

    half = ConversationDataset([split_set, comparison_set], [store.path], weights=[0.5, 1.0], seed=3)
    kept = ids(half)[:-2]
    assert len(kept) == round(n / 2) and len(set(kept)) == len(kept) and set(kept) < set(labels_ids)
    assert ids(half)[-2:] == ["comparison/0", "comparison/1"]
    again = ConversationDataset([split_set, comparison_set], [store.path], weights=[0.5, 1.0], seed=3)
    other = ConversationDataset([split_set, comparison_set], [store.path], weights=[0.5, 1.0], seed=4)
    assert ids(again) == ids(half) and ids(other) != ids(half)

    one_and_a_half = ConversationDataset([split_set], [store.path], weights=[1.5], seed=3)
    counts = Counter(ids(one_and_a_half))
    assert len(one_and_a_half) == n + round(n / 2) and set(counts.values()) == {1, 2}

    bad = [
        ([1.0], "one positive weight per set"),
        ([0.0, 1.0], "positive"),
        ([float("nan"), 1.0], "positive"),
    ]
    for weights, message in [*bad, ([1e-9, 1.0], "keeps no conversation")]:
        with pytest.raises(UserError, match=message):
            ConversationDataset([split_set, comparison_set], [store.path], weights=weights)


# ------------------------------------------------------------------------------------------ stores


def test_two_stores_serve_their_own_records(corpus_stores, tmp_path) -> None:
    paths = [corpus_stores["csn"], corpus_stores["cpsc"]]
    invoke(
        "data", "map", "labels", "--store", str(paths[0]), "--store", str(paths[1]), "--out", str(tmp_path)
    )
    dataset = ConversationDataset([tmp_path / "labels.parquet"], paths)
    assert dataset.records.check_shapes() == (1250, 250)
    stores = {p.name: SegmentStore.open(p) for p in paths}
    firsts = {name: first_segments(s) for name, s in stores.items()}
    corpora = Counter()
    for i in range(len(dataset)):
        item = dataset[i]
        (ref,) = item.ecg_refs
        np.testing.assert_array_equal(
            item.ecgs[0], stores[ref.corpus].read(firsts[ref.corpus][(ref.corpus, ref.record_id)])
        )
        assert ref in dataset.records
        corpora[ref.corpus] += 1
    assert set(corpora) == {"csn", "cpsc"}
    assert EcgRef("ptbxl", "1") not in dataset.records
    assert [s["path"] for s in dataset.info()["stores"]] == [str(p) for p in paths]


def test_a_record_in_two_stores_is_refused(store, corpus_stores) -> None:
    with pytest.raises(
        UserError, match=r"record csn/JS\d+ is in more than one --store .*give each record once"
    ):
        RecordIndex.open([store.path, corpus_stores["csn"]])
    with pytest.raises(UserError, match="at least one --store"):
        RecordIndex([])


@pytest.mark.parametrize("row_group_size", [None, 7], ids=["one-block", "many-blocks"])
def test_missing_ecgs_are_one_error_naming_the_conversation(
    split_set, corpus_stores, tmp_path, row_group_size
) -> None:
    path = tmp_path / "set.parquet"
    pq.write_table(read_conversation_set(split_set), path, row_group_size=row_group_size)
    conversations = list(iter_conversations(read_conversation_set(path)))
    first_missing = next(c for c in conversations if c.ecgs[0].corpus != "csn")
    missing = sum(c.ecgs[0].corpus != "csn" for c in conversations)
    with pytest.raises(UserError) as caught:
        ConversationDataset([path], [corpus_stores["csn"]])
    message = str(caught.value)
    assert "\n" not in message and message.startswith(f"{path}: conversation {first_missing.conversation_id}")
    ref = first_missing.ecgs[0]
    assert (
        f"ECG {ref.corpus}/{ref.record_id}, which is in none of the given stores ({missing} such" in message
    )


# ------------------------------------------------------------------------------------------ sizes, pickling


def test_length_proxy_counts_characters_and_ecg_tokens(store, split_set, comparison_set) -> None:
    dataset = ConversationDataset([split_set, comparison_set], [store.path], weights=[1.0, 2.0])
    chars = np.array([sum(len(t["content"]) for t in dataset.turns(i)) for i in range(len(dataset))])
    n_ecgs = np.array([len(dataset.ecg_refs(i)) for i in range(len(dataset))])
    np.testing.assert_allclose(dataset.length_proxy(0.0), chars / 4.0)
    proxy = dataset.length_proxy(100.0)
    np.testing.assert_allclose(proxy, chars / 4.0 + 100.0 * n_ecgs)
    # ordering: a report (long answer) outranks a yes/no question on the same record
    kinds = [dataset[i].question_type for i in range(len(dataset))]
    reports = proxy[[k == "report" for k in kinds]]
    verify = proxy[[k == "single-verify" for k in kinds]]
    assert np.median(reports) > np.median(verify)
    assert (
        proxy[-4] == proxy[-2] > proxy[-1] == proxy[-3]
    )  # the comparison (2 ECGs) outranks the ECG-free one


def test_dataset_pickles_without_the_mapped_shards(store, split_set) -> None:
    dataset = ConversationDataset([split_set], [store.path], split="test")
    before = [dataset[i] for i in range(len(dataset))]  # maps the shards
    shard_bytes = sum(p.stat().st_size for p in (store.path / "shards").glob("*.npy"))
    blob = pickle.dumps(dataset)
    assert len(blob) < shard_bytes / 10  # the stores travel as paths, not as their memory-mapped shards
    restored = pickle.loads(blob)
    assert restored.records.stores[0] is not dataset.records.stores[0]
    assert len(restored) == len(dataset) and restored.info() == dataset.info()
    for i, item in enumerate(before):
        again = restored[i]
        assert (again.conversation_id, again.turns, again.ecg_refs) == (
            item.conversation_id,
            item.turns,
            item.ecg_refs,
        )
        np.testing.assert_array_equal(again.ecgs[0], item.ecgs[0])


def test_bad_arguments(store, split_set) -> None:
    with pytest.raises(UserError, match="at least one --sets"):
        ConversationDataset([], [store.path])
    with pytest.raises(UserError, match="not a segment store"):
        ConversationDataset([split_set], [split_set.parent])
