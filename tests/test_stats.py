"""Intervals and paired tests on data with a known answer: a real difference, and none."""

from __future__ import annotations

import math

import numpy as np

from mllm_da.stats import mean_interval, paired_comparison


def test_interval_covers_the_mean_and_shrinks_with_more_values():
    rng = np.random.default_rng(1)
    few = mean_interval(list(rng.normal(50, 5, 5)))
    many = mean_interval(list(rng.normal(50, 5, 200)))
    assert few.low < few.mean < few.high and many.low < 50 < many.high
    assert (many.high - many.low) < (few.high - few.low)
    assert mean_interval([3.0, 3.0, 3.0]).format() == "3.00 [3.00, 3.00]"
    single = mean_interval([7.0])
    assert single.n == 1 and math.isnan(single.low) and single.format() == "7.00"
    assert mean_interval([]).format() == "n/a"


def test_a_real_paired_difference_is_found_and_none_is_not():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 2, 400).astype(float)
    better = a.copy()
    flip = rng.random(400) < 0.3
    better[flip & (a == 0)] = 1.0  # b fixes ~30 % of a's wrong rows, breaks none
    found = paired_comparison(list(a), list(better))
    assert found.difference.low > 0 and found.p_permutation < 0.01 and found.p_mcnemar < 0.01
    assert found.only_a == 0 and found.only_b == int(np.sum(better != a))
    noise = rng.integers(0, 2, 400).astype(float)
    same = paired_comparison(list(a), list(noise))  # independent coin flips: no true difference
    assert same.difference.low < 0 < same.difference.high and same.p_permutation > 0.05
    identical = paired_comparison(list(a), list(a))
    assert identical.p_permutation == 1.0 and identical.p_mcnemar == 1.0


def test_continuous_scores_get_no_mcnemar():
    result = paired_comparison([0.2, 0.5, 0.9, 0.4], [0.3, 0.6, 0.95, 0.5])
    assert result.p_mcnemar is None and result.difference.mean > 0
