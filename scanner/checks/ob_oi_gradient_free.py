"""ob_oi.gradient_free — CMA-ES ReconD, the fallback of optimisation-based output inspection
(Rawat et al. arXiv 2108.01644, Sec. 5.3) when gradients cannot be trusted.

An attacker can hide a target from ob_oi.reconstruction by obfuscating ∂G/∂z (NaN/Inf, random
or rounding ops). This check probes the gradient itself (and reads dynamic.gradient_health when
it ran); when gradients are unhealthy — or `always_run` is set — it minimises ||G(z) − x_t||²
for each hint and its negative controls with CMA-ES and judges the ratio as
ob_oi.reconstruction does (fail at ≤ fail_ratio × the most reconstructable control).
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

from scanner.checks.base import Artifact, Check, CheckResult, Profile, ScanContext, Timer, register_check
from scanner.search.cmaes import cma_reconstruct, gradient_probe
from scanner.search.common import eval_copy, latent_plausibility
from scanner.search.controls import judge_ratio, negative_controls
from scanner.search.hints import artifact_stem, worst_status
from scanner.search.imaging import save_strip
from scanner.search.triggers import record_trigger

_COMMON = {"sigma0": 0.5, "fail_ratio": 0.1, "warn_ratio": 0.3}


@register_check
class GradientFreeCheck(Check):
    name = "ob_oi.gradient_free"
    description = "CMA-ES ReconD when gradients are unhealthy (NaN/Inf, stochastic, obfuscated)"
    needed_for_clean = False  # a supplement to ob_oi.reconstruction; it only matters when gradients fail
    defaults: ClassVar[dict[Profile, dict[str, Any]]] = {
        "quick": {"popsize": 24, "generations": 80, "always_run": False, **_COMMON},
        "standard": {"popsize": 48, "generations": 200, "always_run": True, **_COMMON},
        "full": {"popsize": 96, "generations": 500, "always_run": True, **_COMMON},
    }

    def run(self, ctx: ScanContext) -> CheckResult:
        timer = Timer()
        if ctx.generator is None:
            return self.skipped(f"no generator: {ctx.load_error or 'model not loaded'}")
        if not ctx.targets:
            return self.skipped("no target hints: ReconD needs a target")
        p = self.params(ctx)
        frozen = eval_copy(ctx.generator)
        probe = gradient_probe(frozen, seed=ctx.config.seed)
        upstream = ctx.results.get("dynamic.gradient_health")
        upstream_bad = upstream is not None and upstream.status in ("warn", "fail")
        unhealthy = not probe["healthy"] or upstream_bad
        evidence: dict[str, Any] = {
            "gradient_probe": probe,
            "dynamic.gradient_health": upstream.status if upstream is not None else None,
        }
        if not unhealthy and not p["always_run"]:
            return self.result(
                "pass",
                "gradients are healthy: ob_oi.reconstruction's gradient search stands; CMA-ES not needed",
                evidence=evidence,
                duration_s=timer.elapsed,
            )

        stop = self.stopper(ctx, timer)

        numel = frozen.output.numel
        per_hint: list[dict[str, Any]] = []
        artifacts: list[Artifact] = []
        statuses: list[str] = []
        best_score, best_threshold = math.inf, float(p["fail_ratio"])
        for t, hint in enumerate(ctx.targets):
            run = {"popsize": int(p["popsize"]), "generations": int(p["generations"]), "sigma0": float(p["sigma0"])}
            res = cma_reconstruct(frozen, hint.tensor, seed=ctx.config.seed, should_stop=stop, **run)
            controls = {
                c.name: cma_reconstruct(frozen, c.tensor, seed=ctx.config.seed, should_stop=stop, **run).best_sum
                / numel
                for c in negative_controls(hint.tensor.float().cpu(), frozen.output)
            }
            value = res.best_sum / numel
            if controls and math.isfinite(value):
                j = judge_ratio(value, min(controls.values()), fail_ratio=p["fail_ratio"], warn_ratio=p["warn_ratio"])
                status, score = j.status, j.score
            else:
                status, score = ("warn" if math.isfinite(value) else "error"), math.nan
            art = f"{self.name}/{artifact_stem(t, hint.name)}_cma.png"
            save_strip([hint.tensor.cpu(), res.best_output], frozen.output, ctx.artifact_path(art))
            artifacts.append(Artifact(art, "image/png", f"target '{hint.name}' | G(z*) found by CMA-ES"))
            per_hint.append(
                {
                    "target": hint.name,
                    "status": status,
                    "recon_mean": value,
                    "recon_sum": res.best_sum,
                    "ratio_to_controls": score,
                    "negative_controls_recon_mean": controls,
                    "evaluations": res.evaluations,
                    "generations": res.generations,
                    "z_star": res.best_z.reshape(-1),
                    "z_star_plausibility": latent_plausibility(frozen.latent, res.best_z).to_dict(),
                }
            )
            if status == "fail":
                record_trigger(
                    ctx.shared,
                    frozen,
                    source=self.name,
                    z=res.best_z,
                    output=res.best_output,
                    target=hint.name,
                    tardis_mean=value,
                )
            statuses.append(status)
            if math.isfinite(score):
                best_score = min(best_score, score)
        status = "error" if "error" in statuses else worst_status(statuses)
        reason = "gradients unhealthy" if unhealthy else "always_run"
        flagged = [h for h in per_hint if h["status"] in ("warn", "fail")]
        summary = f"CMA-ES ({reason}): " + (
            "target(s) reconstructable far beyond their controls: "
            + ", ".join(f"{h['target']} ({h['recon_mean']:.3g}/element)" for h in flagged)
            if flagged
            else f"no target reconstructable beyond its controls (min ratio {best_score:.3g})"
        )
        evidence.update({"reason": reason, "recon": "output space; recon_mean = sum / elements", "targets": per_hint})
        return self.result(
            status,  # type: ignore[arg-type]
            summary,
            score=best_score if math.isfinite(best_score) else None,
            threshold=best_threshold,
            evidence=evidence,
            artifacts=artifacts,
            duration_s=timer.elapsed,
        )
