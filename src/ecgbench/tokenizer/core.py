"""The ECG-Byte tokenizer: symbolisation (``symbols.py``) plus BPE in Rust (``ecgbench._ecgbyte``).

Token ids: 0..25 are the symbols 'a'..'z'; id ``26 + k`` is merge ``k`` (in creation order) of the
pair ``merges[k] = (left, right)``. A segment is symbolised lead after lead into one piece; with
``lead_boundaries`` every lead is its own piece. No token ever spans two pieces.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from ecgbench._ecgbyte import Bpe, Trainer
from ecgbench.errors import CorruptFileError, UserError
from ecgbench.tokenizer.symbols import (
    ALPHABET,
    LEVELS,
    Normalization,
    SignalError,
    SignalScale,
    Symbolizer,
    as_segments,
    codes_from_text,
)

FORMAT = "ecgbench/ecg-byte-tokenizer"
FORMAT_VERSION = 1
ID_LAYOUT = (
    "ids 0..25 are the symbols 'a'..'z'; id 26+k is merge k (creation order) of the pair merges[k] = "
    "[left id, right id]; a segment is symbolised lead after lead"
)
EncodeMode = Literal["bpe", "greedy"]
ENCODE_MODES: tuple[str, ...] = ("bpe", "greedy")
# A pair seen once teaches nothing that generalises: training stops below this count.
MIN_PAIR_COUNT = 2


@dataclass
class Corpus:
    """Symbols ready for the Rust core: codes 0..25, piece lengths, and pieces per segment."""

    codes: np.ndarray
    pieces: list[int]
    pieces_per_item: int
    scales: list[SignalScale] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    @property
    def n_items(self) -> int:
        return len(self.pieces) // self.pieces_per_item if self.pieces_per_item else 0


def _samples_per_segment(corpus: Corpus) -> int | None:
    """Samples per lead of every training segment when they all agree (signal input only)."""
    if not corpus.scales or not corpus.pieces_per_item:
        return None
    pieces = np.asarray(corpus.pieces, dtype=np.int64)
    per_item = np.add.reduceat(pieces, np.arange(0, len(pieces), corpus.pieces_per_item))
    leads = 12
    return int(per_item[0] // leads) if np.all(per_item == per_item[0]) and per_item[0] % leads == 0 else None


def symbolize_segments(
    segments: Iterable[np.ndarray],
    symbolizer: Symbolizer,
    *,
    lead_boundaries: bool,
    on_invalid: Literal["error", "skip"] = "error",
) -> Corpus:
    """Symbolise (leads, L) segments into one corpus; invalid segments raise or are counted and skipped."""
    chunks: list[np.ndarray] = []
    pieces: list[int] = []
    scales: list[SignalScale] = []
    skipped: list[str] = []
    n_leads: int | None = None
    for i, segment in enumerate(segments):
        try:
            codes, scale = symbolizer.symbolize(segment, i)
        except SignalError as exc:
            if on_invalid == "error":
                raise
            skipped.append(str(exc))
            continue
        if n_leads is None:
            n_leads = scale.n_leads
        elif scale.n_leads != n_leads and lead_boundaries:
            raise SignalError(f"has {scale.n_leads} leads, earlier segments {n_leads}", segment=i)
        chunks.append(codes)
        scales.append(scale)
        if lead_boundaries:
            pieces.extend([codes.size // scale.n_leads] * scale.n_leads)
        else:
            pieces.append(codes.size)
    per_item = (n_leads or 1) if lead_boundaries else 1
    codes = np.concatenate(chunks) if chunks else np.zeros(0, np.uint8)
    return Corpus(codes, pieces, per_item, scales, skipped)


def _run_polling(work: Callable[[], Any], poll: Callable[[], int], total: int, description: str) -> Any:
    """Run ``work`` in a thread (it releases the GIL) while a progress bar follows ``poll()``."""
    from ecgbench.console import progress

    result: dict[str, Any] = {}

    def target() -> None:
        try:
            result["value"] = work()
        except BaseException as exc:
            result["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    with progress() as bar:
        task = bar.add_task(description, total=total)
        thread.start()
        while thread.is_alive():
            thread.join(0.1)
            bar.update(task, completed=poll())
        bar.update(task, completed=poll())
    if "error" in result:
        raise result["error"]
    return result["value"]


class ECGByteTokenizer:
    """Symbolisation parameters + learned merges; the Rust tokenizer is built once, here."""

    def __init__(
        self,
        merges: Sequence[Sequence[int]],
        *,
        symbolizer: Symbolizer | None = None,
        lead_boundaries: bool = False,
        encode_mode: EncodeMode = "bpe",
        training: dict[str, Any] | None = None,
        imported_from: dict[str, Any] | None = None,
    ):
        if encode_mode not in ENCODE_MODES:
            raise UserError(f"unknown encode mode {encode_mode!r} (allowed: {', '.join(ENCODE_MODES)})")
        self.merges: list[tuple[int, int]] = [(int(a), int(b)) for a, b in merges]
        try:
            self._bpe = Bpe(self.merges)
        except (ValueError, OverflowError, TypeError) as exc:
            raise UserError(f"invalid merges: {exc}") from None
        self.symbolizer = symbolizer or Symbolizer()
        self.lead_boundaries = bool(lead_boundaries)
        self.encode_mode: EncodeMode = encode_mode
        self.training = training
        self.imported_from = imported_from
        self._token_strings: list[str] | None = None

    # ----------------------------------------------------------------- vocabulary
    @property
    def vocab_size(self) -> int:
        return int(self._bpe.vocab_size)

    @property
    def num_merges(self) -> int:
        return len(self.merges)

    @property
    def token_strings(self) -> list[str]:
        """The symbol string of every id ('a'..'z', then one string per merge)."""
        if self._token_strings is None:
            shift = bytes(range(LEVELS)).maketrans(bytes(range(LEVELS)), ALPHABET.encode())
            self._token_strings = [t.translate(shift).decode("ascii") for t in self._bpe.token_symbols()]
        return self._token_strings

    def token_lengths(self) -> np.ndarray:
        return np.fromiter((len(s) for s in self.token_strings), dtype=np.int64, count=self.vocab_size)

    def __repr__(self) -> str:
        return (
            f"ECGByteTokenizer(vocab_size={self.vocab_size}, "
            f"normalization={self.symbolizer.normalization!r}, "
            f"lead_boundaries={self.lead_boundaries}, encode_mode={self.encode_mode!r})"
        )

    # ------------------------------------------------------------------ training
    @classmethod
    def train(
        cls,
        signals: np.ndarray | Sequence[np.ndarray],
        num_merges: int,
        *,
        normalization: Normalization = "lead",
        lead_boundaries: bool = False,
        percentile_low: float = 1.0,
        percentile_high: float = 99.0,
        percentile_margin: float = 0.1,
        encode_mode: EncodeMode = "bpe",
        on_invalid: Literal["error", "skip"] = "error",
        threads: int | None = None,
        show_progress: bool = False,
    ) -> ECGByteTokenizer:
        """Learn up to ``num_merges`` merges from (N, leads, L) signals in mV.

        ``on_invalid="skip"`` counts and skips NaN/Inf or flat segments instead of raising.
        """
        segments = as_segments(signals)
        symbolizer = Symbolizer(normalization, percentile_low, percentile_high, percentile_margin)
        if symbolizer.needs_fit:
            symbolizer = symbolizer.fit([s for s in segments if np.isfinite(s).all()])
        corpus = symbolize_segments(
            segments, symbolizer, lead_boundaries=lead_boundaries, on_invalid=on_invalid
        )
        return cls._train_corpus(
            corpus,
            num_merges,
            symbolizer=symbolizer,
            lead_boundaries=lead_boundaries,
            encode_mode=encode_mode,
            threads=threads,
            show_progress=show_progress,
        )

    @classmethod
    def train_symbols(
        cls,
        strings: Sequence[str],
        num_merges: int,
        *,
        threads: int | None = None,
        show_progress: bool = False,
    ) -> ECGByteTokenizer:
        """Learn merges from symbol strings (one piece each; merges never cross two strings)."""
        codes = [codes_from_text(s, i) for i, s in enumerate(strings)]
        corpus = Corpus(np.concatenate(codes) if codes else np.zeros(0, np.uint8), [c.size for c in codes], 1)
        return cls._train_corpus(corpus, num_merges, threads=threads, show_progress=show_progress)

    @classmethod
    def _train_corpus(
        cls,
        corpus: Corpus,
        num_merges: int,
        *,
        symbolizer: Symbolizer | None = None,
        lead_boundaries: bool = False,
        encode_mode: EncodeMode = "bpe",
        threads: int | None = None,
        show_progress: bool = False,
    ) -> ECGByteTokenizer:
        if corpus.codes.size == 0:
            raise UserError(
                "empty corpus: no symbols to train on"
                + (f" ({len(corpus.skipped)} invalid segments skipped)" if corpus.skipped else "")
            )
        if num_merges < 1:
            raise UserError(f"num_merges must be at least 1, got {num_merges}")
        trainer = Trainer()
        started = time.perf_counter()

        def work() -> tuple[Any, ...]:
            return trainer.train(
                corpus.codes.tobytes(), corpus.pieces, num_merges, MIN_PAIR_COUNT, False, threads
            )

        try:
            if show_progress:
                result = _run_polling(work, trainer.merges_done, num_merges, "learning merges")
            else:
                result = work()
        except ValueError as exc:
            raise UserError(str(exc)) from None
        merges, _counts, n_symbols, n_tokens, _ = result
        training = {
            "segments": corpus.n_items,
            "skipped_segments": len(corpus.skipped),
            "symbols": int(n_symbols),
            "tokens": int(n_tokens),
            "compression_ratio": round(n_symbols / max(n_tokens, 1), 4),
            "merges_requested": int(num_merges),
            "merges_learned": len(merges),
            "min_pair_count": MIN_PAIR_COUNT,
            "seconds": round(time.perf_counter() - started, 3),
            # lets a trainer refuse a store whose segments are not the ones this tokenizer learned on
            "samples_per_segment": _samples_per_segment(corpus),
        }
        return cls(
            merges,
            symbolizer=symbolizer,
            lead_boundaries=lead_boundaries,
            encode_mode=encode_mode,
            training=training,
        )

    # ------------------------------------------------------------------ encoding
    def _mode(self, mode: str | None) -> bool:
        mode = mode or self.encode_mode
        if mode not in ENCODE_MODES:
            raise UserError(f"unknown encode mode {mode!r} (allowed: {', '.join(ENCODE_MODES)})")
        return mode == "greedy"

    def _encode_corpus(self, corpus: Corpus, mode: str | None, threads: int | None) -> list[np.ndarray]:
        raw, counts = self._bpe.encode_batch(
            corpus.codes.tobytes(), corpus.pieces, corpus.pieces_per_item, self._mode(mode), threads
        )
        ids = np.frombuffer(raw, dtype="<u4").astype(np.int64)
        return np.split(ids, np.cumsum(counts)[:-1]) if counts else []

    def symbolize(self, signal: np.ndarray) -> tuple[np.ndarray, SignalScale]:
        """(leads, L) mV -> (codes 0..25 lead after lead, the scale that decodes them)."""
        return self.symbolizer.symbolize(signal)

    def encode(
        self, signal: np.ndarray, *, mode: EncodeMode | None = None, return_scale: bool = False
    ) -> np.ndarray | tuple[np.ndarray, SignalScale]:
        """(leads, L) mV -> int64 ids; with ``return_scale`` also what :meth:`decode_signal` needs."""
        corpus = symbolize_segments([signal], self.symbolizer, lead_boundaries=self.lead_boundaries)
        (ids,) = self._encode_corpus(corpus, mode, None)
        return (ids, corpus.scales[0]) if return_scale else ids

    def encode_batch(
        self,
        signals: np.ndarray | Sequence[np.ndarray],
        *,
        mode: EncodeMode | None = None,
        threads: int | None = None,
        return_scales: bool = False,
    ) -> list[np.ndarray] | tuple[list[np.ndarray], list[SignalScale]]:
        """Many segments at once, in parallel; one int64 id array per segment."""
        corpus = symbolize_segments(
            as_segments(signals), self.symbolizer, lead_boundaries=self.lead_boundaries
        )
        ids = self._encode_corpus(corpus, mode, threads)
        return (ids, corpus.scales) if return_scales else ids

    def encode_symbols(self, text: str, *, mode: EncodeMode | None = None) -> np.ndarray:
        """'a'..'z' string (one piece) -> int64 ids."""
        codes = codes_from_text(text)
        corpus = Corpus(codes, [codes.size], 1)
        return self._encode_corpus(corpus, mode, None)[0]

    def encode_symbols_batch(
        self, texts: Sequence[str], *, mode: EncodeMode | None = None, threads: int | None = None
    ) -> list[np.ndarray]:
        codes = [codes_from_text(t, i) for i, t in enumerate(texts)]
        if not codes:
            return []
        corpus = Corpus(np.concatenate(codes), [c.size for c in codes], 1)
        return self._encode_corpus(corpus, mode, threads)

    # ------------------------------------------------------------------ decoding
    def decode_codes(self, ids: Sequence[int] | np.ndarray) -> np.ndarray:
        """ids -> symbol codes 0..25 (uint8)."""
        ids = np.asarray(ids)
        if ids.size and (ids.min() < 0 or ids.max() >= self.vocab_size):
            bad = int(ids[(ids < 0) | (ids >= self.vocab_size)][0])
            raise UserError(f"token id {bad} is outside the vocabulary (0..{self.vocab_size - 1})")
        raw = self._bpe.decode(ids.astype("<u4").tobytes())
        return np.frombuffer(raw, dtype=np.uint8)

    def decode_symbols(self, ids: Sequence[int] | np.ndarray) -> str:
        """ids -> the 'a'..'z' string they stand for."""
        return (self.decode_codes(ids) + np.uint8(ord("a"))).tobytes().decode("ascii")

    def decode_signal(
        self, ids: Sequence[int] | np.ndarray, scale: SignalScale | None = None, *, n_leads: int = 12
    ) -> np.ndarray:
        """ids -> (leads, L) float32 mV at bin centres.

        ``scale`` comes from ``encode(..., return_scale=True)``; in percentile mode the tokenizer's own
        global range is used when it is omitted.
        """
        if scale is None:
            if self.symbolizer.value_range is None:
                raise UserError(
                    "decoding a signal needs the scale returned by encode(..., return_scale=True) "
                    f"({self.symbolizer.normalization} normalization)"
                )
            lo, hi = self.symbolizer.value_range
            scale = SignalScale(np.full(n_leads, lo), np.full(n_leads, hi))
        return Symbolizer.desymbolize(self.decode_codes(ids), scale)

    # --------------------------------------------------------------------- files
    def to_json(self) -> dict[str, Any]:
        payload = {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "id_layout": ID_LAYOUT,
            "vocab_size": self.vocab_size,
            "symbolization": self.symbolizer.to_json(),
            "lead_boundaries": self.lead_boundaries,
            "encode_mode": self.encode_mode,
            "training": self.training,
            "imported_from": self.imported_from,
            "merges": [list(m) for m in self.merges],
        }
        return {**payload, "checksum": checksum(payload)}

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write ``tokenizer.json`` (atomically: a temporary file, then a rename); a directory gets one."""
        from ecgbench.files import atomic_write

        path = Path(path)
        if path.is_dir():
            path = path / "tokenizer.json"
        document = self.to_json()
        # One top-level key per line; values compact (5000 merges stay 5000 pairs on one line).
        body = ",\n".join(
            f"  {json.dumps(k)}: {json.dumps(v, separators=(',', ':'))}" for k, v in document.items()
        )
        atomic_write(path, lambda tmp: tmp.write_text("{\n" + body + "\n}\n", encoding="utf-8"))
        return path

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> ECGByteTokenizer:
        """Read a ``tokenizer.json``; a truncated, tampered or foreign file is a :class:`CorruptFileError`."""
        path = Path(path)
        if path.is_dir():
            path = path / "tokenizer.json"
        if not path.is_file():
            raise UserError(f"tokenizer file not found: {path}")
        try:
            document = json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise CorruptFileError(f"{path} is not a tokenizer.json (truncated or not JSON: {exc})") from None
        except OSError as exc:
            raise UserError(f"cannot read tokenizer file {path}: {exc.strerror or exc}") from None
        return cls.from_json(document, str(path))

    @classmethod
    def from_json(cls, document: Any, name: str = "tokenizer") -> ECGByteTokenizer:
        if not isinstance(document, dict) or document.get("format") != FORMAT:
            raise CorruptFileError(f"{name} is not an ECG-Byte tokenizer file (expected format {FORMAT!r})")
        version = document.get("version")
        if not isinstance(version, int) or version > FORMAT_VERSION:
            raise CorruptFileError(
                f"{name} has format version {version!r}; this ecgbench reads versions up to {FORMAT_VERSION}"
            )
        payload = {k: v for k, v in document.items() if k != "checksum"}
        if document.get("checksum") != checksum(payload):
            raise CorruptFileError(f"{name}: checksum mismatch, the file was modified or damaged")
        try:
            merges = document["merges"]
            if not all(
                isinstance(m, list) and len(m) == 2 and all(type(v) is int for v in m) for m in merges
            ):
                raise ValueError("merges must be [left, right] integer pairs")
            tokenizer = cls(
                merges,
                symbolizer=Symbolizer.from_json(document["symbolization"]),
                lead_boundaries=bool(document["lead_boundaries"]),
                encode_mode=document["encode_mode"],
                training=document.get("training"),
                imported_from=document.get("imported_from"),
            )
        except (KeyError, TypeError, ValueError, AttributeError, UserError) as exc:
            raise CorruptFileError(f"{name}: invalid tokenizer contents ({exc})") from None
        if tokenizer.vocab_size != document.get("vocab_size"):
            raise CorruptFileError(f"{name}: vocab_size does not match its merges")
        return tokenizer


def checksum(payload: dict[str, Any]) -> str:
    canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return "sha256:" + hashlib.sha256(canonical.encode("utf-8")).hexdigest()
