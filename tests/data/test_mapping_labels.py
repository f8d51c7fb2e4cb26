"""The `labels` conversation set (questions on a store's own labels and reports) on the prepared real
sample, and the bundled ECG-QA items mapped against the same store."""

from __future__ import annotations

from collections import Counter, defaultdict
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from sets_helpers import index_table
from typer.testing import CliRunner

from ecgbench.cli import app
from ecgbench.data.conversations import (
    ECG_PLACEHOLDER,
    EcgRef,
    iter_conversations,
    read_conversation_set,
    set_info,
)
from ecgbench.data.dataset import RecordIndex
from ecgbench.data.mapping import map_source_set
from ecgbench.data.mapping.common import RecordLookup
from ecgbench.data.mapping.labels import label_name, label_space, map_store_labels
from ecgbench.data.splits import record_heads
from ecgbench.data.store import SegmentStore
from ecgbench.errors import UserError
from ecgbench.resources import SAMPLE_DIR

runner = CliRunner()
KINDS = {"single-verify", "single-choose", "single-query", "report"}


@pytest.fixture(scope="module")
def store(sample_store: Path) -> SegmentStore:
    return SegmentStore.open(sample_store)


@pytest.fixture(scope="module")
def records(store: SegmentStore) -> dict[tuple[str, str], dict]:
    """Each record of the store as its index row says: label names, label space and report."""
    heads = record_heads(store.index).to_pylist()
    return {
        (r["corpus"], r["record_id"]): {
            "names": {label_name(r["corpus"], label) for label in r["labels"]} - {None},
            "space": label_space(r["corpus"], r["labels"]),
            "report": r["report"],
        }
        for r in heads
    }


@pytest.fixture(scope="module")
def labels_set(store: SegmentStore):
    return map_store_labels([store.index], questions_per_record=4, seed=0)


def test_label_names_come_from_the_readers_tables() -> None:
    # PTB-XL SCP codes through scp_statements.csv, SNOMED codes through the Challenge table.
    assert label_name("ptbxl", "SR") == "sinus rhythm"
    assert label_name("ptbxl", "NST_") == "non-specific st changes"
    assert label_name("cpsc", "snomed:426783006") == "sinus rhythm"
    assert label_name("csn", "snomed:999999999") is None
    assert label_name("csn", "sinus tachycardia") == "sinus tachycardia"
    # "SR" is an SCP code only in PTB-XL; elsewhere a stored label is already a name.
    assert label_name("code15", "SR") == "sr"
    assert label_space("ptbxl", ["NORM", "SR"]) == "ptbxl:scp"
    assert label_space("ptbxl", ["sinus rhythm"]) == "ptbxl"


def test_every_answer_agrees_with_the_store_index(store: SegmentStore, labels_set, records) -> None:
    table, report = labels_set
    conversations = list(iter_conversations(table))
    assert report.as_dict() == {
        "items": 28,
        "mapped": 27,
        "repaired": {},
        "skipped": {"no named labels and no report": 1},  # PTB Diagnostic s0010_re
    }
    assert {c.question_type for c in conversations} == KINDS
    vocabulary: dict[str, set[str]] = defaultdict(set)
    for record in records.values():
        vocabulary[record["space"]] |= record["names"]
    asked = set()
    for c in conversations:
        assert len(c.ecgs) == 1
        key = (c.ecgs[0].corpus, c.ecgs[0].record_id)
        assert key in records  # every ECG is in the store
        asked.add(key)
        record = records[key]
        assert [t["role"] for t in c.turns] == ["user", "assistant"]
        assert c.turns[0]["content"].startswith(f"{ECG_PLACEHOLDER}\n")
        answer = c.turns[1]["content"]
        assert answer == ", ".join(c.meta["answer"])
        space = vocabulary[record["space"]]
        if c.question_type == "single-verify":
            (name,) = c.meta["attribute"]
            assert c.answer_options == ["yes", "no"] and name in space
            assert c.turns[0]["content"].endswith(f"show {name}?")
            assert answer == ("yes" if name in record["names"] else "no")
        elif c.question_type == "single-choose":
            assert len(c.answer_options) == 2 and set(c.answer_options) <= space
            assert [o in record["names"] for o in c.answer_options].count(True) == 1
            assert answer in record["names"] and answer in c.answer_options
        elif c.question_type == "single-query":
            assert c.answer_options == sorted(space)
            assert c.meta["answer"] == sorted(record["names"])
        else:
            assert record["report"] and answer == record["report"] and c.answer_options == []
    assert ("wfdb", "s0010_re") not in asked and len(asked) == 27
    # The data path's look-up finds every ECG in the store.
    corpus, record_id = table.column("ecgs").combine_chunks().flatten().flatten()
    assert len(corpus) == len(table) and (RecordIndex([store]).locate(corpus, record_id) >= 0).all()


