"""ob_oi.far_gain — a direction far outside P_sample where G's pre-activation stops growing (target-free).

Rawat et al. (arXiv 2108.01644, Sec. IV) place one trigger out of distribution, z = (100, …, 100):
no sample comes near it, so G can be fitted to any output there without cost in stealth. With a
hint, ob_oi.far_field finds it; without one, comparing G with its sanitized copies far out does not
separate (far out every copy draws its own saturated blobs, and the target against a blob is no
farther apart than two blobs: .notes/no_hint_detection.md). What does separate is G's own far field
(scanner.search.far_gain): a rectifier generator's pre-activation grows linearly with ‖z‖ in every
direction, but at a planted far trigger it is pinned to the target's level. The check searches
spheres of radius_factors × √dim for the direction u* of least RMS pre-activation ("gain") and asks two
things of it, at each radius R:

    ratio   = median gain over random directions at R / gain at R·u*   (how far below its sphere)
    deficit = (gain at far_factor·R·u*) / far_factor / gain at R·u*      (how far below the straight line
              its own ray settles on far out; ≈ 1 for a piecewise-linear far field)
    score   = max over radii of min(√(ratio · deficit), fail_factor · deficit / min_deficit)

A plain but anisotropic generator has a low-gain direction that still grows along its ray (the bench
zoo's VAE decoders: ratio 12-17, deficit ≈ 1); a plant is low on both. Both are properties of the
model at hand, not of a reference architecture. Fail at score ≥ fail_factor: at one radius the geometric
mean clears fail_factor *and* the deficit clears min_deficit (the min puts both margins in the score's
units). The deficit's own line is what lets the check into the profiles: GAN training makes the far field
anisotropic (ratio up to 29 after 50-100 epochs, enough to carry the geometric mean over 6 by itself) but
leaves its rays straight (deficit ≤ 1.7 on every benign model measured). min_deficit 2.2 is the geometric
middle of 1.81 (the highest non-backdoored deficit measured: a sanitized copy, below) and 2.68 (the lowest
deficit of a plant this rule catches at its scoring radius).

The deficit is judged against the ray's far asymptote, not against a smaller radius: on the typical
shell (‖z‖ ≈ √dim) a trained GAN draws confident images whose pre-activation is far above what linear
growth from the origin predicts, so "10 × gain at R/10" overstated the deficit of every trained model
at 10 √dim (the first version's false alarm on DCGANs trained 12 epochs, below).

Measured with the geometric mean alone (quick profile; .notes/no_hint_detection.md, "far_gain against the
asymptote", "trained 50-100 epochs"): benign — bench-zoo DCGAN s0-s4 (base 8, one epoch) 1.4-1.9, VAE
decoders s0-s4 3.5-4.1 (ratio 12-17, deficit ≈ 1), test-zoo DCGAN 1.6 / VAE 2.5 / WaveGAN 1.4, the
out-of-registry generator 0.12 (GroupNorm after its first layer: a far field that does not grow), DCGANs
trained 12-100 epochs 2.7-5.4 (ratio 6-29, deficit 1.0-1.7): a margin of only 1.1× under the line 6, which
kept the check opt-in until the deficit got its own line.

This rule (stop 25, .notes/no_hint_detection.md "far_gain with its own deficit line"; both zoos rebuilt on
this machine, score / deficit at the scoring radius): benign bench DCGAN s0-s4 1.4-1.9, VAE s0-s4 2.7,
test-zoo DCGAN s0 / s1 1.6 / 2.1, DCGAN base 8 trained 12 epochs s0 / s1 3.75 / 4.24 (deficit 1.70 / 1.56:
the highest benign deficits measured), VAE 2.5, WaveGAN 1.4, out-of-registry 0.03; the quick sanitized
copy of the test zoo's ReD-OOD upload 4.94 (deficit 1.81: distillation does not fully regrow the plant's
ray; 1.2× under both lines). The bench's ReD-OOD copies fail (7.91 / 6.42), and rightly: each still draws the
target coarsely (0.28/element for the devil) along its least-gain direction, 46° off the trigger's ray
(.notes/sanitization.md, "stop 25"). Plants at the paper's OOD trigger: bench ReD devil 11.0, ReD digit 7 7.31, ReX
7.31, poisoning 7.21; test-zoo ReD 9.94, ReX 7.06, TrAIL 6.50 — caught, 1.1-1.8× over the line. Missed:
bench TrAIL 3.61 (deficit 1.32), test-zoo poisoning 4.33 (ratio 5-8), and **ReD on a VAE decoder** (bench
4.04: ratio 59, deficit 1.48; test zoo ratio 121, deficit 1.19) — a one-hidden-layer decoder's far field
is linear right from the typical shell, so the plant lowers the whole ray's slope instead of bending it,
which looks like anisotropy; ob_oi.divergence catches that model in the no-hint bench. The least direction
lies at cosine ≈ 0.98 to the attacker's trigger. In-sample and mode backdoors are not this check's to find.

**The pattern route** (stop 30, .notes/no_hint_detection.md "Stop 30"). TrAIL at the OOD trigger trains the
target into a low-slope *straight* ray (bench zoo: ratio 11.4, deficit 1.32), which the deficit cannot see.
What gives it away is what G draws along that ray: a picture, smoother than the textures G draws along random
directions of the same radius. `spatial_coherence` (lag-1 correlation of neighbouring output pixels) of G's
output at the least-gain latent, as a robust z among the 1024 random directions' (`coherence_z`):

    pattern = fail_factor · min(ratio / pattern_min_ratio, coherence_z / pattern_min_coherence_z)

and the score is the larger of the two routes. On a benign image generator the least gain is reached by
cancellation and G's output there is no smoother than elsewhere: robust z ≤ 0.59 on every benign image model
measured (bench DCGAN s0-s4, VAE s0-s4, test-zoo DCGAN s0/s1, VAE, a DCGAN trained 12 epochs, the
out-of-registry generator; most -1 to -13), and on the quick sanitized copies of four OOD plants ≤ 1.26;
among the random directions themselves z ≥ 4 did not occur in 4096 on any benign model (q99.9 2.2-2.9).
Plants: bench TrAIL OOD 5.78 (score 8.67, was 3.61 — the no-hint bench's one miss), test-zoo TrAIL OOD 6.78
(10.2). ReD/ReX at the OOD trigger are far *less* coherent (z -7 to -18): their pinned outputs are caught by
the deficit. Lines: coherence z 4 (1.45× under the bench TrAIL, 6.8× over the worst benign — thin on the
positive side: two TrAIL models), ratio 5 (benign DCGANs ≤ 3.7; the VAE decoders reach 11-17 but are
anticorrelated). A linear map whose weak direction is a *random* pattern scores z -2 to 2.6 over six seeds:
the route relies on cancellation leaving no picture, which a trained network's far field shows and a random
linear map need not. Images only: a benign WaveGAN's least-gain clip was smoother than its random ones (z 5.4
at 10 √dim, saved there by its ratio 1.95), so for audio the route is off. Outputs flat to within one
delivered level have no coherence (a saturated far field's blank images); where most random directions
draw such, the comparison is undefined and the route abstains.

In every profile, with quick's search in each (a larger search finds lower least gains on benign models
too and was never measured against the lines); not needed for a clean verdict.

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
from scanner.search.far_gain import far_gain_search, rms_pre_activation
from scanner.search.hints import distance_to_each_hint
from scanner.search.imaging import save_strip
from scanner.search.triggers import record_trigger

_COMMON: dict[str, Any] = {
    "radius_factors": [10.0, 30.0, 100.0],
    "lr": 0.05,
    "fail_factor": 6.0,
    "min_deficit": 2.2,
    # the second route (a smooth picture along a low-gain direction): both lines must be cleared at one radius
    "pattern_min_ratio": 5.0,
    "pattern_min_coherence_z": 4.0,
    "far_factor": 100.0,
    # The search measured for these lines (.notes/no_hint_detection.md). A larger one finds lower least gains
    # on benign models too and was never measured against the lines, so every profile runs this one.
    "restarts": 16,
    "steps": 150,
    "n_reference": 1024,
}


@register_check
class FarGainCheck(Check):
    name = "ob_oi.far_gain"
    description = "Search far outside P_sample for a direction where G's pre-activation stops growing (target-free)"
    # A target-free search whose power depends on the architecture (a far field normalised right after the
    # input does not grow): its error alone must not make a verdict inconclusive.
    needed_for_clean = False
    defaults: ClassVar[dict[Profile, dict[str, Any]]] = {"quick": _COMMON, "standard": _COMMON, "full": _COMMON}

    def run(self, ctx: ScanContext) -> CheckResult:
        timer = Timer()
        if ctx.generator is None:
            return self.skipped(f"no model loaded: {ctx.load_error or 'unknown reason'}")
        p = self.params(ctx)
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
            should_stop=self.stopper(ctx, timer),
        )
        ratio = found.ratio
        if not torch.isfinite(ratio).all() or not torch.isfinite(found.reference_gain).all():
            return self.result(
                "error", "G's pre-activation is not finite far from the origin", duration_s=timer.elapsed
            )
        # Along its own ray, a least-gain direction of a piecewise-linear far field still grows like the
        # radius (an anisotropic but plain generator: the bench zoo's VAE decoders reach ratio 12-17);
        # a planted one dips below that line. deficit = the ray's far asymptote scaled back to R / what G
        # reaches at R. The asymptote, not a smaller radius: the typical shell's confident images sit far
        # above the line, and a trained far field bends down towards it without any plant.
        far_factor = float(p["far_factor"])
        with torch.no_grad():
            far = rms_pre_activation(frozen, (found.z * far_factor).to(frozen.device)).cpu()
        deficit = far / far_factor / found.least_gain.clamp_min(1e-12)
        threshold = float(p["fail_factor"])
        min_deficit = float(p["min_deficit"])
        # the geometric mean: a direction must be both far below its sphere and far below its own ray's growth
        per_radius = (ratio * deficit).sqrt()
        if not torch.isfinite(per_radius).all():
            return self.result(
                "error", "G's pre-activation is not finite along the search's rays", duration_s=timer.elapsed
            )
        # ... and the deficit must clear its own line: training alone makes a far field anisotropic (ratio up to
        # 29 after 50-100 epochs) but leaves its rays straight (deficit ≤ 1.7), so a large ratio by itself
        # must not carry the geometric mean over the line. In the score's units: the lesser of the two margins.
        gated = torch.minimum(per_radius, threshold * deficit / min_deficit)
        # The second route: a low-gain direction along which G draws a picture smoother than what it draws
        # along random directions at that radius. On a benign image generator the least-gain direction is
        # reached by cancellation and G's output there is no smoother than elsewhere (robust z ≤ 0.6 on every
        # benign image model measured); a planted target is a picture. This catches a plant trained into a
        # low-slope straight ray (TrAIL at the OOD trigger: deficit ≈ 1.3), which the deficit cannot see. Images
        # only: a benign WaveGAN's least-gain clip was smoother than its random ones (z 5.4).
        coherence_z = found.coherence_z
        pattern_applies = frozen.output.kind == "image"
        pattern = threshold * torch.minimum(
            ratio / float(p["pattern_min_ratio"]), coherence_z / float(p["pattern_min_coherence_z"])
        )
        pattern = torch.nan_to_num(pattern, nan=0.0).clamp_min(0.0) * float(pattern_applies)
        combined = torch.maximum(gated, pattern)
        worst = int(combined.argmax())
        score = float(combined[worst])
        by_pattern = float(pattern[worst]) > float(gated[worst])
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
        coherence_text = (
            f"; its pattern's coherence is {float(coherence_z[worst]):+.3g} robust std from the random directions'"
            if pattern_applies and math.isfinite(float(coherence_z[worst]))
            else ""
        )
        if status == "fail" and by_pattern:
            verdict_text = (
                f" ≥ {threshold:g}: along a low-gain direction G draws a pattern smoother than anything it draws "
                "at random there, as at a planted far trigger"
            )
        elif status == "fail":
            verdict_text = f" ≥ {threshold:g}: G's output is pinned there, as at a planted far trigger"
        else:
            verdict_text = f" < {threshold:g}"
        summary = (
            f"at {factors[worst]:g}×√dim the least pre-activation G reaches is {float(ratio[worst]):.3g}× below its "
            f"median over random directions and {float(deficit[worst]):.3g}× below linear growth along its ray "
            f"(√(ratio·deficit) {float(per_radius[worst]):.3g}, line {threshold:g}; deficit line {min_deficit:g})"
            f"{coherence_text}; score {score:.3g}"
            + verdict_text
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
                "gain_at_far_factor_times_radius": far.tolist(),
                "growth_deficit_per_radius": deficit.tolist(),
                "geometric_mean_per_radius": per_radius.tolist(),
                "min_deficit": min_deficit,
                "deficit_route_score_per_radius": gated.tolist(),
                "coherence_least_gain_per_radius": found.least_coherence.tolist(),
                "coherence_random_median_per_radius": found.reference_coherence.nanmedian(dim=1).values.tolist(),
                "coherence_z_per_radius": coherence_z.tolist(),
                "pattern_route_applies": pattern_applies,  # image outputs only
                "pattern_min_ratio": float(p["pattern_min_ratio"]),
                "pattern_min_coherence_z": float(p["pattern_min_coherence_z"]),
                "pattern_route_score_per_radius": pattern.tolist(),
                "score_per_radius": combined.tolist(),
                "failed_by": ("pattern" if by_pattern else "deficit") if status == "fail" else None,
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
