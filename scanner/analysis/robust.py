"""Robust location and scale of a layer's per-unit values, shared by the checks that flag outlying
units (static.bias_outliers, dynamic.sensitivity) and by sanitization, which pulls such units back
into their layer's bulk — one definition, so "outlier" means the same thing in both places."""

from __future__ import annotations

import math

import numpy as np
from scipy import stats

MIN_UNITS = 8  # robust statistics of fewer units say nothing
MAD_TO_SIGMA = 1.4826  # makes the median absolute deviation a consistent estimate of a Gaussian σ
MEAN_ABS_DEV_TO_SIGMA = 1.2533  # the same for the mean absolute deviation


def robust_location_scale(values: np.ndarray) -> tuple[float, float]:
    """(median, robust σ): 1.4826·MAD, or 1.2533·(mean absolute deviation) when MAD is 0 (e.g. most
    biases exactly zero); σ is 0 for a constant layer."""
    med = float(np.median(values))
    dev = np.abs(values - med)
    scale = MAD_TO_SIGMA * float(np.median(dev))
    if scale == 0:
        scale = MEAN_ABS_DEV_TO_SIGMA * float(np.mean(dev))
    return med, scale


def robust_z(values: np.ndarray) -> np.ndarray:
    """(x − median) / robust σ (see `robust_location_scale`); zeros for a constant layer."""
    med, scale = robust_location_scale(values)
    if scale == 0:
        return np.zeros_like(values)
    return (values - med) / scale


# The MAD's asymptotic variance is 1.36 σ²/n (Gaussian data), that of a sample SD from n / 2.72 values.
MAD_DEGREES_PER_VALUE = 1 / 2.721


def outlier_threshold(n_values: int, n_tests: int, alpha: float) -> float:
    """|robust z| beyond which one of n_values values (whose median and MAD the z is taken against)
    is an outlier at family-wise error alpha over n_tests such values (two-sided, Bonferroni).

    The median and MAD of few values are noisy, so robust z is far heavier-tailed than a Gaussian.
    Measured under a Gaussian null (4e7 values per n, numpy): P(|z| > 5) = 7.4e-3 for n = 8,
    1.4e-3 (16), 2.2e-4 (32), 3.4e-5 (64), 2.4e-6 (256), against 5.7e-7 for a Gaussian — the
    Gaussian quantile let a 16-unit layer raise false alarms ~2500× as often as alpha said. We use
    a Student t with ν = n / 2.72 degrees of freedom (the MAD's variance) scaled by √(1 + π / 2n)
    (the median's variance): it overstates the measured tail 1.5-2.5× for n ≤ 64 (a threshold a
    little high, erring toward fewer false alarms), matches it at n = 256 and tends to the Gaussian
    quantile as n grows. Thresholds at alpha 0.001 over 1592 tests: 181 (n = 8), 23.6 (16),
    9.9 (32), 6.8 (64), 5.4 (256), 5.04 (1568); Gaussian 4.98."""
    p = alpha / (2 * max(n_tests, 1))
    n = max(n_values, 2)
    return float(math.sqrt(1 + math.pi / (2 * n)) * stats.t.isf(p, n * MAD_DEGREES_PER_VALUE))
