"""ecgbench: train and evaluate ECG-language models."""

from __future__ import annotations


def __getattr__(name: str) -> str:
    # Looked up on first use: reading package metadata costs more than starting the CLI itself.
    if name == "__version__":
        from importlib.metadata import PackageNotFoundError, version

        try:
            return version("ecgbench-elm")
        except PackageNotFoundError:  # running from a source tree that was never installed
            return "0.0.0+unknown"
    raise AttributeError(f"module 'ecgbench' has no attribute {name!r}")
