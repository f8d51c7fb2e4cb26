"""BPE properties: round trips, determinism, merge-order encoding reproduces training segmentation."""

from __future__ import annotations

import numpy as np
import pytest
from ecgbench._ecgbyte import Trainer
from hypothesis import given, settings
from hypothesis import strategies as st

from ecgbench.errors import UserError
from ecgbench.tokenizer import ECGByteTokenizer
from ecgbench.tokenizer.symbols import ALPHABET

# Small alphabets give long runs and many repeated pairs, like symbolised ECG.
corpora = st.lists(
    st.text(alphabet=st.sampled_from("abcz"), min_size=0, max_size=120), min_size=1, max_size=8
).filter(lambda strings: sum(map(len, strings)) >= 2)


@settings(max_examples=60, deadline=None)
@given(corpora, st.integers(1, 40))
def test_properties_on_symbol_corpora(strings, num_merges):
    tok = ECGByteTokenizer.train_symbols(strings, num_merges)
    again = ECGByteTokenizer.train_symbols(strings, num_merges, threads=2)
    assert tok.merges == again.merges
    assert tok.vocab_size == 26 + len(tok.merges)
    assert tok.token_strings[:26] == list(ALPHABET)
    for mode in ("bpe", "greedy"):
        encoded = tok.encode_symbols_batch(strings, mode=mode)
        for text, ids in zip(strings, encoded, strict=True):
            assert ids.dtype == np.int64
            assert ((ids >= 0) & (ids < tok.vocab_size)).all()
            assert tok.decode_symbols(ids) == text
    # The trainer's own final segmentation equals merge-order encoding of the same corpus.
    codes = b"".join(bytes(ord(c) - 97 for c in s) for s in strings)
    _, _, _, n_tokens, segmentation = Trainer().train(
        codes, [len(s) for s in strings], num_merges, 2, True, 1
    )
    encoded = np.concatenate(tok.encode_symbols_batch(strings, mode="bpe"))
    assert np.array_equal(np.frombuffer(segmentation, "<u4"), encoded)
    assert n_tokens == encoded.size


def test_real_segments_train_identically_and_reproduce_training(segments):
    tok = ECGByteTokenizer.train(segments, 300, threads=1)
    again = ECGByteTokenizer.train(segments, 300, threads=2)
    assert tok.merges == again.merges
    encoded = tok.encode_batch(segments)
    assert sum(len(ids) for ids in encoded) == tok.training["tokens"]
    assert tok.training["compression_ratio"] > 2
    for segment, ids in zip(segments[:3], encoded[:3], strict=True):
        codes, _ = tok.symbolize(segment)
        assert tok.decode_symbols(ids) == (codes + 97).tobytes().decode()
        assert np.array_equal(tok.encode(segment), ids)


def test_merges_stop_at_lead_boundaries(segments):
    tok = ECGByteTokenizer.train(segments, 300, lead_boundaries=True)
    assert tok.lead_boundaries
    n_leads, length = segments[0].shape
    for segment, ids in zip(segments[:5], tok.encode_batch(segments[:5]), strict=True):
        ends = np.cumsum([len(tok.token_strings[i]) for i in ids])
        lead_ends = length * np.arange(1, n_leads + 1)
        assert set(lead_ends) <= set(ends)  # every lead boundary is a token boundary
        assert np.array_equal(tok.encode(segment), ids)


def test_unseen_records_round_trip(chapman, ptbxl):
    tok = ECGByteTokenizer.train(chapman, 400)
    for record in ptbxl:
        for mode in ("bpe", "greedy"):
            ids = tok.encode(record, mode=mode)
            codes, _ = tok.symbolize(record)
            assert tok.decode_symbols(ids) == (codes + 97).tobytes().decode()


def test_progress_counter_restarts_with_each_training():
    trainer = Trainer()
    trainer.train(bytes([0, 1] * 50), [100], 5, 2, False, 1)
    assert trainer.merges_done() > 0
    with pytest.raises(ValueError, match=r"not in 0\.\.26"):
        trainer.train(bytes([0, 30]), [2], 5, 2, False, 1)
    assert trainer.merges_done() == 0


def test_bad_symbol_input():
    with pytest.raises(UserError, match="empty corpus"):
        ECGByteTokenizer.train_symbols([], 10)
    with pytest.raises(UserError, match="empty corpus"):
        ECGByteTokenizer.train_symbols(["", ""], 10)
    with pytest.raises(UserError, match=r"symbol string 1 has 'A' at position 2"):
        ECGByteTokenizer.train_symbols(["abc", "abAc"], 10)
    with pytest.raises(UserError, match="'é'"):
        ECGByteTokenizer.train_symbols(["abé"], 10)
    tok = ECGByteTokenizer.train_symbols(["abababab"], 3)
    with pytest.raises(UserError, match="outside the vocabulary"):
        tok.decode_symbols([0, tok.vocab_size])
    with pytest.raises(UserError, match="encode mode"):
        tok.encode_symbols("abab", mode="longest")
