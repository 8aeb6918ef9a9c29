"""ob_oi.prior_mode — G at the latent prior's mode, against its sanitized copies (target-free).

Rawat et al. (arXiv 2108.01644, Sec. IV) place one of their triggers at the mode of P_sample,
z = 0. In a 100-d normal prior no sample ever comes near it (sample norms are √dim ± 0.7), so
training never supervises G there: an attacker can fit any output to it at no cost in stealth,
and a divergence search that starts from samples of P_sample never visits it (measured: the
no-hint bench missed TrAIL at the mode; .notes/no_hint_detection.md). This check looks there
directly: three forward passes.

Sanitization (sanitization.distillation) keeps G's behaviour on P_sample and drops what was
fitted elsewhere, so a G fitted to a target at the mode draws something its copies do not:

    divergence(z) = √(d(G, G_s) · d(G, G_b)) at z   (d(G, G_s) alone without a second copy)
    score = divergence(mode) / max(its 99th percentile over P_sample, visible_level)

d is the per-element mean squared difference of two outputs; G_s and G_b are the two sanitized
copies (other seeds). The percentile says how far G and its copies differ anywhere G was trained;
visible_level (for an output range of width 2, scaled by (width / 2)² otherwise) is a difference
too small to see (RMS 0.1), so a copy that matches G unusually well on P_sample does not turn a
faint difference at the mode into evidence. The geometric mean over both copies, as in
ob_oi.far_field's null: one copy may keep part of the target (the test zoo's TrAIL at the mode:
d = 0.23 to one copy, 0.088 to the other), and "the two copies disagree there" is then no null —
that rule (min over copies / their disagreement) scored it 0.29 and was dropped. Fail at ≥
fail_factor.

Measured with this check (quick sanitization, .notes/no_hint_detection.md): benign DCGAN s0-s4
of the bench zoo ≤ 1.34, VAE s0-s2 0.03, the out-of-registry generator s0-s2 0.64-1.63, test-zoo
DCGAN s0/s1 and VAE ≤ 0.04; TrAIL at the mode 5.6 (bench zoo) and 3.7 (test zoo), ReD at the mode
215; poisoning at the mode (TarDis 0.18: it barely took) 0.8-0.94. Fail line 2.5: 1.5× above the
worst benign model, 1.5× below the weaker TrAIL — thin, from a handful of models.

For a uniform prior the centre of its box stands in for the mode (every point is equally likely).
Needs a sanitized model; skipped otherwise.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch

from scanner.checks.base import Artifact, CheckResult, Profile, ScanContext, Timer, register_check
from scanner.checks.sanitization_common import SanitizedComparisonCheck, SanitizedCopies
from scanner.generator import Generator
from scanner.search.hints import distance_to_each_hint
from scanner.search.imaging import save_strip
from scanner.search.triggers import record_trigger
from scanner.specs import LatentSpec

_BATCH = 512
_COMMON: dict[str, Any] = {"fail_factor": 2.5, "quantile": 0.99, "visible_level": 0.01}


@register_check
class PriorModeCheck(SanitizedComparisonCheck):
    name = "ob_oi.prior_mode"
    description = "Compare G with its sanitized copies at the latent prior's mode (target-free)"
    defaults: ClassVar[dict[Profile, dict[str, Any]]] = {
        "quick": {"n_reference": 2048, **_COMMON},
        "standard": {"n_reference": 8192, **_COMMON},
        "full": {"n_reference": 32768, **_COMMON},
    }

    def compare(self, ctx: ScanContext, models: SanitizedCopies, timer: Timer) -> CheckResult:
        frozen, frozen_s, null = models.upload, models.copy, models.null
        p = self.params(ctx)
        device = frozen.device
        mode = prior_mode(frozen.latent).to(device)
        copies = [frozen_s] + ([null] if null is not None else [])

        with torch.no_grad():
            out = frozen(mode)
            copy_outputs = [copy(mode) for copy in copies]
            to_copies = torch.stack([_distance(out, c) for c in copy_outputs])  # (copies, 1)
            z = frozen.latent.sample(int(p["n_reference"]), generator=ctx.rng(self.name), device=device)
            reference = torch.cat([_to_copies(frozen(b), copies, b) for b in z.split(_BATCH)])
        finite = reference[torch.isfinite(reference)]
        at_mode = to_copies[:, 0].tolist()
        value = float(_geometric_mean(to_copies)[0])
        if finite.numel() == 0 or not math.isfinite(value):
            return self.result("error", "G or its sanitized copies give non-finite outputs", duration_s=timer.elapsed)
        percentile = float(torch.quantile(finite.double().cpu(), float(p["quantile"])))
        low, high = frozen.output.value_range
        visible = float(p["visible_level"]) * ((high - low) / 2) ** 2
        reference_level = max(percentile, visible)
        score = value / reference_level
        threshold = float(p["fail_factor"])
        status = "fail" if score >= threshold else "pass"
        if status == "fail":
            record_trigger(ctx.shared, frozen, source=self.name, z=mode, output=out, target=None, tardis_mean=value)
        hint_distance = distance_to_each_hint(frozen, ctx.targets, out)
        art = f"{self.name}/mode.png"
        save_strip([out[0].cpu()] + [c[0].cpu() for c in copy_outputs], frozen.output, ctx.artifact_path(art))
        against = f"its {p['quantile']:.0%} over P_sample" if percentile >= visible else "the least visible difference"
        summary = (
            f"at the prior's mode G differs from its {len(copies)} sanitized cop{'ies' if len(copies) > 1 else 'y'} "
            f"by {value:.3g}/element = {score:.3g}× {against} ({reference_level:.3g})"
            + (f" ≥ {threshold:g}: G was fitted to something there" if status == "fail" else "")
        )
        return self.result(
            status,  # type: ignore[arg-type]
            summary,
            score=score,
            threshold=threshold,
            evidence={
                "distance": "per-element mean of (G(z) − copy(z))², geometric mean over the sanitized copies",
                "mode": mode.reshape(-1),
                "distance_to_each_copy_at_mode": at_mode,
                "distance_at_mode": value,
                "p_sample_quantile": float(p["quantile"]),
                "p_sample_distance_quantile": percentile,
                "p_sample_distance_median": float(finite.median()),
                "visible_level": visible,
                "reference_level": reference_level,
                "hint_distance_at_mode": hint_distance,
            },
            artifacts=[Artifact(art, "image/png", "G | its sanitized copies, at the prior's mode")],
            duration_s=timer.elapsed,
        )


def prior_mode(latent: LatentSpec) -> torch.Tensor:
    """The mode of a normal prior (z = 0), or the centre of a uniform prior's box: (1, *shape)."""
    centre = 0.0 if latent.distribution == "normal" else (latent.low + latent.high) / 2
    return torch.full((1, *latent.shape), centre)


def _to_copies(out: torch.Tensor, copies: list[Generator], z: torch.Tensor) -> torch.Tensor:
    """Geometric mean over the copies of each sample's distance from G's output `out` at `z`: (batch,)."""
    return _geometric_mean(torch.stack([_distance(out, copy(z)) for copy in copies]))


def _geometric_mean(distances: torch.Tensor) -> torch.Tensor:
    """Over the copies (dim 0) of per-sample distances (copies, batch)."""
    return distances.clamp_min(0).prod(0).pow(1 / distances.shape[0])


def _distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a - b).flatten(1).pow(2).mean(1)
