"""The peer's released tokenizer pickles: safe loading, import, and its greedy segmentation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ecgbench.errors import CorruptFileError, UserError
from ecgbench.tokenizer import ECGByteTokenizer
from ecgbench.tokenizer.peer_pickle import import_peer_tokenizer, load_plain_pickle, loads_plain_pickle

PEER_PICKLES = sorted((Path(__file__).resolve().parents[1] / "data" / "peer_tokenizers").glob("*.pkl"))


def peer_greedy(text: str, vocab: dict[int, str]) -> list[int]:
    """The peer's encoder as described: longest vocabulary string at each position."""
    by_string = {s: i for i, s in vocab.items()}
    prefixes = {s[:k] for s in by_string for k in range(1, len(s) + 1)}
    ids, i = [], 0
    while i < len(text):
        j, best = i + 1, None
        while j <= len(text) and text[i:j] in prefixes:
            if text[i:j] in by_string:
                best = j
            j += 1
        ids.append(by_string[text[i:best]])
        i = best
    return ids


@pytest.mark.parametrize("path", PEER_PICKLES, ids=lambda p: p.name)
def test_import_reproduces_peer_segmentation(path, ptbxl, tmp_path):
    vocab, merges = load_plain_pickle(path)
    tok = import_peer_tokenizer(path)
    assert tok.vocab_size == 26 + len(merges)
    assert tok.encode_mode == "greedy" and tok.symbolizer.normalization == "segment"
    peer_ids = tok.imported_from["peer_ids"]
    assert [vocab[p] for p in peer_ids] == tok.token_strings
    # Every imported token encodes to itself in merge order (the recovered pairs are consistent).
    assert all(len(tok.encode_symbols(s, mode="bpe")) == 1 for s in tok.token_strings)
    tok.save(tmp_path / "tokenizer.json")
    tok = ECGByteTokenizer.load(tmp_path / "tokenizer.json")
    for record in ptbxl[:2]:
        codes, scale = tok.symbolize(record)
        text = (codes + 97).tobytes().decode()
        ids = tok.encode(record)
        assert [peer_ids[i] for i in ids] == peer_greedy(text, vocab)
        bpe = tok.encode(record, mode="bpe")
        assert tok.decode_symbols(bpe) == tok.decode_symbols(ids) == text
        assert (
            np.abs(tok.decode_signal(ids, scale) - record) <= (scale.hi[0] - scale.lo[0]) / 52 + 1e-5
        ).all()


def test_pickle_that_runs_code_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    # Protocol 0: GLOBAL os.system, then REDUCE with a shell command (never executed here).
    evil = f"cos\nsystem\n(S'touch {marker}'\ntR.".encode()
    with pytest.raises(CorruptFileError, match="opcode GLOBAL"):
        loads_plain_pickle(evil)
    (tmp_path / "evil.pkl").write_bytes(evil)
    with pytest.raises(CorruptFileError, match="can import or call code"):
        import_peer_tokenizer(tmp_path / "evil.pkl")
    assert not marker.exists()
    # Protocol 4 style: STACK_GLOBAL + REDUCE inside an otherwise plain tuple.
    evil4 = b"\x80\x04\x95\x00\x00\x00\x00\x00\x00\x00\x00}\x94\x8c\x02os\x8c\x06system\x93."
    with pytest.raises(CorruptFileError, match="STACK_GLOBAL"):
        loads_plain_pickle(evil4)


def test_truncated_and_malformed_pickles(tmp_path):
    data = PEER_PICKLES[0].read_bytes()
    (tmp_path / "cut.pkl").write_bytes(data[: len(data) // 2])
    with pytest.raises(CorruptFileError, match="truncated"):
        import_peer_tokenizer(tmp_path / "cut.pkl")
    plain = b"\x80\x04K\x05."  # the int 5: plain, but not (vocab, merges)
    (tmp_path / "int.pkl").write_bytes(plain)
    with pytest.raises(CorruptFileError, match=r"\(vocab, merges\)"):
        import_peer_tokenizer(tmp_path / "int.pkl")
    with pytest.raises(UserError, match="not found"):  # missing is not corrupt
        import_peer_tokenizer(tmp_path / "missing.pkl")
