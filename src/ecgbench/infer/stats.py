"""Uncertainty and paired tests for evaluation metrics.

Every metric is a *weighted statistic*: a function from item weights (shape (B, n)) to B metric values. The
observed corpus is one row of ones; a bootstrap resample is one row of multinomial counts (how often each
item was drawn). Mean metrics, corpus metrics (BLEU from summed n-gram counts, macro F1 from summed
confusion counts) and AUROC all fit, so a corpus metric is resampled as a corpus, never as an average of
per-item values.

- ``bootstrap``: percentile intervals and standard errors for several metrics from one set of resamples.
- ``paired_bootstrap`` / ``mcnemar``: two systems on the same items; ``holm`` corrects over metrics.
- ``summarize_runs``: mean, standard deviation and a t-interval over seeds or folds.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
from scipy import stats as scipy_stats

WeightedStatistic = Callable[[np.ndarray], np.ndarray]

RESAMPLES = 1000
CONFIDENCE = 0.95
SEED = 0
EXACT_MCNEMAR_BELOW = 25  # discordant pairs; below this the chi-square approximation is poor
_CHUNK = 100  # resamples per block of weights: bounds memory at 100 x n floats


def mean_statistic(values: np.ndarray) -> WeightedStatistic:
    """The weighted mean of per-item values; NaN values are items the metric does not apply to."""
    values = np.asarray(values, dtype=np.float64)
    applies = np.isfinite(values)
    filled = np.where(applies, values, 0.0)

    def statistic(weights: np.ndarray) -> np.ndarray:
        weights = np.atleast_2d(weights)
        mass = weights @ applies.astype(np.float64)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(mass > 0, (weights @ filled) / mass, np.nan)

    return statistic


def totals_statistic(
    item_stats: np.ndarray, finalize: Callable[[np.ndarray], np.ndarray]
) -> WeightedStatistic:
    """A corpus metric computed by ``finalize`` from the weighted sums of per-item statistics (n, k)."""
    item_stats = np.asarray(item_stats, dtype=np.float64)

    def statistic(weights: np.ndarray) -> np.ndarray:
        return finalize(np.atleast_2d(weights) @ item_stats)

    return statistic


def resample_weights(n: int, resamples: int, seed: int) -> Iterator[np.ndarray]:
    """Bootstrap resamples of n items as blocks of multinomial counts (each row sums to n)."""
    rng = np.random.default_rng(seed)
    done = 0
    while done < resamples:
        size = min(_CHUNK, resamples - done)
        yield rng.multinomial(n, np.full(n, 1.0 / n), size=size).astype(np.float64)
        done += size


def _interval(values: np.ndarray, confidence: float) -> tuple[list[float] | None, float | None]:
    finite = values[np.isfinite(values)]
    if finite.size < 2:
        return None, None
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(finite, [tail, 100 - tail])
    return [float(low), float(high)], float(np.std(finite, ddof=1))


def finite_or_none(x: float) -> float | None:
    """JSON has no NaN: an undefined metric value is None."""
    return None if not math.isfinite(x) else float(x)


def bootstrap(
    statistics: Mapping[str, WeightedStatistic],
    n: int,
    *,
    resamples: int = RESAMPLES,
    confidence: float = CONFIDENCE,
    seed: int = SEED,
) -> dict[str, dict[str, Any]]:
    """For each metric: its value on the corpus, a percentile bootstrap interval and the bootstrap standard
    error, from the same ``resamples`` resamples of the n items (``ci``/``stderr`` None when undefined)."""
    if n == 0:
        return {name: {"value": None, "ci": None, "stderr": None} for name in statistics}
    full = np.ones((1, n))
    drawn: dict[str, list[np.ndarray]] = {name: [] for name in statistics}
    for weights in resample_weights(n, resamples, seed) if resamples > 0 else ():
        for name, statistic in statistics.items():
            drawn[name].append(statistic(weights))
    out = {}
    for name, statistic in statistics.items():
        value = finite_or_none(float(statistic(full)[0]))
        ci, stderr = _interval(np.concatenate(drawn[name]), confidence) if drawn[name] else (None, None)
        out[name] = {"value": value, "ci": ci if value is not None else None, "stderr": stderr}
    return out


def paired_bootstrap(
    pairs: Mapping[str, tuple[WeightedStatistic, WeightedStatistic]],
    n: int,
    *,
    resamples: int = RESAMPLES,
    confidence: float = CONFIDENCE,
    seed: int = SEED,
) -> dict[str, dict[str, Any]]:
    """For each metric, the difference a - b of two systems on the same n items, with a bootstrap interval and
    a two-sided p-value; every metric is scored on the same resamples, both systems on each.

    The p-value tests "no difference" with the resampled differences shifted to mean zero (the null
    distribution): the share of them at least as far from zero as the observed difference, the observed one
    counted too ((k + 1) / (B + 1)), so it is never 0.
    """
    full = np.ones((1, n))
    drawn: dict[str, list[np.ndarray]] = {name: [] for name in pairs}
    for weights in resample_weights(n, resamples, seed) if resamples > 0 and n > 0 else ():
        for name, (statistic_a, statistic_b) in pairs.items():
            drawn[name].append(statistic_a(weights) - statistic_b(weights))
    out = {}
    for name, (statistic_a, statistic_b) in pairs.items():
        observed = float(statistic_a(full)[0] - statistic_b(full)[0]) if n > 0 else math.nan
        diffs = np.concatenate(drawn[name]) if drawn[name] else np.empty(0)
        finite = diffs[np.isfinite(diffs)]
        ci, _ = _interval(finite, confidence)
        p_value = None
        if math.isfinite(observed) and finite.size:
            extreme = np.abs(finite - finite.mean()) >= abs(observed) - 1e-12
            p_value = (int(extreme.sum()) + 1) / (finite.size + 1)
        out[name] = {
            "test": "paired-bootstrap",
            "difference": finite_or_none(observed),
            "ci": ci if p_value is not None else None,
            "p_value": p_value,
        }
    return out


def mcnemar(correct_a: Sequence[bool] | np.ndarray, correct_b: Sequence[bool] | np.ndarray) -> dict[str, Any]:
    """McNemar's test of two systems' right/wrong on the same items, two-sided: the exact binomial test when
    there are fewer than ``EXACT_MCNEMAR_BELOW`` discordant pairs, else chi-square with continuity
    correction."""
    a = np.asarray(correct_a, dtype=bool)
    b = np.asarray(correct_b, dtype=bool)
    if a.shape != b.shape:
        raise ValueError("McNemar needs the same items for both systems")
    only_a, only_b = int((a & ~b).sum()), int((~a & b).sum())
    discordant = only_a + only_b
    test, p_value = "mcnemar-exact", 1.0
    if discordant >= EXACT_MCNEMAR_BELOW:
        test = "mcnemar-chi2"
        p_value = float(scipy_stats.chi2.sf((abs(only_a - only_b) - 1) ** 2 / discordant, 1))
    elif discordant > 0:
        p_value = min(1.0, 2 * float(scipy_stats.binom.cdf(min(only_a, only_b), discordant, 0.5)))
    return {"test": test, "p_value": p_value, "only_a_correct": only_a, "only_b_correct": only_b}


def holm(p_values: Sequence[float | None]) -> list[float | None]:
    """Holm-Bonferroni adjusted p-values (step-down, monotone), in the input order; None stays None."""
    indexed = sorted((p, i) for i, p in enumerate(p_values) if p is not None)
    m = len(indexed)
    adjusted: list[float | None] = [None] * len(p_values)
    running = 0.0
    for rank, (p, i) in enumerate(indexed):
        running = max(running, min(1.0, (m - rank) * p))
        adjusted[i] = running
    return adjusted


def summarize_runs(values: Sequence[float], confidence: float = CONFIDENCE) -> dict[str, Any]:
    """Mean, sample standard deviation and the t-interval of the mean over independent runs (seeds, folds).

    With few runs the interval is honest but wide (two runs: t = 12.7); ``n`` says how many there were.
    """
    x = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=np.float64)
    if x.size == 0:
        return {"n": 0, "mean": None, "std": None, "ci": None}
    mean = float(x.mean())
    if x.size < 2:
        return {"n": 1, "mean": mean, "std": None, "ci": None}
    std = float(x.std(ddof=1))
    half = float(scipy_stats.t.ppf((1 + confidence) / 2, x.size - 1)) * std / math.sqrt(x.size)
    return {"n": int(x.size), "mean": mean, "std": std, "ci": [mean - half, mean + half]}
