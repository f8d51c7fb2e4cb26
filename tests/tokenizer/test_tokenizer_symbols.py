"""Symbolisation: reconstruction within half a bin, flat leads, and signals that cannot be encoded."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from ecgbench.errors import UserError
from ecgbench.tokenizer import ECGByteTokenizer, Symbolizer
from ecgbench.tokenizer.symbols import LEVELS, SignalError


def half_bin(scale) -> np.ndarray:
    return ((scale.hi - scale.lo) / LEVELS / 2)[:, None]


@pytest.mark.parametrize("normalization", ["segment", "lead"])
def test_real_records_reconstruct_within_half_a_bin(chapman, normalization):
    tok = ECGByteTokenizer.train(chapman, 200, normalization=normalization)
    for record in chapman[:4]:
        ids, scale = tok.encode(record, return_scale=True)
        decoded = tok.decode_signal(ids, scale)
        assert decoded.shape == record.shape
        assert (np.abs(decoded - record) <= half_bin(scale) + 1e-5).all()
        if normalization == "segment":
            assert len(set(scale.lo)) == 1 and len(set(scale.hi)) == 1


def test_percentile_mode_uses_one_global_range(chapman, ptbxl):
    tok = ECGByteTokenizer.train(chapman, 100, normalization="percentile", percentile_margin=0.2)
    lo, hi = tok.symbolizer.value_range
    ids = tok.encode(ptbxl[0])
    decoded = tok.decode_signal(ids)  # no scale needed: the range is the tokenizer's
    inside = (ptbxl[0] >= lo) & (ptbxl[0] <= hi)
    assert inside.mean() > 0.95
    assert (np.abs(decoded - ptbxl[0])[inside] <= (hi - lo) / LEVELS / 2 + 1e-5).all()


@settings(max_examples=60, deadline=None)
@given(
    arrays(
        np.float64, st.tuples(st.integers(1, 12), st.integers(2, 64)), elements=st.floats(-10, 10, width=32)
    ),
    st.sampled_from(["segment", "lead"]),
)
def test_reconstruction_within_half_a_bin(signal, normalization):
    symbolizer = Symbolizer(normalization)
    if signal.max() == signal.min():
        with pytest.raises(SignalError, match="flat"):
            symbolizer.symbolize(signal)
        return
    codes, scale = symbolizer.symbolize(signal)
    assert codes.dtype == np.uint8 and codes.max() < LEVELS
    decoded = Symbolizer.desymbolize(codes, scale)
    assert (np.abs(decoded - signal) <= half_bin(scale) + 1e-5 * (1 + np.abs(signal))).all()


def test_flat_lead_keeps_its_value_in_lead_mode(chapman):
    record = chapman[0].copy()
    record[3] = 0.25  # a disconnected lead
    codes, scale = Symbolizer("lead").symbolize(record)
    decoded = Symbolizer.desymbolize(codes, scale)
    np.testing.assert_allclose(decoded[3], 0.25, rtol=1e-6)


def test_bad_signals_are_clear_errors(chapman):
    tok = ECGByteTokenizer.train(chapman[:2], 20)
    nan = chapman[0].copy()
    nan[2, 100] = np.nan
    inf = chapman[0].copy()
    inf[0, 0] = np.inf
    for bad, message in [
        (nan, "NaN or Inf"),
        (inf, "NaN or Inf"),
        (np.zeros((12, 500)), "flat"),
        (np.ones(100), "shape"),
    ]:
        with pytest.raises(UserError, match=message):
            tok.encode(bad)
    with pytest.raises(UserError, match="segment 1 contains NaN"):
        tok.encode_batch([chapman[1], nan])


def test_percentiles_must_be_ordered(chapman):
    with pytest.raises(UserError, match="0 <= low < high <= 100"):
        ECGByteTokenizer.train(
            chapman[:2], 20, normalization="percentile", percentile_low=60, percentile_high=55
        )


def test_training_skips_and_counts_invalid_segments(chapman):
    nan = chapman[0].copy()
    nan[0, :10] = np.nan
    tok = ECGByteTokenizer.train([*chapman[:3], nan, np.zeros((12, 100))], 20, on_invalid="skip")
    assert tok.training["skipped_segments"] == 2
    assert tok.training["segments"] == 3
    with pytest.raises(UserError, match="NaN"):
        ECGByteTokenizer.train([*chapman[:3], nan], 20)
    with pytest.raises(UserError, match="empty corpus"):
        ECGByteTokenizer.train([nan], 20, on_invalid="skip")
