"""ECG-Byte: symbolise ECG signals into a..z and compress them with byte-pair encoding (Rust core).

The names below load on first use, so importing the ``tokenizer`` command group (for its help or shell
completion) does not load numpy and the Rust extension."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ecgbench.tokenizer.core import ECGByteTokenizer
    from ecgbench.tokenizer.symbols import SignalScale, Symbolizer

__all__ = ["ECGByteTokenizer", "SignalScale", "Symbolizer"]
_HOMES = {"ECGByteTokenizer": "core", "SignalScale": "symbols", "Symbolizer": "symbols"}


def __getattr__(name: str) -> Any:
    if name in _HOMES:
        import importlib

        return getattr(importlib.import_module(f"ecgbench.tokenizer.{_HOMES[name]}"), name)
    raise AttributeError(f"module 'ecgbench.tokenizer' has no attribute {name!r}")
