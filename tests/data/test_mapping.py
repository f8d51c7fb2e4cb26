"""`data map` source mappers on the bundled real ECG-QA / PULSE files and on schema-exact fixtures."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from sets_helpers import ECG_CHAT_ITEMS, ECGQA, PULSE_BENCH, ecgqa_ids, index_table

from ecgbench.data.conversations import (
    ECG_PLACEHOLDER,
    EcgRef,
    count_placeholders,
    iter_conversations,
    mix_conversation_sets,
    read_conversation_set,
    set_info,
    write_conversation_set,
)
from ecgbench.data.mapping import map_source_set
from ecgbench.data.mapping.common import RecordLookup, ref_from_path
from ecgbench.errors import CorruptFileError, UserError

# GEM ECG-Grounding (lanxiang1017/GEM: llava/train/train.py reads item["ecg"] with wfdb under the
# time-series root and item["image"]; gem_evaluation/process_gem_outputs.ipynb reads id, ecg, image,
# conversations[1].value, machine_measurements and report of ecg-grounding-test.json). Corpus folders
# (mimic-iv/, ecg_ptbxl_benchmarking/, code15/) as in ECG-Bench's mapping of these files. The exact types of
# machine_measurements and report could not be confirmed; they are kept as given.
GEM_TEST_ITEMS = [
    {
        "id": "40689238",
        "ecg": "mimic-iv/files/p1000/p10000032/s40689238/40689238",
        "image": "mimic_gen/40689238.png",
        "conversations": [
            {
                "from": "human",
                "value": "<image>\nInterpret this ECG and ground your findings in the waveform.",
            },
            {
                "from": "gpt",
                "value": "The rhythm is regular at about 91 bpm with upright P waves: sinus rhythm.",
            },
        ],
        "machine_measurements": {"rr_interval": 659, "qrs_axis": 77},
        "report": "Sinus rhythm. Possible right atrial abnormality. Borderline ECG.",
    },
    {
        "id": "ptb-1",
        "ecg": "ecg_ptbxl_benchmarking/data/ptbxl/records500/00000/00001_hr",
        "image": "ptb-xl-gen/00001_hr.png",
        "conversations": [
            {"from": "human", "value": "<image>\nInterpret this ECG."},
            {"from": "gpt", "value": "Sinus rhythm, low QRS voltage in the frontal leads."},
        ],
    },
    {
        "id": "code-1",
        "ecg": "code15/exams_part0/1169160",
        "conversations": [{"from": "human", "value": "<image>\nq"}, {"from": "gpt", "value": "a"}],
    },
]

# PULSE ECGInstruct (AIMedLab/PULSE, ECGInstruct.json): LLaVA items {"id", "image", "conversations"}; image
# folders mimic_v4/, ptb-xl/, code15_v4/ as mapped by ECG-Bench's ecg_instruct_pulse code.
PULSE_INSTRUCT_ITEMS = [
    {
        "id": "mimic-1",
        "image": "mimic_v4/p1000/p10000032/s40689238/40689238-0.png",
        "conversations": [
            {"from": "human", "value": "<image>\nWhat is the heart rhythm?"},
            {"from": "gpt", "value": "Sinus rhythm."},
        ],
    },
    {
        "id": "ptb-1",
        "image": "ptb-xl/records500/00000/00001_hr-0.png",
        "conversations": [
            {"from": "human", "value": "<image>\nWrite a report."},
            {"from": "gpt", "value": "Sinus rhythm. Low voltage."},
        ],
    },
    {
        "id": "code-1",
        "image": "code15_v4/exams_part0/1169160-0.png",
        "conversations": [
            {"from": "human", "value": "<image>\nIs there atrial fibrillation?"},
            {"from": "gpt", "value": "No."},
        ],
    },
    {
        "id": "unknown",
        "image": "somewhere/else/picture.png",
        "conversations": [{"from": "human", "value": "<image>\nq"}, {"from": "gpt", "value": "a"}],
    },
]

LOOKUP_RECORDS = [
    {"corpus": "mimic", "record_id": "40689238", "patient_id": "10000032"},
    {"corpus": "ptbxl", "record_id": "1", "patient_id": "15709", "source_path": "records100/00000/00001_lr"},
    {"corpus": "code15", "record_id": "1169160", "patient_id": "523632"},
]


def lookup_for(records: list[dict]) -> RecordLookup:
    return RecordLookup(index_table(records))


def ecgqa_lookup(folder: str, corpus: str, drop: set[int] = frozenset()) -> RecordLookup:
    return lookup_for([{"corpus": corpus, "record_id": str(i)} for i in ecgqa_ids(folder) - set(drop)])


def test_ecgqa_ptbxl_maps_every_question_type_and_variant() -> None:
    table, report = map_source_set("ecg-qa-ptbxl", ECGQA / "ptbxl", ecgqa_lookup("ptbxl", "ptbxl"))
    assert report.items == 1000 and report.mapped == 1000 and not report.skipped
    conversations = list(iter_conversations(table))
    assert {c.question_type for c in conversations} == {"single-verify", "comparison_irrelevant-query"}
    assert {c.source_split for c in conversations} == {"test", "train"}
    assert {c.meta["variant"] for c in conversations} == {"template", "paraphrased"}
    assert len({c.conversation_id for c in conversations}) == 1000
    for c in conversations:
        # One placeholder per ECG; comparison questions carry both ECGs, first one first.
        assert count_placeholders(c.turns) == len(c.ecgs)
        assert [t["role"] for t in c.turns] == ["user", "assistant"]
        assert c.turns[1]["content"] == ", ".join(c.meta["answer"])
        assert all(e.corpus == "ptbxl" for e in c.ecgs)
    first = next(c for c in conversations if c.source_id == "template/80000")
    assert [e.record_id for e in first.ecgs] == ["17229", "20344"]
    assert first.turns[0]["content"].startswith(
        f"{ECG_PLACEHOLDER}\n{ECG_PLACEHOLDER}\nWhat numeric features"
    )
    assert first.turns[1]["content"] == "qrs duration, rr interval"
    # Closed answer sets from answers_for_each_template.csv.
    verify = next(c for c in conversations if c.question_type == "single-verify")
    assert verify.answer_options and set(verify.meta["answer"]) <= set(verify.answer_options)
    assert "qrs duration" in first.answer_options


def test_ecgqa_mimic_uses_study_ids() -> None:
    table, report = map_source_set("ecg-qa-mimic", ECGQA, ecgqa_lookup("mimic-iv-ecg", "mimic"))
    assert report.mapped == 600 and not report.skipped
    refs = {e.corpus for c in iter_conversations(table) for e in c.ecgs}
    assert refs == {"mimic"}


def test_ecgqa_missing_ecgs_are_counted_skips() -> None:
    missing = {17229, 3637}
    lookup = ecgqa_lookup("ptbxl", "ptbxl", drop=missing)
    table, report = map_source_set("ecg-qa-ptbxl", ECGQA / "ptbxl", lookup)
    expected = 0
    for path in (ECGQA / "ptbxl").glob("*/*/*.json"):
        expected += sum(bool(set(i["ecg_id"]) & missing) for i in json.loads(path.read_text()))
    assert report.skipped == {"ECG not in store": expected} and expected > 0
    assert report.mapped == 1000 - expected == len(table)


def test_ecgqa_malformed_items(tmp_path: Path) -> None:
    # Upstream layout with one question file holding the real first item and broken copies of it.
    root = tmp_path / "ptbxl"
    (root / "template" / "test").mkdir(parents=True)
    shutil.copy(ECGQA / "ptbxl" / "answers_for_each_template.csv", root)
    real = json.loads((ECGQA / "ptbxl" / "template" / "test" / "80000.json").read_text())[0]
    items = [
        real,
        {**real, "sample_id": 1, "answer": []},
        {**real, "sample_id": 2, "answer": ["", " "]},
        {**real, "sample_id": 3, "ecg_id": []},
        {k: v for k, v in real.items() if k != "question"} | {"sample_id": 4},
        ["not", "an", "item"],
        {**real, "sample_id": 5, "answer": "yes"},
        {**real, "sample_id": 6, "question_type": 7},
    ]
    (root / "template" / "test" / "80000.json").write_text(json.dumps(items))
    table, report = map_source_set("ecg-qa-ptbxl", root, ecgqa_lookup("ptbxl", "ptbxl"))
    assert report.mapped == 2 and len(table) == 2
    assert report.skipped == {"empty answer": 2, "missing ECG": 1, "malformed item": 3}
    assert report.repaired == {"answer stored as a string": 1}


def test_pulse_ecgbench_real_sample() -> None:
    items = json.loads(PULSE_BENCH.read_text())
    ids = {str(int(Path(i["image"]).name.split("_")[0])) for i in items}
    lookup = lookup_for([{"corpus": "ptbxl", "record_id": r} for r in ids])
    table, report = map_source_set("ecg-bench-pulse", PULSE_BENCH, lookup)
    assert report.mapped == 100 and not report.skipped
    conversations = list(iter_conversations(table))
    first = conversations[0]
    assert first.source_id == "ptb-report-07190_hr-0" and first.ecgs == [EcgRef("ptbxl", "7190")]
    assert first.turns == [
        {
            "role": "user",
            "content": f"{ECG_PLACEHOLDER}\nPlease write a clinical report based on this ECG image.",
        },
        {"role": "assistant", "content": "Sinus rhythm, normal axis, normal ECG."},
    ]
    assert {c.source_split for c in conversations} == {"test"}
    assert {c.question_type for c in conversations} == {"ptb_report_generation_test"}


def test_pulse_ecgbench_missing_ecg_is_counted() -> None:
    table, report = map_source_set("ecg-bench-pulse", PULSE_BENCH, lookup_for(LOOKUP_RECORDS))
    assert len(table) == 0 and report.skipped == {"ECG not in store": 100}


def test_pulse_ecgbench_parquet_with_character_list_turns(tmp_path: Path) -> None:
    # PULSE-ECG/ECGBench on the hub: one folder per subset, rows with image_path and conversations; in
    # ecgqa-test some values are lists of single characters. The image bytes column is never read.
    subset = tmp_path / "ecgqa-test"
    subset.mkdir()
    question = "Does this ECG show sinus rhythm?"
    rows = [
        {
            "image": b"\x89PNG-not-read",
            "image_path": "test_images/ecgqa_test/00001_hr-0.png",
            "conversations": [
                {"from": "human", "value": list(question)},
                {"from": "gpt", "value": list("yes")},
            ],
        },
        {
            "image": b"\x89PNG",
            "image_path": "test_images/ecgqa_test/00001_hr-1.png",
            "conversations": [
                {"from": "human", "value": ["Does this ECG ", "show noise?"]},
                {"from": "gpt", "value": ["no"]},
            ],
        },
    ]
    pq.write_table(pa.Table.from_pylist(rows), subset / "test-00000-of-00001.parquet")
    table, report = map_source_set("ecg-bench-pulse", tmp_path, lookup_for(LOOKUP_RECORDS))
    assert report.mapped == 1 and report.repaired == {"turn stored as list of characters": 2}
    assert report.skipped == {"turn stored as list of strings": 1}
    (c,) = iter_conversations(table)
    assert c.turns[0]["content"] == f"{ECG_PLACEHOLDER}\n{question}" and c.turns[1]["content"] == "yes"
    assert c.question_type == "ecgqa-test" and c.ecgs == [EcgRef("ptbxl", "1")]


def test_pulse_instruct_resolves_image_paths(write_json) -> None:
    source = write_json("ECGInstruct.json", PULSE_INSTRUCT_ITEMS)
    table, report = map_source_set("ecg-instruct-pulse", source, lookup_for(LOOKUP_RECORDS))
    assert report.mapped == 3 and report.skipped == {"unresolvable ECG path": 1}
    refs = [c.ecgs[0] for c in iter_conversations(table)]
    assert refs == [EcgRef("mimic", "40689238"), EcgRef("ptbxl", "1"), EcgRef("code15", "1169160")]
    assert all(c.turns[0]["content"].startswith(ECG_PLACEHOLDER) for c in iter_conversations(table))


def test_ecg_chat_instruct(write_json) -> None:
    source = write_json("ecg_instruct_45k.json", ECG_CHAT_ITEMS)
    table, report = map_source_set("ecg-instruct-45k", source, lookup_for(LOOKUP_RECORDS))
    assert report.items == 6 and report.mapped == 2
    assert report.skipped == {"missing ECG": 1, "empty answer": 1, "ECG not in store": 1, "malformed item": 1}
    assert report.repaired == {"repeated id numbered": 1}
    first, second = iter_conversations(table)
    assert first.source_id == "40689238" and second.source_id == "40689238#2"
    assert [t["role"] for t in first.turns] == ["user", "assistant", "user", "assistant"]
    assert count_placeholders(first.turns) == 1 and count_placeholders(second.turns) == 1
    assert first.ecgs == [EcgRef("mimic", "40689238")]


@pytest.mark.parametrize(
    ("name", "file", "path_key"),
    [
        ("ecg-instruct-45k", "ecg_instruct_45k.json", "ecg"),
        ("ecg-grounding", "grounding_train_30k.json", "ecg"),
        ("ecg-instruct-pulse", "ECGInstruct.json", "image"),
    ],
)
def test_items_without_an_id_fall_back_to_file_and_position(write_json, name, file, path_key) -> None:
    turns = [{"from": "human", "value": "<image>\nq"}, {"from": "gpt", "value": "a"}]
    path = "mimic_v4/p1000/p10000032/s40689238/40689238-0.png"
    items = [
        {"id": None, path_key: path, "conversations": turns},
        {path_key: path, "conversations": turns},
        {"id": 7, path_key: path, "conversations": turns},
    ]
    table, report = map_source_set(name, write_json(file, items), lookup_for(LOOKUP_RECORDS))
    assert report.mapped == 3
    stem = file.removesuffix(".json")
    assert [c.source_id for c in iter_conversations(table)] == [f"{stem}:0", f"{stem}:1", "7"]


def test_ecg_chat_pretrain_repairs(write_json) -> None:
    ecg = "files/p1000/p10000032/s40689238/40689238"
    items = [
        # The ECG marked twice for a single ECG: the first mark is kept.
        {
            "id": "a",
            "ecg": ecg,
            "conversations": [
                {"from": "human", "value": "<ecg>\nDescribe.\n<ecg>"},
                {"from": "gpt", "value": "Sinus rhythm."},
            ],
        },
        # A trailing question without its answer is dropped.
        {
            "id": "b",
            "ecg": ecg,
            "conversations": [
                {"from": "human", "value": "<ecg>\nRate?"},
                {"from": "gpt", "value": "About 90 bpm."},
                {"from": "human", "value": "And the axis?"},
            ],
        },
        {
            "id": "c",
            "ecg": ecg,
            "conversations": [{"from": "robot", "value": "x"}, {"from": "gpt", "value": "y"}],
        },
        {
            "id": "d",
            "ecg": ecg,
            "conversations": [{"from": "gpt", "value": "y"}, {"from": "human", "value": "x"}],
        },
    ]
    table, report = map_source_set(
        "pretrain-mimic", write_json("pretrain_mimic.json", items), lookup_for(LOOKUP_RECORDS)
    )
    assert report.mapped == 2
    assert report.repaired == {"repeated ECG placeholder removed": 1, "unanswered last question dropped": 1}
    assert report.skipped == {"unknown turn role": 1, "turns do not alternate user/assistant": 1}
    a, b = iter_conversations(table)
    assert a.turns[0]["content"] == f"{ECG_PLACEHOLDER}\nDescribe." and len(b.turns) == 2


def test_gem_grounding_test_keeps_evaluation_fields(write_json) -> None:
    source = write_json("ecg-grounding-test.json", GEM_TEST_ITEMS)
    table, report = map_source_set("ecg-grounding-test", source, lookup_for(LOOKUP_RECORDS))
    assert report.mapped == 3 and not report.skipped
    conversations = list(iter_conversations(table))
    assert [c.ecgs[0] for c in conversations] == [
        EcgRef("mimic", "40689238"),
        EcgRef("ptbxl", "1"),
        EcgRef("code15", "1169160"),
    ]
    assert conversations[0].meta["report"].startswith("Sinus rhythm")
    assert conversations[0].meta["machine_measurements"] == {"rr_interval": 659, "qrs_axis": 77}
    assert conversations[0].turns[0]["content"].startswith(f"{ECG_PLACEHOLDER}\nInterpret")
    assert {c.source_split for c in conversations} == {"test"}


def test_gem_train_sets_have_no_source_split(write_json) -> None:
    source = write_json("grounding_train_30k.json", GEM_TEST_ITEMS[:2])
    table, _ = map_source_set("ecg-grounding", source, lookup_for(LOOKUP_RECORDS))
    assert [c.source_split for c in iter_conversations(table)] == [None, None]


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("files/p1000/p10000032/s40689238/40689238", EcgRef("mimic", "40689238")),
        ("mimic-iv/files/p1000/p10000032/s40689238/40689238.hea", EcgRef("mimic", "40689238")),
        ("mimic_v4/p1000/p10000032/s40689238/40689238-0.png", EcgRef("mimic", "40689238")),
        ("test_images/ptb_test_v4/07190_hr-0.png", EcgRef("ptbxl", "7190")),
        ("records100/00000/00001_lr", EcgRef("ptbxl", "1")),
        ("test_images/cpsc_test_v4/A0001-0.png", EcgRef("cpsc", "A0001")),
        ("WFDBRecords/01/010/JS00666", EcgRef("csn", "JS00666")),
        ("code15_v4/exams_part3/0012345-2.png", EcgRef("code15", "12345")),
        ("images/picture.png", None),
        ("files/p1000/p10000032/s40689238/41111111", None),
    ],
)
def test_path_rules(path: str, expected: EcgRef | None) -> None:
    assert ref_from_path(path) == expected


def test_source_path_suffix_fallback() -> None:
    lookup = lookup_for(
        [{"corpus": "wfdb", "record_id": "s0010_re", "source_path": "ptbdb/patient001/s0010_re"}]
    )
    assert lookup.resolve_path("data/ptbdb/patient001/s0010_re.hea") == EcgRef("wfdb", "s0010_re")


def test_bad_sources(tmp_path: Path, write_json) -> None:
    lookup = lookup_for(LOOKUP_RECORDS)
    with pytest.raises(UserError, match="source not found"):
        map_source_set("ecg-instruct-45k", tmp_path / "nope.json", lookup)
    broken = tmp_path / "broken.json"
    broken.write_text('[{"id": 1, "ecg": ')
    with pytest.raises(CorruptFileError, match="not valid JSON"):
        map_source_set("ecg-instruct-45k", broken, lookup)
    with pytest.raises(CorruptFileError, match="expected a JSON list"):
        map_source_set("ecg-instruct-45k", write_json("obj.json", {"id": 1}), lookup)
    with pytest.raises(UserError, match="unknown set"):
        map_source_set("ecg-qa", broken, lookup)
    with pytest.raises(UserError, match="no ECG-QA"):
        map_source_set("ecg-qa-ptbxl", tmp_path, lookup)


def test_write_read_and_mix(tmp_path: Path, write_json) -> None:
    lookup = lookup_for(LOOKUP_RECORDS)
    chat, _ = map_source_set("ecg-instruct-45k", write_json("a.json", ECG_CHAT_ITEMS), lookup)
    gem, _ = map_source_set("ecg-grounding-test", write_json("b.json", GEM_TEST_ITEMS), lookup)
    path = write_conversation_set(tmp_path / "chat.parquet", chat)
    back = read_conversation_set(path)
    assert back.to_pylist() == chat.to_pylist()
    assert set_info(back)["mapping"]["ecg-instruct-45k"]["mapped"] == 2
    some = read_conversation_set(path, columns=["turns", "conversation_id"])  # a large set's reader
    assert some.column_names == ["turns", "conversation_id"] and set_info(some) == set_info(back)
    assert some.column("turns").to_pylist() == chat.column("turns").to_pylist()
    mixed = mix_conversation_sets([chat, gem])
    assert len(mixed) == 5 and set_info(mixed)["sources"] == ["ecg-instruct-45k", "ecg-grounding-test"]
    with pytest.raises(UserError, match="more than once"):
        mix_conversation_sets([chat, chat])


def test_read_rejects_other_files(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="not found"):
        read_conversation_set(tmp_path / "missing.parquet")
    text = tmp_path / "text.parquet"
    text.write_text("not parquet")
    with pytest.raises(CorruptFileError):
        read_conversation_set(text)
    plain = tmp_path / "plain.parquet"
    pq.write_table(pa.table({"a": [1]}), plain)
    with pytest.raises(CorruptFileError, match="not a conversation set"):
        read_conversation_set(plain)
    # A truncated conversation set is a one-line error, not a traceback.
    good = tmp_path / "good.parquet"
    chat_table, _ = map_source_set(
        "ecg-instruct-45k", _dump(tmp_path / "c.json", ECG_CHAT_ITEMS[:1]), lookup_for(LOOKUP_RECORDS)
    )
    write_conversation_set(good, chat_table)
    data = good.read_bytes()
    truncated = tmp_path / "truncated.parquet"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(CorruptFileError):
        read_conversation_set(truncated)


def _dump(path: Path, data) -> Path:
    path.write_text(json.dumps(data))
    return path
