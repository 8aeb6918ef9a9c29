"""calibration.controls — reproduce the attack on a copy of the upload to calibrate OB-OI.

Rawat et al. (arXiv 2108.01644, Sec. V, Table 3) judge ReconD = min_z ||G(z) − x_t||² by
comparing embedded with non-embedded targets; what counts as "small" depends on the model. This
check measures it *for the model under scan*:

1. Positive controls: mount ReD (Sec. IV: retrain with E||G*(z) − G(z)||² + λ||G*(z_trig) −
   x_target||², on a copy, quick: few steps), `positives` of them per profile: the scan's target
   hints first, then synthetic control targets (simple patterns: a box, stripes, a cross), so a
   scan without hints, or with fewer hints than `positives`, uses patterns. Controls whose attack
   did not take (TarDis not reduced ≥ 20×) are reported and not used; the next candidate is tried
   instead, up to `max_attempts` attacks, so a hint that will not embed on this model (e.g. one
   the upload already binds elsewhere) does not leave the scan uncalibrated.
2. Negative controls: targets that were NOT embedded (flips/rolls of the positive target from
   scanner.search.controls; for a synthetic positive, or a hint too uniform to transform, also
   the other synthetic patterns), reconstructed on the same attacked copy, so both kinds face
   the same model. Hints are never negatives: a hint is a suspected target of the upload and
   may be embedded in it already, which would put a "negative" below every positive.
3. ReconD of every control with the OB-OI optimiser (scanner.search.recond.reconstruct, the same
   batched-restart Adam with the same restarts/steps/lr per profile as ob_oi.reconstruction),
   then a threshold between them: the geometric mean of the largest positive and the smallest negative ReconD when they
   separate, else half the smallest negative (no false alarms on the controls, less power).

Shared state written, for the OB-OI checks (which declare requires=("calibration.controls",)):

    ctx.shared["calibration.thresholds"] = {
        "ob_oi.reconstruction": {
            "recon_mean": float,        # threshold on ReconD per element (output space): below = embedded
            "recon_sum": float,         # the same threshold as a sum over output elements
            "positive_recon_mean": [float, ...],  # ReconD/element of embedded controls
            "negative_recon_mean": [float, ...],  # ReconD/element of non-embedded controls
            "detection_power": float,   # fraction of positive controls with ReconD ≤ threshold
            "false_alarm_rate": float,  # fraction of negative controls with ReconD ≤ threshold
            "separation": float,        # min negative / max positive ReconD (> 1: separated)
            "restarts": int, "steps": int, "lr": float, "loss_space": str,  # optimiser settings used
        }
    }

Status: pass when a threshold was derived with detection power ≥ `min_power`; error when no
control attack took within `max_attempts` or power stayed below `min_power` (this model cannot be
calibrated in this profile: OB-OI falls back to its self-referenced controls). Calibration is not a detector of the
upload itself: it never warns or fails, and it is not needed for a clean verdict.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from scanner.checks.base import Artifact, Check, CheckResult, Profile, ScanContext, Timer, register_check
from scanner.generator import Generator
from scanner.sanitize import target_distance, trainable_parameters
from scanner.search.controls import negative_controls
from scanner.search.recond import reconstruct

SHARED_THRESHOLDS = "calibration.thresholds"
EMBED_FACTOR = 20.0  # a positive control counts when ReD cut its TarDis at least this much


@dataclass
class ControlTarget:
    name: str
    tensor: torch.Tensor  # output-shaped, in the output value range
    origin: str  # "hint" | "synthetic" | "transform"


def _patterns(generator: Generator) -> list[tuple[str, torch.Tensor]]:
    """Simple images (or waveforms) far from any natural sample: a bright box, horizontal
    stripes and a cross on a dark background (audio: square waves of two periods, a burst)."""
    low, high = generator.output.value_range
    span = high - low
    dark, bright = low + 0.1 * span, high - 0.1 * span
    shape = generator.output.shape
    out: list[tuple[str, torch.Tensor]] = []
    if generator.output.kind == "image" and len(shape) == 3:
        h, w = shape[-2:]
        box = torch.full(shape, dark)
        box[:, h // 4 : 3 * h // 4, w // 3 : 2 * w // 3] = bright
        stripes = torch.full(shape, dark)
        for row in range(0, h, max(h // 7, 2)):
            stripes[:, row : row + max(h // 14, 1), :] = bright
        cross = torch.full(shape, dark)
        cross[:, h // 2 - h // 10 : h // 2 + h // 10, :] = bright
        cross[:, :, w // 2 - w // 10 : w // 2 + w // 10] = bright
        out = [("box", box), ("stripes", stripes), ("cross", cross)]
    else:
        length = shape[-1]
        t = torch.arange(length)
        for name, period in (("square_slow", max(length // 16, 2)), ("square_fast", max(length // 128, 2))):
            wave = torch.full(shape, dark)
            wave[..., (t // max(period // 2, 1)) % 2 == 0] = bright
            out.append((name, wave))
        burst = torch.full(shape, dark)
        burst[..., length // 3 : 2 * length // 3] = bright
        out.append(("burst", burst))
    return out


@torch.no_grad()
def synthetic_targets(generator: Generator) -> list[ControlTarget]:
    """Control targets for a scan without hints: simple patterns no benign model produces (the
    first is embedded as the positive control, the others serve as negatives)."""
    return [ControlTarget(name, x, "synthetic") for name, x in _patterns(generator)]


def mount_red(
    original: Generator,
    target: torch.Tensor,
    z_trigger: torch.Tensor,
    *,
    steps: int,
    batch_size: int,
    lr: float,
    fidelity_weight: float,
    seed: int,
) -> Generator:
    """ReD (paper Sec. IV) on a copy: min E_z ||G*(z) − G(z)||² + λ ||G*(z_trig) − x_target||².

    A short loop in output space with a large λ, so a quick profile embeds a control in a few
    hundred steps. (scanner.attacks.red.red_attack implements the paper's pre-activation variant
    with λ = 0.1; switching to it needs its λ/steps re-measured for quick-profile budgets.)"""
    attacked = original.copy().eval()  # eval: BatchNorm statistics stay those of the upload
    frozen = original.copy().eval().requires_grad_(False)
    attacked.requires_grad_(False)
    params = trainable_parameters(attacked.body)  # weight layers + norm affine (not ONNX BN statistics)
    for p in params:
        p.requires_grad_(True)
    optimiser = torch.optim.Adam(params, lr=lr)
    rng = torch.Generator().manual_seed(seed)
    device = attacked.device
    z_trig = z_trigger.reshape(1, *attacked.latent.shape).to(device)
    x_target = target.reshape(1, *attacked.output.shape).to(device)
    for _ in range(steps):
        z = attacked.latent.sample(batch_size, generator=rng, device=device)
        with torch.no_grad():
            reference = frozen(z)
        stealth = (attacked(z) - reference).pow(2).mean()
        fidelity = (attacked(z_trig) - x_target).pow(2).mean()
        loss = stealth + fidelity_weight * fidelity
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
    attacked.requires_grad_(False)
    return attacked.eval()


def derive_threshold(positives: list[float], negatives: list[float]) -> tuple[float, float, float, float]:
    """(threshold, detection power, false-alarm rate, separation) from ReconD per element."""
    if not positives or not negatives:
        return math.nan, 0.0, 0.0, math.nan
    max_pos, min_neg = max(positives), min(negatives)
    separation = min_neg / max_pos if max_pos > 0 else math.inf
    threshold = math.sqrt(max_pos * min_neg) if separation > 1 else 0.5 * min_neg
    power = sum(p <= threshold for p in positives) / len(positives)
    false_alarm = sum(n <= threshold for n in negatives) / len(negatives)
    return threshold, power, false_alarm, separation


@register_check
class CalibrationControls(Check):
    name = "calibration.controls"
    description = "Embed control targets with ReD on a copy; derive this model's ReconD threshold and detection power"
    needed_for_clean = False  # OB-OI has self-referenced controls when calibration is unavailable
    defaults: ClassVar[dict[Profile, dict[str, Any]]] = {
        "quick": {
            "positives": 1,
            "max_attempts": 3,
            "attack_steps": 200,
            "attack_batch_size": 32,
            "attack_lr": 1e-3,
            "fidelity_weight": 10.0,
            "restarts": 8,
            "recon_steps": 200,
            "recon_lr": 0.05,
            "loss_space": "pre_activation",
            "min_power": 0.5,
        },
        "standard": {
            "positives": 2,
            "max_attempts": 4,
            "attack_steps": 600,
            "attack_batch_size": 64,
            "attack_lr": 1e-3,
            "fidelity_weight": 10.0,
            "restarts": 32,
            "recon_steps": 500,
            "recon_lr": 0.05,
            "loss_space": "pre_activation",
            "min_power": 0.5,
        },
        "full": {
            "positives": 3,
            "max_attempts": 5,
            "attack_steps": 3000,
            "attack_batch_size": 128,
            "attack_lr": 1e-3,
            "fidelity_weight": 10.0,
            "restarts": 128,
            "recon_steps": 1000,
            "recon_lr": 0.05,
            "loss_space": "pre_activation",
            "min_power": 0.5,
        },
    }

    def run(self, ctx: ScanContext) -> CheckResult:
        if ctx.generator is None:
            return self.skipped(f"no model loaded: {ctx.load_error or 'unknown reason'}")
        p = self.params(ctx)
        timer = Timer()
        original = ctx.generator.copy().eval()
        seed = ctx.config.seed
        hints = [ControlTarget(t.name, t.tensor.detach().float().cpu(), "hint") for t in ctx.targets]
        patterns = synthetic_targets(original)
        candidates = hints + patterns  # positives are tried in this order until enough took
        wanted, max_attempts = int(p["positives"]), max(int(p["max_attempts"]), int(p["positives"]))
        controls: list[dict[str, Any]] = []
        pos_recon: list[float] = []
        neg_recon: list[float] = []
        artifacts: list[Artifact] = []
        trig_rng = ctx.rng(self.name + ".trigger")
        for k, positive in enumerate(candidates[:max_attempts]):
            if ctx.should_cancel() or len(pos_recon) >= wanted:
                break
            z_trigger = original.latent.sample(1, generator=trig_rng, device=original.device)
            tardis_before = target_distance(original, z_trigger, positive.tensor)
            attacked = mount_red(
                original,
                positive.tensor,
                z_trigger,
                steps=int(p["attack_steps"]),
                batch_size=int(p["attack_batch_size"]),
                lr=float(p["attack_lr"]),
                fidelity_weight=float(p["fidelity_weight"]),
                seed=seed + 101 * (k + 1),
            )
            tardis_after = target_distance(attacked, z_trigger, positive.tensor)
            embedded = tardis_after.mean * EMBED_FACTOR <= tardis_before.mean
            control: dict[str, Any] = {
                "positive": positive.name,
                "origin": positive.origin,
                "embedded": embedded,
                "tardis_before_mean": tardis_before.mean,
                "tardis_after_mean": tardis_after.mean,
            }
            controls.append(control)
            if not embedded:  # nothing to calibrate against: spend the time on the next candidate
                continue
            negatives = [
                ControlTarget(f"{positive.name}:{c.name}", c.tensor, "transform")
                for c in negative_controls(positive.tensor, original.output)
            ]
            if positive.origin != "hint" or not negatives:
                # a hint is judged against its own transformations (same pixel statistics); the
                # patterns serve a synthetic positive, or a hint too uniform to transform
                negatives += [c for c in patterns if c is not positive]
            targets = torch.stack([positive.tensor] + [n.tensor for n in negatives])
            recon = reconstruct(
                attacked,
                targets,
                restarts=int(p["restarts"]),
                steps=int(p["recon_steps"]),
                lr=float(p["recon_lr"]),
                seed=seed + 7 * (k + 1),
                loss_space=p["loss_space"],
                should_stop=ctx.should_cancel,
            )
            means = [float(v) for v in recon.recon_mean]
            pos_recon.append(means[0])
            neg_recon.extend(means[1:])
            control.update(
                positive_recon_mean=means[0],
                negatives=[{"name": n.name, "recon_mean": m} for n, m in zip(negatives, means[1:], strict=True)],
                recon_stopped_early=recon.stopped_early,
            )
        threshold, power, false_alarm, separation = derive_threshold(pos_recon, neg_recon)
        numel = original.output.numel
        evidence: dict[str, Any] = {
            "controls": controls,
            "threshold_recon_mean": threshold,
            "detection_power": power,
            "false_alarm_rate": false_alarm,
            "separation": separation,
            "attack": "ReD",
            "rex": "not mounted (ReX controls are not implemented in this check)",
            "metrics_note": "ReconD and TarDis are squared L2 distances in output space, per element (*_mean)",
        }
        usable = math.isfinite(threshold) and power >= float(p["min_power"])
        if usable:
            ctx.shared[SHARED_THRESHOLDS] = {
                "ob_oi.reconstruction": {
                    "recon_mean": threshold,
                    "recon_sum": threshold * numel,
                    "positive_recon_mean": pos_recon,
                    "negative_recon_mean": neg_recon,
                    "detection_power": power,
                    "false_alarm_rate": false_alarm,
                    "separation": separation,
                    "restarts": int(p["restarts"]),
                    "steps": int(p["recon_steps"]),
                    "lr": float(p["recon_lr"]),
                    "loss_space": str(p["loss_space"]),
                }
            }
        took = [c["positive"] for c in controls if c["embedded"]]
        missed = [c["positive"] for c in controls if not c["embedded"]]
        if not usable:
            why = (
                f"no control attack took ({len(controls)} tried: {', '.join(missed)})"
                if not took
                else f"detection power {power:.2f} < {float(p['min_power']):.2f} (separation {separation:.3g})"
            )
            out = self.result("error", f"calibration unavailable: {why}", score=power, evidence=evidence)
        else:
            out = self.result(
                "pass",
                f"ReconD threshold {threshold:.3g}/element from {len(pos_recon)} positive ({', '.join(took)}) and "
                f"{len(neg_recon)} negative controls: detection power {power:.0%}, false alarms {false_alarm:.0%}, "
                f"separation {separation:.3g}×" + (f"; did not take: {', '.join(missed)}" if missed else ""),
                score=power,
                threshold=threshold,
                evidence=evidence,
                artifacts=artifacts,
            )
        out.duration_s = timer.elapsed
        return out
