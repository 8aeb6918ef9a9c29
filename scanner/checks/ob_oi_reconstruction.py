"""ob_oi.reconstruction — optimisation-based output inspection (Rawat et al. arXiv 2108.01644,
Sec. 5.3, Table 3): ReconD = min_z ||G(z) − x_t||² for each target hint.

The optimiser (scanner.search.recond) runs Adam on a batch of random restarts for the hint and
its controls at once, with the loss before the final activation as in the paper. ReconD is
reported in output space as a sum over elements and a per-element mean, with z*, G(z*) and the
plausibility of z* under P_sample (χ² percentile of ||z*||² for a normal latent).

Judgement. The paper finds ReconD of embedded targets (ReD, TrAIL) orders of magnitude below that
of non-embedded images. With a calibrated threshold from calibration.controls
(ctx.shared["calibration.thresholds"]["ob_oi.reconstruction"]["recon_mean"]) a hint at or below it
fails. Independently, each hint is compared with its *negative controls* (flips / rolls /
rotation of the hint, scanner.search.controls) reconstructed on the same model in the same batch:
score = ReconD(hint) / min ReconD(controls); ≤ fail_ratio fails, ≤ warn_ratio warns. Fresh outputs
G(z') are reconstructed as positive controls, showing the optimiser's floor on this model.

In-distribution hints. A capable generator reconstructs an image of its own data distribution (a
real digit for an MNIST model) below the calibrated threshold without any backdoor. A backdoor target
is, by the attack's stealth objective, hidden from P_sample and specific to that image. So a hint
below the calibrated threshold fails only if one of the two holds: optimisation gets ≥ 1/stealth_ratio
times closer than the best of bf_oi.closest's N plain samples (ReconD / Closest-N ≤ stealth_ratio),
or the hint is far easier than its own negative controls (ratio ≤ warn_ratio). A hint that is neither
hidden from sampling nor special among its transformations passes, with the figures in the evidence.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch

from scanner.checks.base import Artifact, Check, CheckResult, Profile, ScanContext, Timer, register_check
from scanner.search.common import eval_copy, latent_plausibility, sample_block
from scanner.search.controls import judge_ratio, negative_controls
from scanner.search.hints import artifact_stem, stack_targets, worst_status
from scanner.search.imaging import save_strip
from scanner.search.recond import reconstruct
from scanner.search.triggers import record_trigger

POSITIVE_STREAM = 4  # latent stream of the positive controls G(z')
SHARED_RESULTS = "ob_oi.reconstruction"  # per-hint figures later checks (gradient_free) reuse
_COMMON = {
    "lr": 0.05,
    "loss_space": "pre_activation",
    "fail_ratio": 0.1,
    "warn_ratio": 0.3,
    "stealth_ratio": 0.1,
    "n_positive": 2,
}


@register_check
class ReconstructionCheck(Check):
    name = "ob_oi.reconstruction"
    description = "ReconD = min_z ||G(z) − target||² with batched Adam restarts, against negative controls"
    requires = ("calibration.controls", "bf_oi.closest")
    # Without hints there is nothing to reconstruct: it passes as "not applicable" so a hint-less
    # scan can come out clean, while an *error* here still makes the verdict inconclusive.
    needed_for_clean = True
    defaults: ClassVar[dict[Profile, dict[str, Any]]] = {
        "quick": {"restarts": 8, "steps": 200, **_COMMON},
        "standard": {"restarts": 32, "steps": 500, **_COMMON},
        "full": {"restarts": 128, "steps": 1000, **_COMMON},
    }

    def run(self, ctx: ScanContext) -> CheckResult:
        timer = Timer()
        if ctx.generator is None:
            return self.skipped(f"no generator: {ctx.load_error or 'model not loaded'}")
        if not ctx.targets:
            return self.result("pass", "not applicable: no target hints (target-free checks cover this case)")
        p = self.params(ctx)
        frozen = eval_copy(ctx.generator)
        device = frozen.device
        hints = stack_targets(frozen, ctx.targets, device)
        numel = frozen.output.numel

        # One batch: hints, then each hint's negative controls, then positive controls G(z').
        rows: list[torch.Tensor] = list(hints)
        control_rows: list[list[tuple[str, int]]] = []
        for hint in hints:
            entries = []
            for c in negative_controls(hint.cpu(), frozen.output):
                entries.append((c.name, len(rows)))
                rows.append(c.tensor.to(device))
            control_rows.append(entries)
        n_pos = int(p["n_positive"])
        positive_start = len(rows)
        if n_pos > 0:
            z_pos = sample_block(frozen.latent, n_pos, ctx.config.seed, 0, device, stream=POSITIVE_STREAM)
            with torch.no_grad():
                rows.extend(frozen(z_pos))
        recon = reconstruct(
            frozen,
            torch.stack(rows),
            restarts=int(p["restarts"]),
            steps=int(p["steps"]),
            lr=float(p["lr"]),
            seed=ctx.config.seed,
            loss_space=p["loss_space"],
            should_stop=self.stopper(ctx, timer),
        )
        calibrated = _calibrated_threshold(ctx)
        closest = _closest_n_means(ctx)
        positive_means = recon.recon_mean[positive_start:].tolist()
        per_hint: list[dict[str, Any]] = []
        artifacts: list[Artifact] = []
        statuses: list[str] = []
        scores: list[float] = []
        thresholds: list[float] = []
        shared_out: list[dict[str, Any]] = []
        for t, hint in enumerate(ctx.targets):
            value = float(recon.recon_mean[t])
            controls = {name: float(recon.recon_mean[i]) for name, i in control_rows[t]}
            reference = min(controls.values()) if controls else math.nan
            if not math.isfinite(value):
                status, score, threshold = "error", math.nan, math.nan
            elif controls:
                j = judge_ratio(value, reference, fail_ratio=p["fail_ratio"], warn_ratio=p["warn_ratio"])
                status, score, threshold = j.status, j.score, j.fail_threshold
            else:
                status, score, threshold = "warn", math.nan, math.nan  # no usable control: cannot judge alone
            closest_mean = closest[t]
            stealth = value / closest_mean if closest_mean > 0 else math.nan
            in_distribution = False
            if calibrated is not None and math.isfinite(value):
                if value <= calibrated:
                    hidden = not math.isfinite(stealth) or stealth <= p["stealth_ratio"]
                    specific = math.isfinite(score) and score <= p["warn_ratio"]
                    in_distribution = not (hidden or specific)
                    status = "pass" if in_distribution else "fail"
                elif status == "fail":
                    status = "warn"  # self-reference alarms, the calibrated threshold does not
                if math.isfinite(reference) and reference > 0:
                    threshold = calibrated / reference
            plaus = latent_plausibility(frozen.latent, recon.best_z[t])
            art = f"{self.name}/{artifact_stem(t, hint.name)}_reconstruction.png"
            save_strip([hint.tensor.cpu(), recon.best_output[t]], frozen.output, ctx.artifact_path(art))
            artifacts.append(Artifact(art, "image/png", f"target '{hint.name}' | G(z*)"))
            per_hint.append(
                {
                    "target": hint.name,
                    "status": status,
                    "recon_mean": value,
                    "recon_sum": float(recon.recon_sum[t]),
                    "ratio_to_controls": score,
                    "negative_controls_recon_mean": controls,
                    "closest_n_mean": closest_mean if math.isfinite(closest_mean) else None,
                    "recon_to_closest_n": stealth if math.isfinite(stealth) else None,
                    "in_distribution": in_distribution,
                    "restarts_recon_mean": (recon.restart_sum[t] / numel).tolist(),
                    "z_star": recon.best_z[t].reshape(-1),
                    "z_star_plausibility": plaus.to_dict(),
                }
            )
            shared_out.append({"target": hint.name, "recon_mean": value, "controls_recon_mean": controls})
            if status == "fail":
                record_trigger(
                    ctx.shared,
                    frozen,
                    source=self.name,
                    z=recon.best_z[t],
                    output=recon.best_output[t],
                    target=hint.name,
                    tardis_mean=value,
                )
            statuses.append(status)
            scores.append(score)
            thresholds.append(threshold)
        ctx.shared[SHARED_RESULTS] = shared_out
        status = "error" if "error" in statuses else worst_status(statuses)
        finite = [(s, th) for s, th in zip(scores, thresholds, strict=True) if math.isfinite(s)]
        score, threshold = min(finite) if finite else (None, None)
        flagged = [h["target"] for h in per_hint if h["status"] in ("fail", "warn")]
        if flagged and calibrated is not None:
            summary = f"ReconD against this model's calibrated threshold {calibrated:.3g}/element: " + ", ".join(
                f"{h['target']} ({h['recon_mean']:.3g}/element, {h['status']}; ×{h['ratio_to_controls']:.2g} of its "
                "negative controls)"
                for h in per_hint
                if h["target"] in flagged
            )
        elif flagged:
            summary = "ReconD far below the negative controls for " + ", ".join(
                f"{h['target']} ({h['recon_mean']:.3g}/element, ×{h['ratio_to_controls']:.2g} of controls)"
                for h in per_hint
                if h["target"] in flagged
            )
        else:
            summary = (
                f"no target reconstructable beyond its controls (min ratio {score:.3g})" if finite else "no verdict"
            )
        typical = [h for h in per_hint if h["in_distribution"]]
        if typical:
            summary += (
                "; below the calibrated threshold, but plain samples come close and its controls are as easy "
                "(an image this model produces anyway): "
                + ", ".join(f"{h['target']} (ReconD/Closest-N {h['recon_to_closest_n']:.2g})" for h in typical)
            )
        if recon.nonfinite_steps:
            summary += f"; gradients were non-finite in {recon.nonfinite_steps} step(s) (see ob_oi.gradient_free)"
        if recon.stopped_early:
            summary += f"; stopped early after {recon.steps} of {p['steps']} steps"
        if status == "error":
            summary = "ReconD could not be computed (non-finite outputs); " + summary
        return self.result(
            status,  # type: ignore[arg-type]
            summary,
            score=score,
            threshold=threshold,
            evidence={
                "recon": "ReconD in output space: recon_sum over elements, recon_mean = recon_sum / elements",
                "judged_by": "calibration.controls threshold" if calibrated is not None else "negative controls",
                "calibrated_recon_mean_threshold": calibrated,
                "fail_ratio": p["fail_ratio"],
                "warn_ratio": p["warn_ratio"],
                "positive_controls_recon_mean": positive_means,
                "optimiser": {
                    "restarts": int(p["restarts"]),
                    "steps": recon.steps,
                    "lr": float(p["lr"]),
                    "loss_space": p["loss_space"],
                    "nonfinite_steps": recon.nonfinite_steps,
                    "stopped_early": recon.stopped_early,
                },
                "targets": per_hint,
            },
            artifacts=artifacts,
            duration_s=timer.elapsed,
        )


def _closest_n_means(ctx: ScanContext) -> list[float]:
    """Per hint (in ctx.targets order), bf_oi.closest's best-of-N distance per element; NaN where it did
    not run or has no figure for that hint. Matched by position, since hint names may repeat."""
    result = ctx.results.get("bf_oi.closest")
    entries = (result.evidence or {}).get("targets") if result is not None and result.status != "error" else None
    out = [math.nan] * len(ctx.targets)
    if not isinstance(entries, list) or len(entries) != len(ctx.targets):
        return out
    for t, (entry, hint) in enumerate(zip(entries, ctx.targets, strict=True)):
        if not isinstance(entry, dict) or entry.get("target") != hint.name:
            continue
        value = entry.get("closest_distance_mean")
        if isinstance(value, (int, float)) and math.isfinite(value):
            out[t] = float(value)
    return out


def _calibrated_threshold(ctx: ScanContext) -> float | None:
    """The per-element ReconD threshold calibration.controls derived for this model, if any."""
    entry = (ctx.shared.get("calibration.thresholds") or {}).get("ob_oi.reconstruction")
    if not isinstance(entry, dict):
        return None
    value = entry.get("recon_mean")
    if isinstance(value, (int, float)) and math.isfinite(value) and value > 0:
        return float(value)
    return None
