"""Confidence intervals: 95% bootstrap intervals for means, rates and ratios, and paired differences.

The resampling unit is the **test item**, not the row: with several seeds per item, the seeds of
one item are not independent samples of the test set, so callers first aggregate rows per item
(mean over seeds, or summed numerators/denominators for a ratio such as corpus WER) and these
functions resample items. That is the cluster bootstrap; with one seed it is the plain bootstrap.

Intervals are scipy's percentile bootstrap (``scipy.stats.bootstrap``, 2,000 resamples, fixed
seed, so a table always gives the same interval). Percentile rather than BCa because rates are
often all-zero or all-one, where BCa is undefined; the percentile interval is then the point.
A paired comparison resamples the same items in both runs, which is what makes the difference's
interval narrow enough to be useful (two checkpoints on one test set share its hard items).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np
from scipy.stats import bootstrap

N_RESAMPLES = 2000
CONFIDENCE = 0.95


@dataclass(frozen=True)
class Estimate:
    """A point estimate with its 95% interval and the number of items it rests on."""

    value: float
    low: float
    high: float
    n: int

    def to_json(self, digits: int = 4) -> dict:
        return {
            k: (round(v, digits) if isinstance(v, float) and np.isfinite(v) else v)
            for k, v in asdict(self).items()
        }

    def __str__(self) -> str:
        return f"{self.value:.4g} [{self.low:.4g}, {self.high:.4g}] (n={self.n})"


NAN_ESTIMATE = Estimate(float("nan"), float("nan"), float("nan"), 0)


def _interval(samples: tuple[np.ndarray, ...], statistic: Callable, seed: int) -> tuple[float, float]:
    n = len(samples[0])
    if n < 2 or all(np.all(s == s[0]) for s in samples):
        value = float(statistic(*samples))
        return value, value
    res = bootstrap(
        samples,
        statistic,
        paired=True,
        vectorized=True,
        n_resamples=N_RESAMPLES,
        confidence_level=CONFIDENCE,
        method="percentile",
        rng=np.random.default_rng(seed),
    )
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def _finite(*arrays: np.ndarray) -> tuple[np.ndarray, ...]:
    arrays = tuple(np.asarray(a, dtype=np.float64) for a in arrays)
    keep = np.logical_and.reduce([np.isfinite(a) for a in arrays])
    return tuple(a[keep] for a in arrays)


def mean_ci(values, seed: int = 0) -> Estimate:
    """Mean of per-item values (NaN = not measured, left out) with its bootstrap interval.
    For a rate, pass 0/1 values (or per-item shares over seeds)."""
    (x,) = _finite(values)
    if len(x) == 0:
        return NAN_ESTIMATE
    low, high = _interval((x,), lambda a, axis=-1: np.mean(a, axis=axis), seed)
    return Estimate(float(x.mean()), low, high, len(x))


def _ratio(num, den, axis=-1):
    return np.sum(num, axis=axis) / np.sum(den, axis=axis)


def ratio_ci(numerators, denominators, seed: int = 0) -> Estimate:
    """sum(num) / sum(den) over items (e.g. corpus WER = errors / reference words), items resampled."""
    num, den = _finite(numerators, denominators)
    if len(num) == 0 or den.sum() <= 0:
        return NAN_ESTIMATE
    low, high = _interval((num, den), _ratio, seed)
    return Estimate(float(num.sum() / den.sum()), low, high, len(num))


def paired_mean_diff_ci(a, b, seed: int = 0) -> Estimate:
    """mean(a - b) over items measured in both runs (aligned arrays), items resampled jointly."""
    x, y = _finite(a, b)
    if len(x) == 0:
        return NAN_ESTIMATE
    low, high = _interval((x, y), lambda p, q, axis=-1: np.mean(p - q, axis=axis), seed)
    return Estimate(float(np.mean(x - y)), low, high, len(x))


def paired_ratio_diff_ci(num_a, den_a, num_b, den_b, seed: int = 0) -> Estimate:
    """sum(num_a)/sum(den_a) - sum(num_b)/sum(den_b) over the same items, resampled jointly."""
    arrays = _finite(num_a, den_a, num_b, den_b)
    if len(arrays[0]) == 0 or arrays[1].sum() <= 0 or arrays[3].sum() <= 0:
        return NAN_ESTIMATE

    def diff(na, da, nb, db, axis=-1):
        return _ratio(na, da, axis) - _ratio(nb, db, axis)

    low, high = _interval(arrays, diff, seed)
    return Estimate(float(diff(*arrays)), low, high, len(arrays[0]))
