"""`ecgbench tokenizer ...` end to end on real records, and each bad input as one clear error line."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from ecgbench.cli import app
from ecgbench.tokenizer import ECGByteTokenizer

runner = CliRunner()
PEER_PKL = "tests/data/peer_tokenizers/ecg_byte_tokenizer_1000_25.pkl"


def run(*args: str, code: int = 0):
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == code, result.output
    return result


@pytest.fixture()
def npy(tmp_path, chapman):
    path = tmp_path / "train.npy"
    np.save(path, np.stack(chapman))
    return path


def test_train_encode_decode_inspect(tmp_path, npy, ptbxl):
    tok_path = tmp_path / "tokenizer.json"
    result = run(
        "tokenizer", "train", "--npy", npy, "--out", tok_path, "--num-merges", 120, "--lead-boundaries"
    )
    assert "vocab 146" in result.output
    tok = ECGByteTokenizer.load(tok_path)
    assert tok.lead_boundaries and tok.num_merges == 120

    held_out = tmp_path / "held_out.npy"
    np.save(held_out, np.stack(ptbxl))
    run("tokenizer", "encode", tok_path, "--npy", held_out, "--out", tmp_path / "ids.parquet")
    run(
        "tokenizer",
        "decode",
        tok_path,
        tmp_path / "ids.parquet",
        "--to",
        "signal",
        "--out",
        tmp_path / "rec.npy",
    )
    decoded = np.load(tmp_path / "rec.npy")
    assert decoded.shape == (len(ptbxl), 12, 5000)
    half_bin = (np.ptp(np.stack(ptbxl), axis=2) / 52)[..., None]
    assert (np.abs(decoded - np.stack(ptbxl)) <= half_bin + 1e-5).all()

    result = run("tokenizer", "encode", tok_path, "--npy", held_out, "--encode-mode", "greedy")
    rows = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert len(rows) == len(ptbxl) and rows[0]["n_leads"] == 12
    assert np.array_equal(rows[0]["ids"], tok.encode(ptbxl[0], mode="greedy"))

    png = tmp_path / "lengths.png"
    result = run("tokenizer", "inspect", tok_path, "--npy", held_out, "--histogram", png)
    info = json.loads(result.stdout[: result.stdout.rindex("}") + 1])
    assert info["vocab_size"] == 146 and info["held_out"]["segments"] == len(ptbxl)
    assert info["held_out"]["bpe"]["compression_ratio"] > 1.5
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_symbols_file_and_settings(tmp_path, monkeypatch):
    text = tmp_path / "symbols.txt"
    text.write_text("aabbaabbccaabb\nmmmmnnnnmmmm\n\nzzzyzzzy\n")
    monkeypatch.setenv("ECGBENCH_TOKENIZER__NUM_MERGES", "4")
    run("tokenizer", "train", "--symbols", text, "--out", tmp_path / "t.json")
    assert ECGByteTokenizer.load(tmp_path / "t.json").num_merges == 4
    run("tokenizer", "encode", tmp_path / "t.json", "--symbols", text, "--out", tmp_path / "ids.jsonl")
    result = run("tokenizer", "decode", tmp_path / "t.json", tmp_path / "ids.jsonl")
    assert result.stdout.split() == ["aabbaabbccaabb", "mmmmnnnnmmmm", "zzzyzzzy"]
    decoded = tmp_path / "new_dir" / "symbols.txt"
    run("tokenizer", "decode", tmp_path / "t.json", tmp_path / "ids.jsonl", "--out", decoded)
    assert decoded.read_text().split() == ["aabbaabbccaabb", "mmmmnnnnmmmm", "zzzyzzzy"]


def test_store_input(tmp_path):
    from ecgbench.data.prepare import prepare
    from ecgbench.data.store import SegmentStore
    from ecgbench.settings import DataSettings

    prepare("sample", None, tmp_path / "store", DataSettings(), limit=4)
    run("tokenizer", "train", "--store", tmp_path / "store", "--out", tmp_path / "t.json", "--num-merges", 50)
    tok = ECGByteTokenizer.load(tmp_path / "t.json")
    n_segments = len(SegmentStore.open(tmp_path / "store"))
    assert n_segments > 0
    assert tok.training["segments"] + tok.training["skipped_segments"] == n_segments
    assert tok.num_merges == 50


def test_import_pkl(tmp_path):
    result = run("tokenizer", "import-pkl", PEER_PKL, "--out", tmp_path / "peer.json")
    assert "vocab 1026" in result.output
    assert ECGByteTokenizer.load(tmp_path / "peer.json").encode_mode == "greedy"


def test_bad_inputs_are_one_line_errors(tmp_path, npy):
    tok_path = tmp_path / "t.json"
    run("tokenizer", "train", "--npy", npy, "--out", tok_path, "--num-merges", 20)

    truncated = tmp_path / "cut.npy"
    truncated.write_bytes(npy.read_bytes()[:200])
    objects = tmp_path / "objects.npy"
    np.save(objects, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    bad_symbols = tmp_path / "bad.txt"
    bad_symbols.write_text("abc\nab1c\n")
    bad_jsonl = tmp_path / "bad.jsonl"
    bad_jsonl.write_text('{"index": 0, "ids": [1, 2]}\n{"index": 1, "ids": [1,\n')
    bad_tok = tmp_path / "bad.json"
    bad_tok.write_text(tok_path.read_text()[:100])
    # Rows in the schema `encode` writes (index, ids, n_leads, lo, hi), each with one field broken.
    text_ids = tmp_path / "text_ids.jsonl"
    text_ids.write_text('{"index": 0, "ids": ["a", "b"], "n_leads": null, "lo": null, "hi": null}\n')
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    bad_scale = tmp_path / "bad_scale.jsonl"
    bad_scale.write_text('{"index": 0, "ids": [1, 2], "n_leads": 2, "lo": [0.0, 1.0], "hi": [2.0]}\n')
    cases = [
        (["train", "--npy", tmp_path / "missing.npy", "--out", tok_path], "file not found"),
        (["train", "--npy", truncated, "--out", tok_path], "truncated"),
        (["train", "--npy", objects, "--out", tok_path], "not a plain numeric"),
        (["train", "--symbols", bad_symbols, "--out", tok_path], "has '1' at position 2"),
        (["train", "--npy", npy, "--symbols", bad_symbols, "--out", tok_path], "give one input kind"),
        (["train", "--out", tok_path], "no input"),
        (["train", "--npy", npy, "--out", tok_path, "--normalization", "zscore"], "--normalization"),
        (["train", "--npy", npy, "--out", tok_path, "--num-merges", "0"], "--num-merges"),
        (["decode", tok_path, bad_jsonl], "malformed JSON line"),
        (["decode", tok_path, text_ids], "no 'ids' list of integers"),
        (["decode", tok_path, empty], "holds no rows"),
        (["decode", tok_path, bad_scale, "--to", "signal", "--out", tmp_path / "x.npy"], "malformed lo/hi"),
        (["encode", tok_path, "--npy", npy, "--out", tmp_path / "ids.csv"], "must end in .parquet or .jsonl"),
        (
            ["train", "--symbols", bad_symbols, "--out", tok_path, "--lead-boundaries"],
            "only for signal input",
        ),
        (["encode", bad_tok, "--npy", npy], "truncated or not JSON"),
        (["import-pkl", npy, "--out", tmp_path / "x.json"], "refused"),
    ]
    for args, message in cases:
        result = run("tokenizer", *args, code=2)
        assert message in result.output, (args, result.output)
        assert "Traceback" not in result.output
