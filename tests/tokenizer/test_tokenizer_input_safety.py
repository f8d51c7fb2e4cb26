"""Issue 7, the tokenizer commands given bad inputs: a pickle bomb is refused in bounded work, a file that
is not .npy (or a folder) is named as such, outputs never land in a store or on an input, and a damaged
store is noticed before training on it. Stores are the bundled real sample (``sample_store``)."""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from ecgbench.cli import app
from ecgbench.errors import CorruptFileError
from ecgbench.tokenizer.peer_pickle import loads_plain_pickle

runner = CliRunner()


def fails(*args) -> str:
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    (line,) = [line for line in result.output.splitlines() if line.startswith("error:")]
    return line


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory, sample_store) -> Path:
    path = tmp_path_factory.mktemp("tok") / "tokenizer.json"
    result = runner.invoke(
        app, ["tokenizer", "train", "--store", str(sample_store), "--out", str(path), "--num-merges", "20"]
    )
    assert result.exit_code == 0, result.output
    return path


# ----------------------------------------------------------------------------------- 16: pickle bombs


def bomb(levels: int, width: int) -> list:
    x: list = [1, 2, 3]
    for _ in range(levels):
        x = [x] * width  # one list, ``width`` references to the one below: tiny file, huge tree
    return x


def test_shared_reference_bomb_is_refused_by_import_pkl(tmp_path):
    path = tmp_path / "ecg_byte_tokenizer_bomb.pkl"
    path.write_bytes(pickle.dumps(({256: "ab"}, bomb(40, 2)), protocol=0))  # x = [x, x] forty times
    assert path.stat().st_size < 2048
    line = fails("tokenizer", "import-pkl", path, "--out", tmp_path / "tok.json")
    assert "refused" in line and str(path) in line
    assert not (tmp_path / "tok.json").exists()


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (bomb(40, 2), "nest deeper than 32 levels"),
        (bomb(25, 4), "expand to more than 65,536 values"),  # shallow enough, 4**25 values as a tree
    ],
    ids=["deep", "wide"],
)
def test_bombs_are_refused_by_the_reader(value, message):
    with pytest.raises(CorruptFileError, match=message):
        loads_plain_pickle(pickle.dumps(value), "bomb.pkl")


def test_self_containing_pickle_is_refused():
    x: list = [1]
    x.append(x)
    with pytest.raises(CorruptFileError, match="contains itself"):
        loads_plain_pickle(pickle.dumps(x), "cycle.pkl")


def test_huge_values_are_cut_short_in_messages(tmp_path):
    path = tmp_path / "big.pkl"
    path.write_bytes(pickle.dumps(({}, [([97, 98], "x" * 100_000)])))
    line = fails("tokenizer", "import-pkl", path, "--out", tmp_path / "tok.json")
    assert "creates id 'xxx" in line and len(line) < 400


# ------------------------------------------------------------------------------ 21: not a .npy file


def test_text_file_named_npy_and_a_folder_are_named_as_such(tmp_path):
    text = tmp_path / "signals.npy"
    text.write_text("0.1, 0.2, 0.3\n")
    line = fails("tokenizer", "train", "--npy", text, "--out", tmp_path / "tok.json")
    assert line == f"error: {text} is not a .npy file (it does not start with the NumPy header)"
    folder = tmp_path / "folder.npy"
    folder.mkdir()
    line = fails("tokenizer", "train", "--npy", folder, "--out", tmp_path / "tok.json")
    assert line == f"error: --npy file {folder} is a directory, not a file"
    assert "is a directory" in fails(
        "tokenizer", "train", "--symbols", folder, "--out", tmp_path / "t.json"
    )
    truncated = tmp_path / "cut.npy"
    np.save(truncated, np.zeros((4, 12, 100), np.float32))
    truncated.write_bytes(truncated.read_bytes()[:-100])
    assert "is truncated" in fails("tokenizer", "train", "--npy", truncated, "--out", tmp_path / "tok.json")


def test_decode_of_a_folder_is_named_as_such(tmp_path, tokenizer):
    assert "ids file" in fails("tokenizer", "decode", tokenizer, tmp_path)


# ----------------------------------------------------------------- 2: outputs inside a store or on inputs


def test_encode_refuses_an_output_inside_the_store(tmp_path, tokenizer, sample_store):
    store = tmp_path / "store"
    shutil.copytree(sample_store, store)
    index = (store / "index.parquet").read_bytes()
    line = fails("tokenizer", "encode", tokenizer, "--store", store, "--out", store / "index.parquet")
    assert "inside the segment store" in line
    assert (store / "index.parquet").read_bytes() == index
    assert "inside the segment store" in fails("tokenizer", "train", "--store", store, "--out", store)


def test_outputs_that_would_overwrite_an_input_are_refused(tmp_path, tokenizer, sample_store):
    ids = tmp_path / "ids.jsonl"
    result = runner.invoke(
        app, ["tokenizer", "encode", str(tokenizer), "--store", str(sample_store), "--out", str(ids)]
    )
    assert result.exit_code == 0, result.output
    before = ids.read_bytes()
    line = fails("tokenizer", "decode", tokenizer, ids, "--to", "symbols", "--out", ids)
    assert "is also an input" in line and ids.read_bytes() == before
    assert "is also an input" in fails("tokenizer", "import-pkl", tokenizer, "--out", tokenizer)
    symbols = tmp_path / "symbols.txt"
    symbols.write_text("abcabcabc\nabcabd\n")
    assert "is also an input" in fails("tokenizer", "train", "--symbols", symbols, "--out", symbols)
    assert json.loads(tokenizer.read_text())["format"]  # the tokenizer is intact


# ------------------------------------------------------------------------------ 15: damaged store data


def test_training_on_a_damaged_store_is_refused(tmp_path, tokenizer, sample_store):
    store = tmp_path / "store"
    shutil.copytree(sample_store, store)
    shard = store / "shards" / "shard-00000.npy"
    data = bytearray(shard.read_bytes())
    data[-4000:-3984] = bytes(16)  # 16 bytes overwritten with zeros: finite, plausible values
    shard.write_bytes(bytes(data))
    message = "shard-00000.npy does not match its checksum in the manifest: it is damaged"
    assert message in fails("tokenizer", "train", "--store", store, "--out", tmp_path / "t.json")
    assert message in fails("tokenizer", "inspect", tokenizer, "--store", store)
    assert message in fails("tokenizer", "encode", tokenizer, "--store", store)
