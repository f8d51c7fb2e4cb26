"""Symbolisation: ECG samples (mV) <-> the 26 symbols a..z.

A value ``x`` in a range ``[lo, hi]`` becomes level ``floor((x - lo) / (hi - lo) * 26)`` clipped to
0..25, and level ``k`` decodes to the centre of its bin, ``lo + (k + 0.5) * (hi - lo) / 26``, so a
decoded value is never more than half a bin from the original (for values inside the range).

Where the range comes from (``normalization``):
- ``segment``: one min/max over all leads of a segment (the peer's way, kept for compatibility);
- ``lead``: min/max per lead, so a quiet lead keeps its shape (default);
- ``percentile``: one global range from training data (low/high percentiles widened by a margin);
  values outside it are clipped.
A lead that is constant (e.g. a disconnected electrode) in ``lead`` mode maps to the middle level and
decodes exactly; a segment that is constant as a whole has nothing to encode and is an error.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Literal

import numpy as np

from ecgbench.errors import UserError

LEVELS = 26
ALPHABET = "abcdefghijklmnopqrstuvwxyz"
FLAT_LEVEL = LEVELS // 2
Normalization = Literal["segment", "lead", "percentile"]
NORMALIZATIONS: tuple[str, ...] = ("segment", "lead", "percentile")
# Enough values for stable 1st/99th percentiles without reading a whole corpus into float64.
_PERCENTILE_SAMPLE = 4_000_000


class SignalError(UserError):
    """A signal that cannot be symbolised (NaN/Inf, flat, wrong shape).

    ``segment`` is the position of the offending segment in the batch that was passed, when known, so a
    caller that passes batches of a larger input can name the segment in its own numbering.
    """

    def __init__(self, detail: str, segment: int | None = None):
        super().__init__(detail if segment is None else f"segment {segment} {detail}")
        self.detail = detail
        self.segment = segment


@dataclass(frozen=True)
class SignalScale:
    """The per-lead value range a segment was quantised with: what decoding needs."""

    lo: np.ndarray
    hi: np.ndarray

    @property
    def n_leads(self) -> int:
        return len(self.lo)

    def to_json(self) -> dict[str, list[float]]:
        return {"lo": [float(v) for v in self.lo], "hi": [float(v) for v in self.hi]}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SignalScale:
        return cls(np.asarray(data["lo"], dtype=np.float64), np.asarray(data["hi"], dtype=np.float64))


def as_segments(signals: Any) -> list[np.ndarray]:
    """(N, leads, L) array or a sequence of (leads, L) arrays -> list of 2-D float arrays."""
    if isinstance(signals, np.ndarray):
        if signals.ndim == 2:
            return [signals]
        if signals.ndim != 3:
            raise SignalError(f"signals must have shape (N, leads, samples), got {signals.shape}")
        return list(signals)
    segments = [np.asarray(s) for s in signals]
    for i, s in enumerate(segments):
        if s.ndim != 2:
            raise SignalError(f"must have shape (leads, samples), got {s.shape}", segment=i)
    return segments


def check_segment(signal: np.ndarray, index: int = 0) -> np.ndarray:
    """A finite, non-constant (leads, samples) float array, or a :class:`SignalError` naming ``index``."""
    signal = np.asarray(signal)
    if signal.ndim != 2 or signal.shape[1] == 0:
        raise SignalError(f"must have shape (leads, samples), got {signal.shape}", segment=index)
    if not np.issubdtype(signal.dtype, np.number):
        raise SignalError(f"is not numeric (dtype {signal.dtype})", segment=index)
    if not np.isfinite(signal).all():
        raise SignalError("contains NaN or Inf values; clean or interpolate it first", segment=index)
    if signal.max() == signal.min():
        raise SignalError("is flat (zero variance): there is nothing to encode", segment=index)
    return signal


@dataclass(frozen=True)
class Symbolizer:
    normalization: Normalization = "lead"
    percentile_low: float = 1.0
    percentile_high: float = 99.0
    percentile_margin: float = 0.1
    # The global range of percentile mode, estimated by fit().
    value_range: tuple[float, float] | None = None

    def __post_init__(self) -> None:
        if self.normalization not in NORMALIZATIONS:
            raise UserError(
                f"unknown normalization {self.normalization!r} (allowed: {', '.join(NORMALIZATIONS)})"
            )
        if not 0 <= self.percentile_low < self.percentile_high <= 100:
            raise UserError(
                f"percentiles must satisfy 0 <= low < high <= 100, got {self.percentile_low} and "
                f"{self.percentile_high}"
            )

    @property
    def needs_fit(self) -> bool:
        return self.normalization == "percentile" and self.value_range is None

    def fit(self, segments: list[np.ndarray]) -> Symbolizer:
        """Estimate the global range (percentile mode); other modes need nothing."""
        if self.normalization != "percentile":
            return self
        total = sum(s.size for s in segments)
        if total == 0:
            raise SignalError("no samples to estimate percentiles from")
        # Subsample each segment before converting, so at most ~_PERCENTILE_SAMPLE values become float64.
        stride = max(1, total // _PERCENTILE_SAMPLE)
        flat = np.concatenate([np.asarray(s).ravel()[::stride].astype(np.float64) for s in segments])
        lo, hi = np.percentile(flat, [self.percentile_low, self.percentile_high])
        span = hi - lo
        if not span > 0:
            raise SignalError("the training signals have zero spread between the chosen percentiles")
        margin = self.percentile_margin * span
        return replace(self, value_range=(float(lo - margin), float(hi + margin)))

    def scale(self, signal: np.ndarray) -> SignalScale:
        n_leads = signal.shape[0]
        if self.normalization == "lead":
            return SignalScale(signal.min(axis=1).astype(np.float64), signal.max(axis=1).astype(np.float64))
        if self.normalization == "segment":
            lo, hi = float(signal.min()), float(signal.max())
        else:
            if self.value_range is None:
                raise UserError("percentile normalization has no fitted range: train the tokenizer first")
            lo, hi = self.value_range
        return SignalScale(np.full(n_leads, lo), np.full(n_leads, hi))

    def symbolize(self, signal: np.ndarray, index: int = 0) -> tuple[np.ndarray, SignalScale]:
        """(leads, L) signal -> (codes 0..25 as uint8, lead after lead; the scale to decode them)."""
        signal = check_segment(signal, index)
        scale = self.scale(signal)
        width = scale.hi - scale.lo
        safe = np.where(width > 0, width, 1.0)[:, None]
        levels = np.floor((signal - scale.lo[:, None]) / safe * LEVELS)
        codes = np.clip(levels, 0, LEVELS - 1).astype(np.uint8)
        codes[width == 0] = FLAT_LEVEL
        return codes.ravel(), scale

    @staticmethod
    def desymbolize(codes: np.ndarray, scale: SignalScale) -> np.ndarray:
        """Codes (lead after lead) -> (leads, L) float32 at bin centres."""
        codes = np.asarray(codes)
        n_leads = scale.n_leads
        if codes.size % n_leads:
            raise SignalError(f"{codes.size} symbols do not split into {n_leads} equal leads")
        levels = codes.reshape(n_leads, -1).astype(np.float64)
        width = (scale.hi - scale.lo)[:, None]
        return (scale.lo[:, None] + (levels + 0.5) * width / LEVELS).astype(np.float32)

    def to_json(self) -> dict[str, Any]:
        return {
            "levels": LEVELS,
            "alphabet": ALPHABET,
            "normalization": self.normalization,
            "quantize": "floor((x - lo) / (hi - lo) * 26), clipped to 0..25",
            "dequantize": "lo + (level + 0.5) * (hi - lo) / 26 (bin centre)",
            "percentile_low": self.percentile_low,
            "percentile_high": self.percentile_high,
            "percentile_margin": self.percentile_margin,
            "value_range": list(self.value_range) if self.value_range is not None else None,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Symbolizer:
        if data.get("levels") != LEVELS or data.get("alphabet") != ALPHABET:
            raise ValueError("symbolization must use the 26 levels a..z")
        value_range = data.get("value_range")
        return cls(
            normalization=data["normalization"],
            percentile_low=float(data["percentile_low"]),
            percentile_high=float(data["percentile_high"]),
            percentile_margin=float(data["percentile_margin"]),
            value_range=(float(value_range[0]), float(value_range[1])) if value_range is not None else None,
        )


def codes_from_text(text: str | bytes, index: int = 0) -> np.ndarray:
    """'a'..'z' text -> codes 0..25, or a :class:`UserError` naming the first bad character."""
    raw = text.encode("ascii", errors="replace") if isinstance(text, str) else bytes(text)
    codes = np.frombuffer(raw, dtype=np.uint8) - np.uint8(ord("a"))
    bad = np.flatnonzero(codes >= LEVELS)
    if bad.size:
        pos = int(bad[0])
        char = text[pos] if isinstance(text, str) else chr(raw[pos])
        raise UserError(f"symbol string {index} has {char!r} at position {pos}: only a..z are symbols")
    return codes
