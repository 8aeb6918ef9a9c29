"""static.bias_outliers — units whose bias or weight norm is a robust outlier in its layer (SMI).

Backdoor training that touches only some units (ReD modifying a few units, ReX adding new
ones trained separately, Rawat et al. 2108.01644 §IV) tends to leave those units with biases or
weight norms unlike their layer peers. Per layer we compute robust z-scores
``(x − median) / (1.4826 · MAD)`` of the biases and of log per-unit weight norms (the 1.4826
makes MAD a consistent estimate of a Gaussian σ; the log makes positive, skewed norms
symmetric). The threshold is set per layer at family-wise error α = 0.001, Bonferroni-corrected
over every unit tested in the model, from the null distribution of a robust z among that many
units (`scanner.analysis.robust.outlier_threshold`: the median and MAD of a 16-unit layer are
so noisy that |z| > 5 happens 2500× as often as for a Gaussian), so a benign model of any size
raises a false alarm with probability ≤ 0.1% under near-Gaussian statistics. Until stop 29 the
Gaussian quantile (4.98 on the bench DCGANs) was used for every layer: the poisoned bench
DCGAN's fresh sanitized copy warned at |z| 5.2 in a 16-unit layer (the threshold there is now
23.6). Outliers are a weak signal on their own: the check warns, it never fails.

Shared state written: ``ctx.shared["static.outlier_units"]`` = ``{layer_name: [output unit
indices]}`` (same indexing as ``static.flagged_units``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from scanner.analysis.robust import MIN_UNITS, outlier_threshold, robust_z
from scanner.checks.base import Check, CheckResult, ScanContext, Timer, register_check


@register_check
class BiasOutliersCheck(Check):
    name = "static.bias_outliers"
    description = "Robust z-scores of per-unit biases and weight norms (units unlike their layer peers)"
    needed_for_clean = True
    defaults = {"quick": {"alpha": 0.001}, "standard": {"alpha": 0.001}, "full": {"alpha": 0.001}}

    def run(self, ctx: ScanContext) -> CheckResult:
        timer = Timer()
        gen = ctx.generator
        if gen is None:
            return self.skipped(f"no model loaded: {ctx.load_error or 'unknown reason'}")
        alpha = float(self.params(ctx)["alpha"])
        series: list[tuple[str, str, np.ndarray]] = []  # (layer, what, values per out unit)
        for layer in gen.layers():
            if layer.out_units < MIN_UNITS:
                continue
            norms = layer.weight_matrix().detach().double().norm(dim=1).cpu().numpy()
            # a zero-norm (dead) unit among live ones is an extreme outlier; a layer of zeros has none
            series.append((layer.name, "log_weight_norm", np.log(norms + 1e-30)))
            if layer.bias is not None:
                series.append((layer.name, "bias", layer.bias.detach().double().cpu().numpy()))
        if not series:
            return self.skipped(f"no layer has at least {MIN_UNITS} units")
        n_tests = sum(v.size for _, _, v in series)
        per_layer: list[dict[str, Any]] = []
        outliers: dict[str, set[int]] = {}
        worst = 0.0  # the largest |z| in units of its layer's threshold
        for layer_name, what, values in series:
            finite = np.isfinite(values)
            z = np.full(values.shape, np.inf)
            if finite.any():
                z[finite] = robust_z(values[finite])
            z[np.isnan(values)] = np.inf  # NaN weights: certainly not like the peers
            absz = np.abs(z)
            threshold = outlier_threshold(int(finite.sum()), n_tests, alpha)
            idx = np.flatnonzero(absz > threshold)
            worst = max(worst, float(absz.max()) / threshold)
            if idx.size:
                outliers.setdefault(layer_name, set()).update(idx.tolist())
            per_layer.append(
                {
                    "layer": layer_name,
                    "statistic": what,
                    "units": int(values.size),
                    "max_abs_z": float(absz.max()),
                    "threshold_abs_z": threshold,
                    "outliers": idx[:256],
                    "outlier_z": z[idx[:256]],
                }
            )
        shared = {k: sorted(v) for k, v in outliers.items()}
        ctx.shared["static.outlier_units"] = shared
        n_out = sum(len(v) for v in shared.values())
        evidence = {"alpha": alpha, "units_tested": n_tests, "layers": per_layer}
        if n_out:
            status = "warn"
            summary = (
                f"{n_out} unit(s) with outlying bias/weight norm in {len(shared)} layer(s) "
                f"(|z| up to {worst:.3g}× its layer's threshold)"
            )
        else:
            status = "pass"
            summary = f"no unit's bias or weight norm exceeds its layer's |z| threshold (largest: {worst:.3g}× it)"
        # score: the largest |z| over its layer's threshold (layers of different sizes have different thresholds)
        return self.result(status, summary, score=worst, threshold=1.0, evidence=evidence, duration_s=timer.elapsed)
