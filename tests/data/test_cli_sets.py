"""`ecgbench data map | split | sample | stats | plot` end to end on the real prepared sample."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from sets_helpers import ECGQA, PULSE_BENCH
from typer.testing import CliRunner

from ecgbench.cli import app
from ecgbench.data.conversations import iter_conversations, read_conversation_set, set_info
from ecgbench.data.sampling import read_sample
from ecgbench.data.store import SegmentStore

runner = CliRunner()

# GEM ECG-Grounding items (schema: see test_mapping.GEM_TEST_ITEMS) about records that the bundled
# sample really holds: PTB-XL ecg_id 1, CPSC 2018 A0001, Chapman-Shaoxing JS00666.
GEM_ITEMS = [
    {
        "id": "ptb-1",
        "ecg": "ecg_ptbxl_benchmarking/data/ptbxl/records500/00000/00001_hr",
        "image": "ptb-xl-gen/00001_hr.png",
        "conversations": [
            {"from": "human", "value": "<image>\nInterpret this ECG."},
            {"from": "gpt", "value": "Sinus rhythm with low QRS voltage."},
        ],
    },
    {
        "id": "cpsc-1",
        "ecg": "cpsc2018/training/A0001",
        "conversations": [{"from": "human", "value": "<image>\nRhythm?"}, {"from": "gpt", "value": "RBBB."}],
    },
    {
        "id": "csn-1",
        "ecg": "champan-shaoxing/WFDBRecords/01/010/JS00666",
        "conversations": [{"from": "human", "value": "<image>\nRate?"}, {"from": "gpt", "value": "Fast."}],
    },
    {"id": "empty", "ecg": "cpsc2018/training/A0002", "conversations": [{"from": "human", "value": "x"}]},
]


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


@pytest.fixture
def gem_json(tmp_path: Path) -> Path:
    path = tmp_path / "ecg-grounding-test.json"
    path.write_text(json.dumps(GEM_ITEMS))
    return path


def test_map_split_stats_end_to_end(sample_store: Path, gem_json: Path, tmp_path: Path) -> None:
    sets = tmp_path / "sets"
    out = invoke(
        "data", "map", "ecg-grounding-test", "ecg-qa-ptbxl", "ecg-bench-pulse",
        "--source", str(gem_json), "--source", str(ECGQA / "ptbxl"), "--source", str(PULSE_BENCH),
        "--store", str(sample_store), "--out", str(sets),
    )  # fmt: skip
    assert "ECG not in store" in out and "no item of ecg-qa-ptbxl was mapped" in out
    gem = read_conversation_set(sets / "ecg-grounding-test.parquet")
    assert [c.ecgs[0].record_id for c in iter_conversations(gem)] == ["1", "A0001", "JS00666"]
    info = set_info(gem)
    assert info["mapping"]["ecg-grounding-test"]["skipped"] == {"no question and answer": 1}
    assert info["stores"] == [str(sample_store.resolve())]
    # The bundled ECG-QA and PULSE files ask about records the sample has no waveform for: counted skips.
    assert set_info(read_conversation_set(sets / "ecg-qa-ptbxl.parquet"))["mapping"]["ecg-qa-ptbxl"] == {
        "items": 1000, "mapped": 0, "repaired": {}, "skipped": {"ECG not in store": 1000},
    }  # fmt: skip

    invoke(
        "data", "map", "ecg-grounding-test", "ecg-bench-pulse", "--source", str(gem_json),
        "--source", str(PULSE_BENCH), "--store", str(sample_store), "--out", str(sets), "--mix", "mixed",
    )  # fmt: skip
    mixed = read_conversation_set(sets / "mixed.parquet")
    assert len(mixed) == 3 and set_info(mixed)["sources"] == ["ecg-grounding-test", "ecg-bench-pulse"]

    folds = tmp_path / "folds"
    out = invoke(
        "data", "split", "--store", str(sample_store), "--sets", str(sets / "mixed.parquet"),
        "--out", str(folds), "--folds", "4", "--seed", "5",
    )  # fmt: skip
    assert "patients in more than one split: 0" in out
    record_splits = pq.read_table(folds / "splits.parquet").to_pylist()
    assert len(record_splits) == 28 and {r["fold"] for r in record_splits} == {0, 1, 2, 3}
    where = {(r["corpus"], r["record_id"]): r["split"] for r in record_splits}
    for conversation in iter_conversations(read_conversation_set(folds / "mixed.parquet")):
        assert conversation.split == where[(conversation.ecgs[0].corpus, conversation.ecgs[0].record_id)]

    out = invoke("data", "stats", "--store", str(sample_store), "--sets", str(folds / "mixed.parquet"),
                 "--out", str(tmp_path / "stats"))  # fmt: skip
    assert "68 segments, 28 records" in out
    stats = json.loads((tmp_path / "stats" / "stats.json").read_text())
    assert stats["sets"][str(folds / "mixed.parquet")]["conversations"] == 3
    assert (tmp_path / "stats" / "labels.png").is_file()


def test_split_settings_from_config_file(sample_store: Path, tmp_path: Path) -> None:
    config = tmp_path / "exp.toml"
    config.write_text("seed = 1\n[sets]\nfolds = 10\nsplit_method = 'strat_fold'\n")
    invoke(
        "--config", str(config), "data", "split", "--store", str(sample_store), "--out", str(tmp_path / "f")
    )
    rows = {r["record_id"]: r for r in pq.read_table(tmp_path / "f" / "splits.parquet").to_pylist()}
    assert rows["6000"]["fold"] == 9 and rows["6000"]["split"] == "test"  # PTB-XL strat_fold 10


def test_sample_and_plot(sample_store: Path, tmp_path: Path) -> None:
    out = invoke(
        "data", "sample", "--store", str(sample_store), "--out", str(tmp_path / "s.parquet"),
        "--sample-size", "12", "--sample-method", "stratified", "--clusters", "4",
        "--npy", f"{tmp_path}/s.npy",
    )  # fmt: skip
    assert "12 of 68 segments" in out
    ids, info = read_sample(tmp_path / "s.parquet")
    assert len(ids) == 12 and info["method"] == "stratified"
    # The .npy holds exactly those segments, for `ecgbench tokenizer train --npy`.
    exported = np.load(tmp_path / "s.npy", allow_pickle=False)
    np.testing.assert_array_equal(exported, SegmentStore.open(sample_store).read_many(ids))
    assert {"1", "99"} <= set(info["percentiles"]["global"])  # the tokenizer's percentile_low/high too
    invoke("data", "plot", "--store", str(sample_store), "--record", "A0001", "--part", "1",
           "--out", str(tmp_path / "a.png"))  # fmt: skip
    invoke("data", "plot", "--store", str(sample_store), "--segment", "0", "--renderer", "ecg-plot",
           "--out", str(tmp_path / "b.svg"))  # fmt: skip
    assert (tmp_path / "a.png").stat().st_size > 10_000 and (tmp_path / "b.svg").is_file()


def test_user_errors_are_one_line(sample_store: Path, gem_json: Path, tmp_path: Path) -> None:
    store, out = str(sample_store), str(tmp_path / "out")
    broken = tmp_path / "broken.json"
    broken.write_text('[{"id": 1, "ecg": ')
    cases = [
        (["map", "ecg-grounding", "--source", str(broken), "--store", store, "--out", out], "not valid JSON"),
        (["map", "gem", "--source", str(gem_json), "--store", store, "--out", out], "unknown set"),
        (
            [
                "map",
                "ecg-grounding",
                "ecg-qa-ptbxl",
                "--source",
                str(gem_json),
                "--store",
                store,
                "--out",
                out,
            ],
            "one --source per set",
        ),
        (
            ["map", "ecg-grounding", "--source", str(tmp_path / "x.json"), "--store", store, "--out", out],
            "source not found",
        ),
        (["split", "--store", str(tmp_path), "--out", out], "not a segment store"),
        (["split", "--store", store, "--out", out, "--split-method", "random"], "--split-method"),
        (["split", "--store", store, "--out", out, "--sets", str(broken)], "not a readable Parquet"),
        (["sample", "--store", store, "--out", f"{out}/s.parquet", "--sample-size", "0"], "--sample-size"),
        (["plot", "--store", store, "--record", "A9999", "--out", f"{out}/p.png"], "not in the store"),
        (["plot", "--store", store, "--out", f"{out}/p.png"], "either --segment or --record"),
    ]
    for args, message in cases:
        assert message in fails("data", *args), args