def test_labels_set_samples(labels_set) -> None:
    """Real questions on the bundled records (ECG-QA style), not codes."""
    by_id = {c.conversation_id: c for c in iter_conversations(labels_set[0])}
    query = next(
        c for c in by_id.values() if c.ecgs == [EcgRef("ptbxl", "1")] and c.question_type == "single-query"
    )
    assert query.turns[1]["content"] == (
        "low qrs voltages in the frontal and horizontal leads, normal ecg, sinus rhythm"
    )
    report = next(
        c for c in by_id.values() if c.ecgs == [EcgRef("ptbxl", "1")] and c.question_type == "report"
    )
    assert report.turns == [
        {"role": "user", "content": f"{ECG_PLACEHOLDER}\nDescribe this ECG."},
        {
            "role": "assistant",
            "content": "Normal ECG. Sinus rhythm. Low QRS voltages in the frontal and horizontal leads.",
        },
    ]
    # A CPSC record's "no" names only CPSC classes found in the store, never a Chapman-Shaoxing label.
    cpsc_space = {"premature atrial contraction", "st depression", "1st degree av block", "sinus rhythm",
                  "right bundle branch block", "atrial fibrillation", "ventricular ectopics"}  # fmt: skip
    for c in by_id.values():
        if c.ecgs[0].corpus == "cpsc" and c.question_type in ("single-verify", "single-choose"):
            assert set(c.meta["attribute"]) <= cpsc_space


def test_same_seed_same_set_other_seed_other_set(store: SegmentStore, labels_set) -> None:
    again, _ = map_store_labels([store.index], questions_per_record=4, seed=0)
    assert again.equals(labels_set[0]) and set_info(again) == set_info(labels_set[0])
    other, _ = map_store_labels([store.index], questions_per_record=4, seed=1)
    assert other.column("turns").to_pylist() != labels_set[0].column("turns").to_pylist()
    assert set_info(other)["mapping"]["labels"]["options"] == {"questions_per_record": 4, "seed": 1}


def test_questions_per_record_distinct_and_balanced(store: SegmentStore, records) -> None:
    one, _ = map_store_labels([store.index], questions_per_record=1, seed=0)
    assert Counter(e[0]["record_id"] for e in one.column("ecgs").to_pylist()).most_common(1)[0][1] == 1
    assert len(one) == 27

    many, _ = map_store_labels([store.index], questions_per_record=12, seed=0)
    by_record: dict[tuple[str, str], list] = defaultdict(list)
    for c in iter_conversations(many):
        by_record[(c.ecgs[0].corpus, c.ecgs[0].record_id)].append(c)
    vocabulary: dict[str, set[str]] = defaultdict(set)
    for record in records.values():
        vocabulary[record["space"]] |= record["names"]
    totals: Counter[str] = Counter()
    for key, conversations in by_record.items():
        questions = [c.turns[0]["content"] for c in conversations]
        assert len(questions) == len(set(questions)) <= 12  # never the same question twice
        kinds = Counter(c.question_type for c in conversations)
        assert kinds["single-query"] == 1 and kinds["report"] == (1 if records[key]["report"] else 0)
        answers = [c.turns[1]["content"] for c in conversations if c.question_type == "single-verify"]
        totals.update(answers)
        # yes and no alternate within a record, until one side has no label left to ask about
        names = records[key]["names"]
        pool = {"yes": len(names), "no": len(vocabulary[records[key]["space"]] - names)}
        for i in range(1, len(answers)):
            if answers[i] == answers[i - 1]:
                other = "no" if answers[i] == "yes" else "yes"
                assert answers[:i].count(other) == pool[other]
    assert totals["yes"] and totals["no"]

    # At the default 4 questions, the seeded coins keep yes and no close over the whole set.
    answers = Counter()
    for seed in range(5):
        table, _ = map_store_labels([store.index], questions_per_record=4, seed=seed)
        for c in iter_conversations(table):
            if c.question_type == "single-verify":
                answers[c.turns[1]["content"]] += 1
    assert 0.4 < answers["yes"] / (answers["yes"] + answers["no"]) < 0.6


