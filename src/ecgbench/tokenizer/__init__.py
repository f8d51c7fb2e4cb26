"""ECG-Byte: symbolise ECG signals into a..z and compress them with byte-pair encoding (Rust core)."""

from ecgbench.tokenizer.core import ECGByteTokenizer
from ecgbench.tokenizer.symbols import SignalScale, Symbolizer

__all__ = ["ECGByteTokenizer", "SignalScale", "Symbolizer"]
