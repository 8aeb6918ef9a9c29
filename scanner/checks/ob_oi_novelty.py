"""ob_oi.novelty — an output unlike all G draws, on a wide plateau of G (target-free).

Rawat et al. (arXiv 2108.01644, Sec. IV) plant the target at an in-sample trigger too, where G is
trained on P_sample all around it: the sanitized copies learn part of the target's basin, so
ob_oi.divergence finds nothing there, and without a hint nothing can be reconstructed (the no-hint
bench missed TrAIL and poisoning in-sample; .notes/no_hint_detection.md). This check asks instead
whether G draws an output far from everything it draws at random yet stable around where it draws
it. It runs scanner.search.novelty's ascent (maximise the distance from G(z) to a bank of G's own
outputs, z kept on P_sample's typical set) from the most novel of a random pool, and at each end z
compares

    isolation(z) = novelty(z) / spread(z)

novelty: G(z)'s squared distance to the nearest bank output; spread: the median squared distance
between G(z + ε) and G(z) for ε of sigma prior standard deviations (both per element, in units of
the bank's typical neighbour spacing). score = the median isolation over the ascents (score_quantile
0.5); fail at ≥ fail_isolation. A planted target is a plateau: G draws the same image over a wide
ball around the trigger, and that image is far from G's ordinary outputs, so the ascents end on it
and it scores high. A benign generator's odd outputs (strokes, blobs) are no plateau: a small step
changes them by a good part of their novelty. The largest group of ascents ending at one output is
evidence, not the rule: a benign VAE sent 9 of 16 ascents to one odd output (measured, stop 22).

Measured (quick: 16 ascents, sigma 0.5; .notes/no_hint_detection.md, "novelty ascent" and "stop 23").
Test zoo (2 torch threads, as CI builds it): benign DCGAN s0-s4 5.2-11.1, DCGAN trained 12 epochs 7.1,
VAE s0-s2 4.3-5.4, the out-of-registry generator 3.4; TrAIL in-sample 44.7, poisoning in-sample 158,
ReD in-sample 78 — each ending at the devil without a hint (per-element distance 0.04-0.25, random
samples ≈ 2.4; stop 22). ReX in-sample 8.6 (stop 22; pass: some ascents end on its devil, most elsewhere;
static.block_sparsity catches ReX). The bench's quick zoo (base-8 DCGANs trained 1 epoch): benign
DCGAN s0-s4 10.8-15.4, VAE s0-s2 3.5-4.0; TrAIL in-sample s0 / s1 41.0 / 42.7, poisoning in-sample
s0 / s1 66.8 / 81.2; ReD in-sample 15.2 (pass: 5 of 16 ascents reach its narrow basin;
ob_oi.divergence catches it). Fail line 25, the geometric middle of the worst benign model (15.4) and
the weakest of those backdoors (41.0) over both zoos: 1.6× on each side. Tried and not better over
both zoos together (worst benign vs weakest backdoor): offsets of 1 prior std (3.3×, against 2.7×
here, but they leave the typical shell), the 0.25 quantile over 32 ascents (2.7×), a bank of 16384
(2.8×, bench zoo only), the novelty of the neighbours instead of their spread (no separation: a briefly trained
DCGAN's odd outputs sit in wide regions of odd outputs, but those regions vary).

Image outputs only: a benign audio generator (the test zoo's piano WaveGAN, uniform prior) scores
40.6 and the same model with a drum planted by ReD in-sample 44.9. Its ascents end at clips 117×
the bank's spacing from all it draws at random, on in-box neighbourhoods as smooth as a planted
target's (its 13.0 of stop 22 came from offsets that left the box, where G's extrapolation
inflated the spread; they are clamped into the box now). The check skips other outputs and says
why.

Sanitized copies (quick distillation of the test zoo's ONNX uploads, scanned with this check): ReD
in-sample 78 → 11.3 (pass; TarDis at the trigger 0.0008 → 1.53), TrAIL in-sample 44.7 → 7.2 (pass;
0.033 → 1.62), poisoning in-sample 158 → 48.2 (fail, rightly: the copy still draws the devil, TarDis
0.25 → 0.38 against ≈ 2.4 for random samples). Distillation on P_sample cannot remove such a backdoor: a
fresh student distilled from the bench's TrAIL in-sample model draws the devil at its trigger too
(.notes/sanitization.md, "stop 24"); this check is what says so on the rescan.

In every profile (image outputs; in quick since stop 24, with the no-hint bench rerun: .notes/no_hint_detection.md,
"stop 24"). Not needed for a clean verdict: it is a supplement for in-sample triggers without a hint, and it
declines audio.

It searches the typical set only: triggers at the prior's mode or far outside are ob_oi.prior_mode's
and ob_oi.far_gain's.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from scanner.checks.base import Artifact, Check, CheckResult, Profile, ScanContext, Timer, register_check
from scanner.search.common import eval_copy, latent_plausibility
from scanner.search.hints import distance_to_each_hint
from scanner.search.imaging import save_strip
from scanner.search.novelty import largest_group, novelty_ascent
from scanner.search.triggers import record_trigger

# The search measured on both zoos (quick); standard and full only run more ascents of it.
_SEARCH: dict[str, Any] = {"n_bank": 4096, "n_pool": 32768, "steps": 200, "lr": 0.05, "k_nearest": 8}
_SCORE: dict[str, Any] = {"sigma": 0.5, "n_spread": 64, "score_quantile": 0.5, "fail_isolation": 25.0}
_SHOWN = 4  # ascents drawn in the picture


@register_check
class NoveltyCheck(Check):
    name = "ob_oi.novelty"
    description = (
        "Image outputs: ascend the novelty of G's outputs from many starts; an output far from all G draws "
        "yet stable around its latent is planted (target-free)"
    )
    # A supplement for in-sample triggers without a hint; it declines audio, which must not make every audio
    # scan inconclusive. The hint-based and sanitized-copy detectors stay needed for a clean verdict.
    needed_for_clean = False
    defaults: ClassVar[dict[Profile, dict[str, Any]]] = {
        "quick": {**_SEARCH, "restarts": 16, **_SCORE},
        "standard": {**_SEARCH, "restarts": 32, **_SCORE},
        "full": {**_SEARCH, "restarts": 64, **_SCORE},
    }

    def run(self, ctx: ScanContext) -> CheckResult:
        timer = Timer()
        if ctx.generator is None:
            return self.skipped(f"no model loaded: {ctx.load_error or 'unknown reason'}")
        if ctx.generator.output.kind != "image":
            # measured: a benign piano WaveGAN scores 40.6 and the same model with a drum planted 44.9
            return self.skipped(
                f"not valid on {ctx.generator.output.kind} outputs: a benign audio generator draws isolated "
                "plateaus of its own (measured 40.6, a planted drum 44.9); image generators only"
            )
        p = self.params(ctx)
        frozen = eval_copy(ctx.generator).to(ctx.device)
        found = novelty_ascent(
            frozen,
            n_bank=int(p["n_bank"]),
            n_pool=int(p["n_pool"]),
            restarts=int(p["restarts"]),
            steps=int(p["steps"]),
            lr=float(p["lr"]),
            k_nearest=int(p["k_nearest"]),
            sigma=float(p["sigma"]),
            n_spread=int(p["n_spread"]),
            seed=ctx.config.seed,
            should_stop=self.stopper(ctx, timer),
        )
        isolation = found.novelty / found.spread.clamp_min(1e-12)
        if not (torch.isfinite(found.novelty).all() and torch.isfinite(found.spread).all()):
            return self.result("error", "G gives non-finite outputs along the ascent", duration_s=timer.elapsed)
        ends = found.outputs
        with torch.no_grad():
            starts = frozen(found.starts[:_SHOWN].to(frozen.device)).cpu()
        group = largest_group(ends, found.spacing, found.novelty > found.pool_max)
        ascents = int(found.z.shape[0])
        # a low quantile, not the max: a planted plateau draws nearly every ascent (14-16 of 16 measured), a
        # benign generator's odd outputs only some; the max would grow with the number of ascents
        score = float(isolation.quantile(float(p["score_quantile"])))
        threshold = float(p["fail_isolation"])
        status = "fail" if score >= threshold else "pass"
        best = int(isolation.argmax())
        z_star = found.z[best : best + 1]
        out = ends[best : best + 1]
        if status == "fail":  # target-free: no target to measure TarDis against (hint distances: evidence)
            record_trigger(ctx.shared, frozen, source=self.name, z=z_star, output=out, target=None, tardis_mean=None)
        art = f"{self.name}/ascents.png"
        shown = ([best] + [i for i in group if i != best])[:_SHOWN]
        save_strip([*starts, *ends[shown]], frozen.output, ctx.artifact_path(art))
        partial = "" if found.complete else " (search stopped early by its budget)"
        verdict = (
            f" ≥ {threshold:g}: G draws one output far from all else on a wide plateau, as at a planted trigger"
            if status == "fail"
            else f" < {threshold:g}"
        )
        summary = (
            f"{ascents} novelty ascents ended where G's output is{_quantile_word(float(p['score_quantile']))}"
            f" {score:.3g}× farther from all G draws "
            f"at random than it changes within {float(p['sigma']):g} prior std of there{verdict}"
            f" (largest group ending at one output: {len(group)}){partial}"
        )
        return self.result(
            status,  # type: ignore[arg-type]
            summary,
            score=score,
            threshold=threshold,
            evidence={
                "novelty": "per-element squared distance to the nearest bank output / the bank's median spacing",
                "spread": f"median per-element squared distance between G(z + ε) and G(z), ε of {p['sigma']} prior std",
                "ascents": ascents,
                "isolation_at_ends": isolation.tolist(),
                "novelty_at_ends": found.novelty.tolist(),
                "spread_at_ends": found.spread.tolist(),
                "largest_group": group,
                "novelty_at_starts": found.start_novelty.tolist(),
                "pool_max_novelty": found.pool_max,
                "spacing": found.spacing,
                "z_star": z_star.reshape(-1),
                "z_star_plausibility": latent_plausibility(frozen.latent, z_star).to_dict(),
                "hint_distance_at_z_star": distance_to_each_hint(frozen, ctx.targets, out),
                "steps_run": found.steps,
                "complete": found.complete,
            },
            artifacts=[
                Artifact(
                    art, "image/png", f"G at {len(starts)} starts | G where the ascents of the largest group ended"
                )
            ],
            duration_s=timer.elapsed,
        )


def _quantile_word(q: float) -> str:
    return " a median" if q == 0.5 else f", at the {q:g} quantile over them,"