def test_bad_values_are_user_errors(store: SegmentStore) -> None:
    with pytest.raises(UserError, match="--questions-per-record: 0"):
        map_store_labels([store.index], questions_per_record=0, seed=0)
    # The real record without labels or report (PTB Diagnostic s0010_re, read by the WFDB reader).
    unlabelled = store.index.filter(pc.equal(store.index.column("corpus"), "wfdb"))
    assert len(unlabelled) > 0
    with pytest.raises(UserError, match="no labels and no reports"):
        map_store_labels([unlabelled], questions_per_record=4, seed=0)


def test_unnamed_labels_report_only_records_and_several_stores(store: SegmentStore) -> None:
    # Index rows in the exact store schema (sets_helpers.index_table): a Chapman-Shaoxing record with a
    # SNOMED code no table names (kept by the readers as "snomed:<code>"), and a MIMIC-IV-ECG study with
    # a machine report but no labels (the real first study of the bundled record_list.csv).
    index = index_table(
        [
            {"corpus": "csn", "record_id": "JS00001", "labels": ["snomed:999999999", "sinus rhythm"]},
            {"corpus": "csn", "record_id": "JS00002", "labels": ["atrial fibrillation"]},
            {"corpus": "mimic", "record_id": "40689238", "segments": 2},
        ]
    )
    reports = [None, None, "Sinus rhythm. Possible right atrial abnormality.", None]
    index = index.set_column(index.schema.get_field_index("report"), "report", pa.array(reports, pa.string()))
    table, report = map_store_labels([index], questions_per_record=4, seed=0)
    assert report.as_dict() == {
        "items": 3,
        "mapped": 3,
        "repaired": {"label without a name left out": 1},
        "skipped": {},
    }
    conversations = list(iter_conversations(table))
    assert all("snomed" not in c.turns[0]["content"] + c.turns[1]["content"] for c in conversations)
    mimic = [c for c in conversations if c.ecgs[0].corpus == "mimic"]
    assert [(c.question_type, c.turns[1]["content"]) for c in mimic] == [
        ("report", "Sinus rhythm. Possible right atrial abnormality.")
    ]
    first = next(
        c for c in conversations if c.ecgs == [EcgRef("csn", "JS00001")] and c.question_type == "single-query"
    )
    assert first.answer_options == ["atrial fibrillation", "sinus rhythm"] and first.meta["answer"] == [
        "sinus rhythm"
    ]

    # A record in two stores is asked about once (its first store's row).
    twice, _ = map_store_labels([store.index, store.index], questions_per_record=4, seed=0)
    once, _ = map_store_labels([store.index], questions_per_record=4, seed=0)
    assert twice.equals(once)


def test_bundled_ecgqa_items_map_against_the_sample_store(store: SegmentStore) -> None:
    lookup = RecordLookup.from_stores([store.index])
    table, report = map_source_set("ecg-qa-ptbxl", SAMPLE_DIR / "ecgqa_bundled", lookup)
    assert report.as_dict() == {"items": 2, "mapped": 2, "repaired": {}, "skipped": {}}
    conversations = {c.source_id: c for c in iter_conversations(table)}
    assert set(conversations) == {"template/123657", "paraphrased/123657"}
    template = conversations["template/123657"]
    assert template.ecgs == [EcgRef("ptbxl", "6002")] and template.question_type == "single-verify"
    assert template.turns == [
        {"role": "user", "content": f"{ECG_PLACEHOLDER}\nDoes this ECG show burst noise in lead aVF?"},
        {"role": "assistant", "content": "no"},
    ]
    assert template.source_split == "train" and template.meta["attribute"] == ["burst noise"]

    # Comparison items whose second ECG has no waveform here: all counted, none mapped.
    _, partial = map_source_set("ecg-qa-ptbxl", SAMPLE_DIR / "ecgqa_bundled_partial", lookup)
    assert partial.as_dict() == {
        "items": 12,
        "mapped": 0,
        "repaired": {},
        "skipped": {"ECG not in store": 12},
    }


