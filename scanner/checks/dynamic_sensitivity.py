"""dynamic.sensitivity — output change under small input and weight perturbations (DMI).

Reference scales come from the model itself. Let D be the median distance between outputs of
two independent latents (pre-activation). For a *linear* generator, moving z by δ along a random
unit direction changes the output by D·δ / (σ_z·√(2d)) on average, so

    ρ(z) = ||G(z + δu) − G(z)|| · σ_z·√(2d) / (δ · D)

is ≈ 1; smooth generators stay O(1). A backdoor that switches behaviour in a small latent region
(computation bypass, a sharply tuned trigger) makes G locally steep: samples with ρ far above
their peers are outliers. For weights, each layer's weights get relative Gaussian noise ε
(ε × the layer's weight RMS) and

    κ(layer) = RMS_z ||G_perturbed(z) − G(z)|| / (ε · RMS_z ||G(z)||)

is the relative output change per relative weight change. Rectifier networks are positively
homogeneous in each layer's weights and normalisation layers are scale-invariant, so κ ≤ O(1)
for every layer (layers before a normalisation or a modulation can be far *below* 1, so low
values are not compared across layers); κ above the hard bound means the output leans on a few
weights in an unusual way. Input outliers use robust z-scores of log ρ with a Bonferroni
threshold at α = 0.001 for a robust z among that many samples (`outlier_threshold`); both ρ and
κ also have a hard bound of 1e3 (a thousand times the reference), and a median ρ above 1e2 means
G is rough everywhere. The check only warns.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from scanner.analysis.robust import outlier_threshold, robust_z
from scanner.checks.base import Check, CheckResult, ScanContext, Timer, register_check

HARD_BOUND = 1e3
# a generator whose *typical* local slope is 100× its global rate of change is rough everywhere
# (ripples, hidden high-frequency paths); smooth generators sit near the linear reference 1
GLOBAL_BOUND = 1e2


@register_check
class SensitivityCheck(Check):
    name = "dynamic.sensitivity"
    description = "Output sensitivity to small latent and weight perturbations against model-derived references"
    _p = {"input_delta": 1e-2, "weight_eps": 1e-2, "alpha": 1e-3}
    defaults = {
        "quick": {"n_samples": 32, "weight_samples": 16, **_p},
        "standard": {"n_samples": 256, "weight_samples": 64, **_p},
        "full": {"n_samples": 1024, "weight_samples": 256, **_p},
    }

    def run(self, ctx: ScanContext) -> CheckResult:
        timer = Timer()
        if ctx.generator is None:
            return self.skipped(f"no model loaded: {ctx.load_error or 'unknown reason'}")
        p = self.params(ctx)
        rng = ctx.rng(self.name)
        n = max(8, int(p["n_samples"]) // 2 * 2)
        z0 = ctx.generator.latent.sample(n, generator=rng)
        # float32 suffices: perturbations are 1% of the scales, far above rounding error
        gen = ctx.generator.copy().eval()
        dtype = next((q.dtype for q in gen.parameters() if q.is_floating_point()), torch.float32)
        z = z0.to(gen.device, dtype)
        d = z[0].numel()
        sigma = gen.latent.coordinate_std
        with torch.no_grad():
            out = gen.pre_activation(z).flatten(1)
            if not torch.isfinite(out).all():
                return self.result(
                    "warn", "non-finite outputs on P_sample; sensitivity undefined", duration_s=timer.elapsed
                )
            half = n // 2
            spread = float((out[:half] - out[half:]).norm(dim=1).median())
            if spread == 0:
                return self.result("warn", "the output does not vary with z (distance between samples is 0)",
                                   score=0.0, duration_s=timer.elapsed)  # fmt: skip
            u = torch.randn(z.shape, generator=rng, dtype=torch.float64).to(z.device, dtype)
            u = u / u.flatten(1).norm(dim=1).view(-1, *[1] * (z.dim() - 1))
            delta = float(p["input_delta"]) * sigma
            moved = gen.pre_activation(z + delta * u).flatten(1)
            rho = ((moved - out).norm(dim=1) * sigma * math.sqrt(2 * d) / (delta * spread)).cpu().numpy()
            # weight probes use a subset of the latents: one forward pass per layer
            zw, out_w = z[: int(p["weight_samples"])], out[: int(p["weight_samples"])]
            out_rms = float(out_w.norm(dim=1).pow(2).mean().sqrt())
            kappa: dict[str, float] = {}
            eps = float(p["weight_eps"])
            noise_rng = ctx.rng(self.name + ".weights")
            for layer in gen.layers():
                w = layer.weight
                saved = w.detach().clone()
                rms = float(saved.pow(2).mean().sqrt())
                noise = torch.randn(saved.shape, generator=noise_rng, dtype=torch.float64).to(w.device, w.dtype)
                w.add_(eps * rms * noise)
                changed = gen.pre_activation(zw).flatten(1)
                w.copy_(saved)
                kappa[layer.name] = float((changed - out_w).norm(dim=1).pow(2).mean().sqrt()) / (eps * out_rms)
        with np.errstate(divide="ignore"):
            log_rho = np.log(rho)
        n_finite = int(np.isfinite(log_rho).sum())
        rho_thr = outlier_threshold(n_finite, rho.size, float(p["alpha"]))  # heavy-tailed for 32 samples (quick)
        rho_z = robust_z(log_rho[np.isfinite(log_rho)]) if n_finite >= 8 else np.zeros(0)
        steep = int((rho_z > rho_thr).sum()) + int((rho > HARD_BOUND).sum())
        layer_outliers: list[str] = []
        layer_outliers += [k for k, v in kappa.items() if not v <= HARD_BOUND]
        evidence: dict[str, Any] = {
            "n_samples": n,
            "output_spread_median_distance": spread,
            "input_ratio_median": float(np.median(rho)),
            "input_ratio_max": float(np.max(rho)),
            "input_steep_samples": steep,
            "input_outlier_threshold_robust_z": rho_thr,
            "weight_ratio_per_layer": kappa,
            "weight_outlier_layers": layer_outliers,
            "hard_bound": HARD_BOUND,
        }
        rough = float(np.median(rho)) > GLOBAL_BOUND
        evidence["global_bound"] = GLOBAL_BOUND
        if steep or layer_outliers or rough:
            parts = [f"G is rough everywhere (median ratio {np.median(rho):.0f})"] if rough else []
            parts += ([f"{steep} latent(s) where G is locally steep"] if steep else []) + (
                [f"layer(s) with outlying weight sensitivity: {layer_outliers[:5]}"] if layer_outliers else []
            )
            status, summary = "warn", "; ".join(parts)
        else:
            status, summary = "pass", f"input ratio median {np.median(rho):.2f} (linear reference 1), no outlying layer"
        return self.result(status, summary, score=float(np.max(rho)), threshold=HARD_BOUND, evidence=evidence,
                           duration_s=timer.elapsed)  # fmt: skip
