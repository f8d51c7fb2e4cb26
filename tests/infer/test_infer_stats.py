"""Bootstrap, paired tests and run summaries on cases with known answers."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import binomtest

from ecgbench.infer import stats


def _pairs(only_a: int, only_b: int, both: int = 5, neither: int = 3) -> tuple[list[bool], list[bool]]:
    a = [True] * only_a + [False] * only_b + [True] * both + [False] * neither
    b = [False] * only_a + [True] * only_b + [True] * both + [False] * neither
    return a, b


def test_mcnemar_exact_on_a_constructed_table() -> None:
    # 1 vs 9 discordant pairs: p = 2 * (C(10,0) + C(10,1)) / 2^10 = 22 / 1024
    result = stats.mcnemar(*_pairs(1, 9))
    assert result == {"test": "mcnemar-exact", "p_value": 22 / 1024, "only_a_correct": 1, "only_b_correct": 9}
    assert result["p_value"] == pytest.approx(binomtest(1, 10, 0.5).pvalue)
    assert stats.mcnemar(*_pairs(0, 0))["p_value"] == 1.0
    assert stats.mcnemar(*_pairs(4, 4))["p_value"] == 1.0  # min(1, 2 * P(X <= 4)) for X ~ Bin(8, 1/2)


def test_mcnemar_chi_square_with_many_discordant_pairs() -> None:
    # 10 vs 30: chi2 = (|10 - 30| - 1)^2 / 40 = 9.025; for 1 degree of freedom sf(x) = erfc(sqrt(x / 2))
    result = stats.mcnemar(*_pairs(10, 30))
    assert result["test"] == "mcnemar-chi2"
    assert result["p_value"] == pytest.approx(math.erfc(math.sqrt(9.025 / 2)))


def test_holm_on_known_p_values() -> None:
    # sorted 0.005 (x4 = 0.02), 0.01 (x3 = 0.03), 0.03 (x2 = 0.06), 0.04 (x1 = 0.04 -> kept monotone: 0.06)
    assert stats.holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert stats.holm([0.2, None, 0.6]) == pytest.approx([0.4, None, 0.6])  # None passed through
    assert stats.holm([0.9, 0.8]) == [1.0, 1.0]  # capped at 1


def test_summarize_runs_t_interval() -> None:
    summary = stats.summarize_runs([1.0, 2.0, 3.0, 4.0])
    std = math.sqrt(5 / 3)
    half = 3.182446305284263 * std / 2  # t(0.975, 3 df) * s / sqrt(4)
    assert summary["n"] == 4 and summary["mean"] == 2.5 and summary["std"] == pytest.approx(std)
    assert summary["ci"] == pytest.approx([2.5 - half, 2.5 + half])
    assert stats.summarize_runs([0.7]) == {"n": 1, "mean": 0.7, "std": None, "ci": None}
    assert stats.summarize_runs([])["mean"] is None


def test_bootstrap_of_a_mean() -> None:
    rng = np.random.default_rng(0)
    values = (rng.random(400) < 0.3).astype(float)
    table = stats.bootstrap({"acc": stats.mean_statistic(values)}, 400, resamples=1000, seed=1)["acc"]
    assert table["value"] == values.mean()
    se = math.sqrt(values.mean() * (1 - values.mean()) / 400)
    assert table["stderr"] == pytest.approx(se, rel=0.1)
    low, high = table["ci"]
    assert low == pytest.approx(values.mean() - 1.96 * se, abs=0.01)
    assert high == pytest.approx(values.mean() + 1.96 * se, abs=0.01)
    again = stats.bootstrap({"acc": stats.mean_statistic(values)}, 400, resamples=1000, seed=1)["acc"]
    assert again == table  # seeded: the same numbers every time


def test_bootstrap_edge_cases() -> None:
    constant = stats.bootstrap({"x": stats.mean_statistic(np.full(20, 0.25))}, 20, resamples=50)["x"]
    assert constant["value"] == 0.25 and constant["ci"] == [0.25, 0.25]
    partial = np.array([1.0, np.nan, 0.0, np.nan, 1.0])  # NaN: the metric does not apply to the item
    assert stats.bootstrap({"x": stats.mean_statistic(partial)}, 5, resamples=20)["x"]["value"] == 2 / 3
    assert stats.bootstrap({"x": stats.mean_statistic(np.array([]))}, 0)["x"]["value"] is None


def test_paired_bootstrap_known_answers() -> None:
    rng = np.random.default_rng(5)
    base = rng.random(100)
    pairs = {
        "same": (stats.mean_statistic(base), stats.mean_statistic(base.copy())),
        "shifted": (stats.mean_statistic(base + 0.1), stats.mean_statistic(base)),
        "opposite": (stats.mean_statistic(np.ones(100)), stats.mean_statistic(np.zeros(100))),
    }
    result = stats.paired_bootstrap(pairs, 100, resamples=200, seed=0)
    assert result["same"]["difference"] == 0.0 and result["same"]["p_value"] == 1.0
    # a constant shift: every resample differs by exactly 0.1
    assert result["shifted"]["ci"] == pytest.approx([0.1, 0.1]) and result["shifted"]["p_value"] == 1 / 201
    assert result["opposite"]["difference"] == 1.0 and result["opposite"]["p_value"] == 1 / 201
    assert result["same"]["test"] == "paired-bootstrap"
