"""dynamic.gradient_health — is ∂G/∂z usable for optimization-based inspection? (DMI)

OB-OI (Rawat et al. 2108.01644 §V-C) inverts the generator by gradient descent on z. An attacker
can defeat it by obfuscating gradients (Athalye et al. 2018). On sampled z we compute the
directional derivative of a fixed random projection ⟨v, G(z)⟩ (pre-activation, as the paper
works before tanh/sigmoid) and look for:

- NaN/Inf in outputs or gradients (fail);
- stochasticity: the same z twice gives a different output or gradient (fail);
- masking: autograd disagrees with central finite differences — median relative error above
  ``max_fd_error`` (fail; zero-gradient steps, detached branches, straight-through tricks);
- vanishing / exploding: the gradient scale relative to a linear reference — for a linear G,
  ``|⟨∇f, u⟩|·√d·σ_z / std(f)`` is O(1) for a random unit direction u — below 1e-3 (fail:
  the output does not move with z) or above 1e3 (warn);
- shattering: cosine similarity of the gradient at z and at a point 1e-3·σ_z·√d away below
  0.5 in median (warn; Balduzzi et al. 2017 "shattered gradients").

Runs in float64 where the model allows (see `scanner.analysis.probing.working_copy`).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from scanner.analysis.probing import working_copy
from scanner.checks.base import Check, CheckResult, ScanContext, Timer, register_check


def _projected(gen: Any, z: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return (gen.pre_activation(z).flatten(1) * v).sum(1)


def _grad(gen: Any, z: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    z = z.detach().clone().requires_grad_(True)
    f = _projected(gen, z, v)
    (g,) = torch.autograd.grad(f.sum(), z, allow_unused=True)
    if g is None:  # the output does not depend on z at all
        g = torch.zeros_like(z)
    return f.detach(), g.detach()


@register_check
class GradientHealthCheck(Check):
    name = "dynamic.gradient_health"
    description = "NaN/Inf, stochastic, masked, vanishing, exploding or shattered gradients dG/dz"
    _p = {"max_fd_error": 0.5, "vanishing": 1e-3, "exploding": 1e3, "min_cosine": 0.5}
    defaults = {
        "quick": {"n_samples": 8, **_p},
        "standard": {"n_samples": 64, **_p},
        "full": {"n_samples": 256, **_p},
    }

    def run(self, ctx: ScanContext) -> CheckResult:
        timer = Timer()
        if ctx.generator is None:
            return self.skipped(f"no model loaded: {ctx.load_error or 'unknown reason'}")
        p = self.params(ctx)
        rng = ctx.rng(self.name)
        n = max(4, int(p["n_samples"]))
        z0 = ctx.generator.latent.sample(n, generator=rng)
        gen, dtype = working_copy(ctx.generator, z0[:2])
        dev = gen.device
        z = z0.to(dev, dtype)
        d = z[0].numel()
        sigma = gen.latent.coordinate_std
        v = torch.randn(int(np.prod(gen.output.shape)), generator=rng, dtype=torch.float64).to(dev, dtype)
        v = v / v.norm()
        u = torch.randn(z.shape, generator=rng, dtype=torch.float64).to(dev, dtype)
        u = u / u.flatten(1).norm(dim=1).view(-1, *[1] * (z.dim() - 1))
        w = torch.randn(z.shape, generator=rng, dtype=torch.float64).to(dev, dtype)
        w = w / w.flatten(1).norm(dim=1).view(-1, *[1] * (z.dim() - 1))
        evidence: dict[str, Any] = {"n_samples": n, "dtype": str(dtype).replace("torch.", "")}
        problems: list[tuple[str, str]] = []  # (severity, message)

        f1, g1 = _grad(gen, z, v)
        f2, g2 = _grad(gen, z, v)
        finite = bool(torch.isfinite(f1).all() and torch.isfinite(g1).all())
        evidence["nonfinite_outputs"] = int((~torch.isfinite(f1)).sum())
        evidence["nonfinite_gradients"] = int((~torch.isfinite(g1)).sum())
        if not finite:
            problems.append(("fail", "NaN/Inf in outputs or gradients"))
        tol = 1e-9 if dtype == torch.float64 else 1e-5
        out_diff = float(((f1 - f2).abs().max() / (f1.abs().max() + 1e-30)).nan_to_num(nan=0.0))
        grad_diff = float(((g1 - g2).abs().max() / (g1.abs().max() + 1e-30)).nan_to_num(nan=0.0))
        evidence.update(repeat_output_rel_diff=out_diff, repeat_gradient_rel_diff=grad_diff)
        if out_diff > tol or grad_diff > tol:
            problems.append(("fail", "stochastic: the same z gives different outputs or gradients"))

        if finite:
            delta = (1e-4 if dtype == torch.float64 else 1e-2) * sigma
            with torch.no_grad():
                fd = (_projected(gen, z + delta * u, v) - _projected(gen, z - delta * u, v)) / (2 * delta)
            ad = (g1 * u).flatten(1).sum(1)
            spread = float(f1.std())
            floor = 1e-12 * max(spread, 1e-30) / sigma
            rel = (fd - ad).abs() / torch.maximum(torch.maximum(fd.abs(), ad.abs()), torch.tensor(floor, dtype=dtype))
            fd_err = float(rel.median())
            scale = float(ad.abs().median()) * math.sqrt(d) * sigma / spread if spread > 0 else 0.0
            fd_scale = float(fd.abs().median()) * math.sqrt(d) * sigma / spread if spread > 0 else 0.0
            evidence.update(fd_median_rel_error=fd_err, gradient_scale=scale, finite_difference_scale=fd_scale,
                            output_projection_std=spread)  # fmt: skip
            if fd_err > p["max_fd_error"]:
                problems.append(
                    (
                        "fail",
                        f"autograd disagrees with finite differences (median rel. error {fd_err:.2f}): masked",
                    )
                )
            elif spread == 0 or scale < p["vanishing"]:
                problems.append(("fail", f"vanishing gradients (scale {scale:.2e} vs linear reference 1)"))
            elif scale > p["exploding"]:
                problems.append(("warn", f"exploding gradients (scale {scale:.2e} vs linear reference 1)"))
            eps = 1e-3 * sigma * math.sqrt(d)
            _, g_near = _grad(gen, z + eps * w, v)
            cos = torch.nn.functional.cosine_similarity(g1.flatten(1), g_near.flatten(1), dim=1, eps=1e-30)
            med_cos = float(cos.median())
            evidence["neighbour_gradient_cosine_median"] = med_cos
            if g1.abs().sum() > 0 and med_cos < p["min_cosine"]:
                problems.append(("warn", f"shattered gradients (median cosine {med_cos:.2f} between neighbours)"))

        evidence["problems"] = [m for _, m in problems]
        fails = [m for s, m in problems if s == "fail"]
        warns = [m for s, m in problems if s == "warn"]
        if fails:
            status, summary = "fail", "; ".join(fails)
        elif warns:
            status, summary = "warn", "; ".join(warns)
        else:
            status, summary = "pass", "finite, deterministic gradients consistent with finite differences"
        score = evidence.get("fd_median_rel_error")
        return self.result(status, summary, score=score, threshold=p["max_fd_error"], evidence=evidence,
                           duration_s=timer.elapsed)  # fmt: skip
