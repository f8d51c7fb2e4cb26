"""ecgbench: train and evaluate ECG-language models."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("ecgbench-elm")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"
