"""Robust location and scale of a layer's per-unit values, shared by the checks that flag outlying
units (static.bias_outliers, dynamic.sensitivity) and by sanitization, which pulls such units back
into their layer's bulk — one definition, so "outlier" means the same thing in both places."""

from __future__ import annotations

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


def bonferroni_threshold(n_tests: int, alpha: float) -> float:
    """Two-sided Gaussian quantile at family-wise error alpha over n_tests."""
    return float(stats.norm.isf(alpha / (2 * max(n_tests, 1))))
