"""The outlier threshold of a robust z among few values (scanner.analysis.robust.outlier_threshold):
static.bias_outliers and dynamic.sensitivity promise a family-wise false-alarm rate of alpha on
benign (near-Gaussian) statistics, also for the narrow layers and few samples real models have."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from scanner.analysis.robust import outlier_threshold, robust_z


@pytest.mark.parametrize(("n", "alpha"), [(8, 0.05), (16, 0.05), (32, 0.05), (64, 0.01)])
def test_false_alarms_among_few_gaussian_values_stay_within_alpha(n: int, alpha: float) -> None:
    """20000 layers of n Gaussian values: a layer with any |robust z| beyond the threshold (alpha over
    the layer's n units) is a false alarm. The Gaussian quantile raised 3-5× alpha; the threshold
    keeps the rate at most alpha and not absurdly below it (the check must keep its power)."""
    values = np.random.default_rng(0).standard_normal((20000, n))
    max_z = np.abs(np.stack([robust_z(row) for row in values])).max(1)
    rate = float((max_z > outlier_threshold(n, n, alpha)).mean())
    assert alpha / 5 <= rate <= alpha, rate
    gaussian_rate = float((max_z > stats.norm.isf(alpha / (2 * n))).mean())
    assert gaussian_rate > 2 * alpha  # why the Gaussian quantile is not used


def test_the_threshold_tends_to_the_gaussian_quantile_for_many_values() -> None:
    gaussian = stats.norm.isf(0.001 / (2 * 1592))
    assert outlier_threshold(100_000, 1592, 0.001) == pytest.approx(gaussian, rel=0.01)
    assert outlier_threshold(16, 1592, 0.001) > 4 * gaussian > outlier_threshold(1568, 1592, 0.001)