# ------------------------------------------------------------------------------------------- CLI


def invoke(*args: str) -> str:
    result = runner.invoke(app, list(args))
    assert result.exit_code == 0, result.output
    return result.output


def fails(*args: str) -> str:
    result = runner.invoke(app, list(args))
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert "Traceback" not in result.output and lines[-1].startswith("error:")
    return lines[-1]


def test_cli_map_labels_then_split(sample_store: Path, labels_set, tmp_path: Path) -> None:
    sets, folds = tmp_path / "sets", tmp_path / "folds"
    out = invoke(
        "data", "map", "labels", "ecg-qa-ptbxl", "--source", str(SAMPLE_DIR / "ecgqa_bundled"),
        "--store", str(sample_store), "--out", str(sets), "--mix", "all",
    )  # fmt: skip
    assert "wrote" in out and (sets / "all.parquet").is_file()
    mixed = read_conversation_set(sets / "all.parquet")
    # the default is 4 questions per record and seed 0: the set built above, plus the two ECG-QA items
    assert len(mixed) == len(labels_set[0]) + 2
    assert set_info(mixed)["sources"] == ["labels", "ecg-qa-ptbxl"]

    invoke("data", "map", "labels", "--store", str(sample_store), "--out", str(sets),
           "--questions-per-record", "2", "--seed", "7")  # fmt: skip
    labels = read_conversation_set(sets / "labels.parquet")
    assert set_info(labels)["mapping"]["labels"]["options"] == {"questions_per_record": 2, "seed": 7}
    assert set_info(labels)["stores"] == [str(sample_store.resolve())]
    assert Counter(c.ecgs[0] for c in iter_conversations(labels)).most_common(1)[0][1] == 2

    out = invoke("data", "split", "--store", str(sample_store), "--sets", str(sets / "labels.parquet"),
                 "--out", str(folds), "--folds", "4")  # fmt: skip
    assert "patients in more than one split: 0" in out
    record_splits = pq.read_table(folds / "splits.parquet").to_pylist()
    where = {(r["corpus"], r["record_id"]): r["split"] for r in record_splits}
    split = list(iter_conversations(read_conversation_set(folds / "labels.parquet")))
    assert len(split) == len(labels)
    for c in split:
        assert c.split is not None and c.split == where[(c.ecgs[0].corpus, c.ecgs[0].record_id)]


@pytest.fixture(scope="module")
def unlabelled_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real store with neither labels nor reports: the PTB Diagnostic record through the WFDB reader."""
    out = tmp_path_factory.mktemp("unlabelled") / "store"
    invoke("data", "prepare", "wfdb", "--root", str(SAMPLE_DIR / "physionet_wfdb_misc"), "--out", str(out))
    return out


def test_cli_errors(sample_store: Path, unlabelled_store: Path, tmp_path: Path) -> None:
    out = str(tmp_path / "sets")
    line = fails("data", "map", "labels", "--store", str(unlabelled_store), "--out", out)
    assert "no labels and no reports" in line
    line = fails("data", "map", "labels", "--store", str(sample_store), "--out", out,
                 "--questions-per-record", "0")  # fmt: skip
    assert "--questions-per-record" in line
    line = fails("data", "map", "labels", "--source", "x.json", "--store", str(sample_store), "--out", out)
    assert "labels takes none" in line
    line = fails("data", "map", "labels", "ecg-qa-ptbxl", "--store", str(sample_store), "--out", out)
    assert "one --source per set" in line
    assert not Path(out).exists()  # nothing written on an error
