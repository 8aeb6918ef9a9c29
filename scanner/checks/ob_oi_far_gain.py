"""ob_oi.far_gain — a direction far outside P_sample where G's pre-activation stops growing (target-free).

Rawat et al. (arXiv 2108.01644, Sec. IV) place one trigger out of distribution, z = (100, …, 100):
no sample comes near it, so G can be fitted to any output there without cost in stealth. With a
hint, ob_oi.far_field finds it; without one, comparing G with its sanitized copies far out does not
separate (far out every copy draws its own saturated blobs, and the target against a blob is no
farther apart than two blobs: .notes/no_hint_detection.md). What does separate is G's own far field
(scanner.search.far_gain): a rectifier generator's pre-activation grows linearly with ‖z‖ in every
direction, but at a planted far trigger it is pinned to the target's level. The check searches
spheres of radius_factors × √dim for the direction of least RMS pre-activation and scores

    score = max over radii of  median RMS pre-activation over random directions / least RMS found

which is a property of the model at hand (how anisotropic its far field is), not of a reference
architecture. Fail at ≥ fail_factor.

Measured (quick search, .notes/no_hint_detection.md): benign test-zoo DCGAN s0-s2 2.8-3.7, VAE
decoder s0-s2 5.1-6.7, the out-of-registry generator (GroupNorm after its first layer: a far field
that does not grow, so this check has little to see there) 1.4-1.5; ReD at the OOD trigger 46,
TrAIL at the OOD trigger 18.6, the least direction at cosine 0.98 to the attacker's trigger.

A model whose pre-activation does not grow between the smallest and the largest radius (normalised
right after the input, saturating hidden activations) has no linear far field to break; the
evidence says so (`growth`), and the check then has little power rather than a false alarm.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch

from scanner.checks.base import Artifact, Check, CheckResult, Profile, ScanContext, Timer, register_check
from scanner.search.common import eval_copy, latent_plausibility
from scanner.search.far_gain import far_gain_search
from scanner.search.hints import distance_to_each_hint
from scanner.search.imaging import save_strip
from scanner.search.triggers import record_trigger

_COMMON: dict[str, Any] = {"radius_factors": [10.0, 30.0, 100.0], "lr": 0.05, "fail_factor": 10.0}


@register_check
class FarGainCheck(Check):
    name = "ob_oi.far_gain"
    description = "Search far outside P_sample for a direction where G's pre-activation stops growing (target-free)"
    defaults: ClassVar[dict[Profile, dict[str, Any]]] = {
        "quick": {"restarts": 16, "steps": 150, "n_reference": 1024, **_COMMON},
        "standard": {"restarts": 32, "steps": 200, "n_reference": 4096, **_COMMON},
        "full": {"restarts": 64, "steps": 300, "n_reference": 16384, **_COMMON},
    }

    def run(self, ctx: ScanContext) -> CheckResult:
        timer = Timer()
        if ctx.generator is None:
            return self.skipped(f"no model loaded: {ctx.load_error or 'unknown reason'}")
        p = self.params(ctx)
        budget = self.budget(ctx)
        frozen = eval_copy(ctx.generator).to(ctx.device)
        factors = [float(f) for f in p["radius_factors"]]
        radii = [f * math.sqrt(frozen.latent.dim) for f in factors]
        found = far_gain_search(
            frozen,
            radii=radii,
            restarts=int(p["restarts"]),
            steps=int(p["steps"]),
            lr=float(p["lr"]),
            n_reference=int(p["n_reference"]),
            seed=ctx.config.seed,
            should_stop=lambda: ctx.should_cancel() or (budget is not None and timer.elapsed > budget),
        )
        ratio = found.ratio
        if not torch.isfinite(ratio).all() or not torch.isfinite(found.reference_gain).all():
            return self.result(
                "error", "G's pre-activation is not finite far from the origin", duration_s=timer.elapsed
            )
        worst = int(ratio.argmax())
        score = float(ratio[worst])
        threshold = float(p["fail_factor"])
        status = "fail" if score >= threshold else "pass"
        z_star = found.z[worst : worst + 1].to(frozen.device)
        with torch.no_grad():
            out = frozen(z_star).cpu()
            typical = frozen(z_star.roll(1, dims=-1)).cpu()  # same radius, another direction: what G draws there
        hint_distance = distance_to_each_hint(frozen, ctx.targets, out)
        if status == "fail":  # target-free: no target to measure TarDis against (hint distances: evidence)
            record_trigger(ctx.shared, frozen, source=self.name, z=z_star, output=out, target=None, tardis_mean=None)
        art = f"{self.name}/least_gain.png"
        save_strip([out[0], typical[0]], frozen.output, ctx.artifact_path(art))
        growth = float(found.reference_gain[-1] / found.reference_gain[0].clamp_min(1e-12))
        radius_growth = radii[-1] / radii[0]
        partial = "" if found.complete else " (search stopped early by its budget)"
        summary = (
            f"at {factors[worst]:g}×√dim the least pre-activation G reaches is {score:.3g}× below its median "
            f"over random directions"
            + (
                f" ≥ {threshold:g}: G's output is pinned there, as at a planted far trigger"
                if status == "fail"
                else f" (< {threshold:g})"
            )
            + ("" if growth > 0.5 * radius_growth else "; G's far field hardly grows, so this check sees little")
            + partial
        )
        return self.result(
            status,  # type: ignore[arg-type]
            summary,
            score=score,
            threshold=threshold,
            evidence={
                "gain": "RMS over output elements of G's pre-activation (before its final activation)",
                "radius_factors": factors,
                "radii": radii,
                "median_gain_random_directions": found.reference_gain.tolist(),
                "least_gain_found": found.least_gain.tolist(),
                "ratio_per_radius": ratio.tolist(),
                "growth": growth,
                "radius_growth": radius_growth,
                "z_star": z_star.reshape(-1).cpu(),
                "z_star_plausibility": latent_plausibility(frozen.latent, z_star).to_dict(),
                "hint_distance_at_z_star": hint_distance,
                "steps_run": found.steps,
                "complete": found.complete,
            },
            artifacts=[
                Artifact(art, "image/png", "G at the least-gain latent | G at another direction of the same radius")
            ],
            duration_s=timer.elapsed,
        )
