"""Uncertainty for sweep results: a mean with its bootstrap interval, and paired comparisons on the same rows.

Thin wrappers over ``scipy.stats`` so that every report says the same thing the same way: intervals are 95 %
percentile bootstraps with a fixed seed (reproducible tables); two conditions scored on the same benchmark rows are
compared row by row (a paired bootstrap interval of the mean difference and a sign-flip permutation test), and
right/wrong scores additionally by McNemar's exact test on the discordant rows.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

CONFIDENCE = 0.95
RESAMPLES = 9999
SEED = 0


@dataclass(frozen=True)
class Interval:
    """A mean over ``n`` values and its bootstrap interval (NaN bounds when there is one value or none)."""

    mean: float
    low: float
    high: float
    n: int

    def format(self, digits: int = 2) -> str:
        if self.n == 0 or math.isnan(self.mean):
            return "n/a"
        if math.isnan(self.low):
            return f"{self.mean:.{digits}f}"
        return f"{self.mean:.{digits}f} [{self.low:.{digits}f}, {self.high:.{digits}f}]"


@dataclass(frozen=True)
class PairedComparison:
    """``b - a`` over rows scored under both conditions: mean difference, its interval, and two p-values."""

    difference: Interval
    p_permutation: float
    p_mcnemar: float | None  # only when every score is 0 or 1 (right/wrong)
    only_a: int | None = None  # rows right under a only (McNemar's discordant counts)
    only_b: int | None = None


def mean_interval(values: Sequence[float], confidence: float = CONFIDENCE, seed: int = SEED) -> Interval:
    """The mean of ``values`` (NaNs dropped) with a percentile bootstrap interval."""
    data = np.asarray([v for v in values if not math.isnan(v)], dtype=float)
    if data.size == 0:
        return Interval(math.nan, math.nan, math.nan, 0)
    mean = float(data.mean())
    if data.size == 1:
        return Interval(mean, math.nan, math.nan, 1)
    if np.all(data == data[0]):  # no spread: the interval is the value itself
        return Interval(mean, mean, mean, int(data.size))
    result = stats.bootstrap(
        (data,),
        np.mean,
        confidence_level=confidence,
        n_resamples=RESAMPLES,
        method="percentile",
        random_state=np.random.default_rng(seed),
    )
    ci = result.confidence_interval
    return Interval(mean, float(ci.low), float(ci.high), int(data.size))


def paired_comparison(
    a: Sequence[float], b: Sequence[float], confidence: float = CONFIDENCE, seed: int = SEED
) -> PairedComparison:
    """Compare two conditions on the same rows (``a[i]`` and ``b[i]`` score row ``i``)."""
    if len(a) != len(b):
        raise ValueError(f"paired scores need the same rows: {len(a)} against {len(b)}")
    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    keep = ~(np.isnan(x) | np.isnan(y))
    x, y = x[keep], y[keep]
    difference = mean_interval(list(y - x), confidence, seed)
    if x.size == 0 or np.all(x == y):
        p_perm = 1.0
    else:
        test = stats.permutation_test(
            (x, y),
            lambda u, v: np.mean(v - u),
            permutation_type="samples",
            n_resamples=RESAMPLES,
            alternative="two-sided",
            random_state=np.random.default_rng(seed),
        )
        p_perm = float(test.pvalue)
    binary = x.size > 0 and set(np.unique(np.concatenate([x, y]))) <= {0.0, 1.0}
    if not binary:
        return PairedComparison(difference, p_perm, None)
    only_a = int(np.sum((x == 1) & (y == 0)))
    only_b = int(np.sum((x == 0) & (y == 1)))
    p_mcnemar = float(stats.binomtest(only_a, only_a + only_b, 0.5).pvalue) if only_a + only_b else 1.0
    return PairedComparison(difference, p_perm, p_mcnemar, only_a, only_b)
