from __future__ import annotations

import os

import pytest

# Tests never reach a model hub; fail fast instead of hanging on a network call.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")


@pytest.fixture(autouse=True)
def _no_ecgbench_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """A developer's ECGBENCH_* variables must not change what the tests see."""
    for name in list(os.environ):
        if name.startswith("ECGBENCH_") and name != "ECGBENCH_ASSETS":
            monkeypatch.delenv(name)
