"""tokenizer.json: versioned, checksummed, and loud about truncated, tampered or foreign files."""

from __future__ import annotations

import json

import numpy as np
import pytest

from ecgbench.errors import CorruptFileError, UserError
from ecgbench.tokenizer import ECGByteTokenizer
from ecgbench.tokenizer.core import checksum


@pytest.fixture(scope="module")
def tokenizer(chapman) -> ECGByteTokenizer:
    return ECGByteTokenizer.train(chapman[:4], 150, normalization="percentile", lead_boundaries=True)


def test_round_trip(tmp_path, tokenizer, ptbxl):
    path = tokenizer.save(tmp_path / "tokenizer.json")
    loaded = ECGByteTokenizer.load(tmp_path)  # a directory means its tokenizer.json
    assert loaded.merges == tokenizer.merges
    assert loaded.symbolizer == tokenizer.symbolizer
    assert loaded.lead_boundaries and loaded.training == tokenizer.training
    assert np.array_equal(loaded.encode(ptbxl[0]), tokenizer.encode(ptbxl[0]))
    document = json.loads(path.read_text())
    assert document["format"] == "ecgbench/ecg-byte-tokenizer" and document["version"] == 1
    assert "ids 0..25" in document["id_layout"]
    assert document["checksum"].startswith("sha256:")
    assert [p.name for p in tmp_path.iterdir()] == ["tokenizer.json"]  # no temporary file left behind


def test_directory_gets_a_tokenizer_json(tmp_path, tokenizer):
    assert tokenizer.save(tmp_path) == tmp_path / "tokenizer.json"
    assert ECGByteTokenizer.load(tmp_path).merges == tokenizer.merges


def test_truncated_file(tmp_path, tokenizer):
    path = tokenizer.save(tmp_path / "tokenizer.json")
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CorruptFileError, match="truncated or not JSON"):
        ECGByteTokenizer.load(path)


def test_tampered_merge(tmp_path, tokenizer):
    path = tokenizer.save(tmp_path / "tokenizer.json")
    document = json.loads(path.read_text())
    document["merges"][0] = [1, 2]
    path.write_text(json.dumps(document))
    with pytest.raises(CorruptFileError, match="checksum mismatch"):
        ECGByteTokenizer.load(path)


def test_resigned_but_invalid_contents(tmp_path, tokenizer):
    document = tokenizer.to_json()
    document["merges"].append([0, 999_999])
    document["vocab_size"] += 1
    payload = {k: v for k, v in document.items() if k != "checksum"}
    document["checksum"] = checksum(payload)
    (tmp_path / "t.json").write_text(json.dumps(document))
    with pytest.raises(CorruptFileError, match="does not exist before it"):
        ECGByteTokenizer.load(tmp_path / "t.json")


def test_foreign_and_future_files(tmp_path, tokenizer):
    (tmp_path / "hf.json").write_text(json.dumps({"version": "1.0", "model": {"type": "BPE"}}))
    with pytest.raises(CorruptFileError, match="not an ECG-Byte tokenizer"):
        ECGByteTokenizer.load(tmp_path / "hf.json")
    document = tokenizer.to_json()
    document["version"] = 99
    (tmp_path / "future.json").write_text(json.dumps(document))
    with pytest.raises(CorruptFileError, match="version 99"):
        ECGByteTokenizer.load(tmp_path / "future.json")
    (tmp_path / "binary.json").write_bytes(b"\x80\x04\x95")
    with pytest.raises(CorruptFileError):
        ECGByteTokenizer.load(tmp_path / "binary.json")
    with pytest.raises(UserError, match="not found"):
        ECGByteTokenizer.load(tmp_path / "missing.json")
