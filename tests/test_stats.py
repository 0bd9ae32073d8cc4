from __future__ import annotations

import numpy as np
import pytest

from evaluation.scorers.stats import mean_ci, paired_mean_diff_ci, paired_ratio_diff_ci, ratio_ci


def test_mean_interval_matches_the_normal_approximation_and_ignores_nan():
    x = np.random.default_rng(0).normal(2.0, 1.0, 400)
    est = mean_ci(np.append(x, np.nan))
    assert est.n == 400 and est.value == pytest.approx(x.mean())
    half = 1.96 * x.std(ddof=1) / np.sqrt(len(x))
    assert est.high - est.low == pytest.approx(2 * half, rel=0.15)
    assert est.low < est.value < est.high
    assert mean_ci(x) == mean_ci(x)  # fixed resampling seed: repeatable


def test_degenerate_rates_have_a_point_interval_and_empty_input_is_nan():
    est = mean_ci(np.zeros(30))
    assert (est.value, est.low, est.high, est.n) == (0.0, 0.0, 0.0, 30)
    assert np.isnan(mean_ci([np.nan]).value) and mean_ci([]).n == 0


def test_ratio_is_sum_over_sum_not_mean_of_ratios():
    errors, words = np.array([1, 0, 10]), np.array([10, 10, 20])
    est = ratio_ci(errors, words)
    assert est.value == pytest.approx(11 / 40)
    assert est.low <= est.value <= est.high


def test_paired_difference_is_tighter_than_the_unpaired_spread():
    rng = np.random.default_rng(1)
    hard = rng.uniform(0, 1, 200)  # item difficulty shared by both systems
    a = hard + 0.05 + rng.normal(0, 0.02, 200)
    b = hard + rng.normal(0, 0.02, 200)
    d = paired_mean_diff_ci(a, b)
    assert d.low > 0.04 and d.high < 0.06  # unpaired intervals of a and b overlap almost entirely
    assert mean_ci(a).low < mean_ci(b).high
    same = paired_ratio_diff_ci([1, 2, 3], [10, 10, 10], [1, 2, 3], [10, 10, 10])
    assert same.value == 0.0 and same.low <= 0 <= same.high
