"""Issue 7, ids of the wrong type in source sets: an ECG-QA ``ecg_id`` of ``true`` or ``6002.9`` must not
become record 1 or 6002, and an item ``id`` that is neither text nor an integer is not coerced; both are
counted skips. Items are the real first ECG-QA PTB-XL question of the bundled sample (upstream schema:
``ecg_id`` a list of integers) and the real PULSE ECGBench item, with one field changed."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from sets_helpers import ECGQA, PULSE_BENCH, index_table

from ecgbench.data.mapping import map_source_set
from ecgbench.data.mapping.common import RecordLookup


def ecgqa_root(tmp_path: Path, items: list) -> Path:
    root = tmp_path / "ptbxl"
    (root / "template" / "test").mkdir(parents=True)
    shutil.copy(ECGQA / "ptbxl" / "answers_for_each_template.csv", root)
    (root / "template" / "test" / "80000.json").write_text(json.dumps(items))
    return root


def test_ecg_ids_of_the_wrong_type_are_skipped_not_coerced(tmp_path):
    real = json.loads((ECGQA / "ptbxl" / "template" / "test" / "80000.json").read_text())[0]
    items = [
        {**real, "sample_id": 1, "ecg_id": [True]},
        {**real, "sample_id": 2, "ecg_id": [6002.9]},
        {**real, "sample_id": 3, "ecg_id": [6002.0]},
        {**real, "sample_id": 4, "ecg_id": ["6002"]},
        {**real, "sample_id": 5, "ecg_id": [6002]},
        {**real, "sample_id": True, "ecg_id": [6002]},
    ]
    # Records 1 and 6002 are in the store: coercion would map the first four onto them.
    lookup = RecordLookup(index_table([{"corpus": "ptbxl", "record_id": r} for r in ("1", "6002")]))
    table, report = map_source_set("ecg-qa-ptbxl", ecgqa_root(tmp_path, items), lookup)
    assert report.skipped == {"malformed ECG id": 4, "malformed item": 1}
    assert report.mapped == 1 and table.column("source_id").to_pylist() == ["template/5"]


def test_item_ids_of_the_wrong_type_are_skipped(tmp_path):
    real = json.loads(PULSE_BENCH.read_text())[0]
    items = [real, {**real, "id": True}, {**real, "id": 3.5}, {**real, "id": ["a"]}, {**real, "id": 7}]
    path = tmp_path / "ptb_report_generation_test.json"
    path.write_text(json.dumps(items))
    lookup = RecordLookup(index_table([{"corpus": "ptbxl", "record_id": "7190"}]))
    table, report = map_source_set("ecg-bench-pulse", path, lookup)
    assert report.skipped == {"malformed item id": 3}
    assert table.column("source_id").to_pylist() == [real["id"], "7"]
