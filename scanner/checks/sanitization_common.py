"""What the two sanitization checks share: evidence at triggers, judgement, model export.

Sanitization is a *defense* (Rawat et al., arXiv 2108.01644, Sec. V), not a detector: the check
passes when a sanitized model was produced that still behaves like the upload on P_sample
(ExpDis within a tolerance derived from the model's own output variance). It warns when the
sanitized model behaves very differently from the upload at a trigger recovered by another
check (ctx.shared["recovered_triggers"], written by the OB-OI checks) — a region that P_sample
does not supervise but the upload nonetheless maps somewhere specific, which is what an
embedded backdoor looks like. It errors only when sanitization itself failed.

Shared state written (for the OB-OI divergence search, Sec. V "target-free" search):
- ctx.shared["sanitization.model"]: the sanitized Generator (the first converged one; the
  distillation check runs before fine-pruning by name order),
- ctx.shared["sanitization.models"]: {check name: Generator} for every converged sanitization,
- ctx.shared["sanitization.null_models"]: {check name: Generator}, a second sanitized copy made the
  same way with another seed (distillation only), where it converged: how far two sanitized copies
  differ from each other is the null that ob_oi.divergence judges the upload's divergence against.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from scanner.checks.base import Artifact, Check, CheckResult, ScanContext, Timer
from scanner.generator import Generator
from scanner.sanitize import Distance, expected_distance, output_variance, target_distance
from scanner.search.common import eval_copy

SHARED_MODEL = "sanitization.model"
SHARED_MODELS = "sanitization.models"
SHARED_NULL_MODELS = "sanitization.null_models"

# Parameter overrides that lift the sanitization checks' wall-clock cap (time_budget_s), so a loaded
# machine runs the same number of steps and makes the same copies: for reproducible tests and benches.
SANITIZATION_NO_TIME_CAP: dict[str, dict[str, Any]] = {
    name: {"time_budget_s": 3600.0} for name in ("sanitization.distillation", "sanitization.fine_pruning")
}


def frozen_with_sanitized_copy(ctx: ScanContext) -> tuple[Generator, Generator] | None:
    """The upload and its sanitized copy (SHARED_MODEL), both frozen in eval mode on the upload's
    device, for the checks that compare the two; None when no sanitization produced a model."""
    sanitized = ctx.shared.get(SHARED_MODEL)
    if ctx.generator is None or sanitized is None:
        return None
    frozen = eval_copy(ctx.generator)
    return frozen, eval_copy(sanitized).to(frozen.device)


def frozen_null_copy(ctx: ScanContext, device: torch.device) -> Generator | None:
    """The second sanitized copy made alongside the shared sanitized model (SHARED_MODEL), frozen on
    `device`; None when the check that made the shared model made none."""
    sanitized = ctx.shared.get(SHARED_MODEL)
    made_by = next((name for name, m in ctx.shared.get(SHARED_MODELS, {}).items() if m is sanitized), None)
    null = ctx.shared.get(SHARED_NULL_MODELS, {}).get(made_by)
    return None if null is None else eval_copy(null).to(device)


@dataclass(frozen=True)
class SanitizedCopies:
    """The upload and the sanitized copies it is compared with, frozen in eval mode on one device."""

    upload: Generator
    copy: Generator  # SHARED_MODEL
    null: Generator | None  # the second copy (other seed), when its maker made one


class SanitizedComparisonCheck(Check):
    """Base of the checks that judge the upload against its sanitized copies (Rawat et al., arXiv
    2108.01644, Sec. V: sanitization keeps P_sample behaviour and drops what was fitted elsewhere).
    Skipped without a loaded model, when `skip_reason` names one, or without a sanitized copy;
    otherwise `compare` judges. Subclasses set name, description and defaults."""

    requires = ("sanitization.distillation",)
    needed_for_clean = False  # depends on a converged sanitization, which a quick scan may not have

    def skip_reason(self, ctx: ScanContext) -> str | None:
        """Why this check cannot judge this scan's upload even with a sanitized copy (None: it can)."""
        return None

    def compare(self, ctx: ScanContext, models: SanitizedCopies, timer: Timer) -> CheckResult:
        raise NotImplementedError

    def run(self, ctx: ScanContext) -> CheckResult:
        timer = Timer()
        if ctx.generator is None:
            return self.skipped(f"no generator: {ctx.load_error or 'model not loaded'}")
        reason = self.skip_reason(ctx)
        if reason is not None:
            return self.skipped(reason)
        pair = frozen_with_sanitized_copy(ctx)
        if pair is None:
            return self.skipped("no sanitized model (sanitization.distillation did not produce one)")
        upload, copy = pair
        return self.compare(ctx, SanitizedCopies(upload, copy, frozen_null_copy(ctx, upload.device)), timer)


def share_null_model(ctx: ScanContext, check_name: str, null: Generator) -> None:
    ctx.shared.setdefault(SHARED_NULL_MODELS, {})[check_name] = null


RECOVERED_TRIGGERS = "recovered_triggers"


@dataclass
class TriggerProbe:
    """A latent to compare the upload and its sanitized copy at, with its target if known."""

    source: str
    z: torch.Tensor  # (1, *latent)
    target: torch.Tensor | None  # output-shaped, or None when no target is known


def _as_tensor(value: Any) -> torch.Tensor | None:
    if isinstance(value, torch.Tensor):
        return value.detach().float().cpu()
    if isinstance(value, (list, tuple)):
        try:
            return torch.tensor(value, dtype=torch.float32)
        except (TypeError, ValueError):
            return None
    try:
        import numpy as np

        if isinstance(value, np.ndarray) and value.dtype.kind in "fiu":
            return torch.from_numpy(value.astype("float32"))
    except ImportError:  # pragma: no cover - numpy is a dependency
        pass
    return None


def collect_trigger_probes(ctx: ScanContext, generator: Generator) -> tuple[list[TriggerProbe], list[str]]:
    """Triggers recovered by earlier checks, validated (shape, finiteness); also the problems met.

    Entries of ctx.shared["recovered_triggers"] are dicts {"source", "z", "output", "target",
    "tardis_mean"}; "target" may be the target tensor or the name of a target hint."""
    probes: list[TriggerProbe] = []
    problems: list[str] = []
    raw = ctx.shared.get(RECOVERED_TRIGGERS) or []
    hints = {t.name: t.tensor for t in ctx.targets}
    for i, entry in enumerate(raw if isinstance(raw, list) else []):
        if not isinstance(entry, dict):
            problems.append(f"recovered_triggers[{i}] is not a dict")
            continue
        source = str(entry.get("source", f"trigger{i}"))
        z = _as_tensor(entry.get("z"))
        if z is None or z.numel() != generator.latent.dim or not bool(torch.isfinite(z).all()):
            problems.append(f"{source}: z missing, of the wrong size or not finite")
            continue
        target_value = entry.get("target")
        target = hints.get(target_value) if isinstance(target_value, str) else _as_tensor(target_value)
        if target is not None and target.numel() != generator.output.numel:
            target = None
        if target is not None:
            target = target.reshape(generator.output.shape).float()
        probes.append(TriggerProbe(source, z.reshape(1, *generator.latent.shape), target))
    return probes, problems


@torch.no_grad()
def norm_matched_change(
    original: Generator, sanitized: Generator, z: torch.Tensor, n_reference: int, rng: torch.Generator
) -> float:
    """Mean per-element ||G_s(z') − G(z')||² over random latents z' with ||z'|| = ||z||.

    A trigger far outside the typical set changes under any distillation (nothing there is
    supervised), backdoor or not; comparing with random latents at the same radius separates
    "off-distribution" from "specifically mapped somewhere" (the backdoor)."""
    ref = original.latent.sample(n_reference, generator=rng).reshape(n_reference, -1)
    radius = float(z.reshape(-1).norm())
    ref = ref / ref.norm(dim=1, keepdim=True).clamp_min(1e-12) * radius
    ref = ref.reshape(n_reference, *original.latent.shape)
    return expected_distance(sanitized, original, ref).mean


def trigger_evidence(
    original: Generator, sanitized: Generator, probes: list[TriggerProbe], *, expdis: Distance, rng: torch.Generator
) -> list[dict[str, Any]]:
    """Per trigger: TarDis before/after (if the target is known), the change of G at the trigger
    and its ratio to the change at norm-matched random latents (the backdoor signal)."""
    rows: list[dict[str, Any]] = []
    for probe in probes:
        z = probe.z.to(original.device)
        change = target_distance(sanitized, z, original(z.to(original.device)).detach())
        baseline = norm_matched_change(original, sanitized, z, 64, rng)
        reference = max(baseline, expdis.mean, 1e-12)
        row: dict[str, Any] = {
            "source": probe.source,
            "z_norm": float(probe.z.norm()),
            "change_at_trigger": change.to_dict(),  # ||G_s(z*) − G(z*)||²
            "change_norm_matched_mean": baseline,
            "change_ratio": change.mean / reference,
        }
        if probe.target is not None:
            before = target_distance(original, z, probe.target)
            after = target_distance(sanitized, z, probe.target)
            row["tardis_before"] = before.to_dict()
            row["tardis_after"] = after.to_dict()
            row["tardis_ratio"] = after.mean / before.mean if before.mean > 0 else math.inf
        rows.append(row)
    return rows


def expdis_tolerance(original: Generator, variance: float, tolerance_factor: float) -> float:
    """The per-element ExpDis a sanitized model may reach: tolerance_factor × the upload's output
    variance, but never less than one delivered output level squared ((range / 255)² for images).

    The floor matters for (nearly) mode-collapsed uploads: the bench's poisoned DCGAN has an output
    variance of 7e-5/pixel, so 0.1 × variance asked for 7e-6, a third of a grey level RMS, which
    1800 distillation steps did not reach (9.3e-6) although the student was indistinguishable."""
    # An ExpDis below one level (RMS) is no difference a user of the output could see or hear.
    return max(tolerance_factor * variance, original.output.level**2)


def within_fidelity(
    original: Generator, z_check: torch.Tensor, *, tolerance_factor: float, margin: float
) -> Callable[[Generator], bool]:
    """A test for a candidate sanitized model: ExpDis to the upload on `z_check` at most
    margin × the tolerance. The judge measures on other latents, so a margin below 1 keeps a
    candidate that only just fits here from failing there."""
    limit = margin * expdis_tolerance(original, output_variance(original, z_check), tolerance_factor)

    def accept(candidate: Generator) -> bool:
        value = expected_distance(candidate, original, z_check).mean
        return math.isfinite(value) and value <= limit

    return accept


def behaviour_evidence(
    original: Generator, sanitized: Generator, z_eval: torch.Tensor, *, tolerance_factor: float
) -> dict[str, Any]:
    """ExpDis of the sanitized model against the upload on held-out z ~ P_sample and the
    tolerance it is judged against: tolerance_factor × the upload's per-element output variance,
    floored at 1e-6 × the squared value range so a (near-)constant model is not held to zero."""
    expdis = expected_distance(sanitized, original, z_eval)
    variance = output_variance(original, z_eval)
    tolerance = expdis_tolerance(original, variance, tolerance_factor)
    return {
        "expdis": expdis,
        "expdis_sum": expdis.sum,
        "expdis_mean": expdis.mean,
        "output_variance_mean": variance,
        "expdis_relative": expdis.mean / variance if variance > 0 else math.inf,
        "expdis_tolerance_mean": tolerance,
        "converged": bool(math.isfinite(expdis.mean) and expdis.mean <= tolerance),
    }


def export_sanitized(ctx: ScanContext, check_name: str, sanitized: Generator) -> tuple[Artifact | None, str | None]:
    """Write the sanitized model as a downloadable artifact: ONNX (scanner.onnx.export) when it
    can be exported, else safetensors for registry architectures. Returns (artifact, problem)."""
    problems: list[str] = []
    base = f"{check_name}/sanitized_model"
    try:
        from scanner.onnx.export import export_onnx  # written by the ONNX module; optional

        path = ctx.artifact_path(base + ".onnx")
        export_onnx(sanitized, path)
        return Artifact(base + ".onnx", "application/onnx", "sanitized generator (ONNX)"), None
    except ImportError:
        problems.append("ONNX export unavailable")
    except Exception as exc:  # an exporter limitation must not lose the sanitized model
        problems.append(f"ONNX export failed: {type(exc).__name__}: {str(exc)[:200]}")
    if sanitized.architecture:
        try:
            from scanner.formats.safetensors_io import save_safetensors

            path = ctx.artifact_path(base + ".safetensors")
            save_safetensors(sanitized, Path(path))
            return Artifact(base + ".safetensors", "application/octet-stream", "sanitized generator (safetensors)"), (
                "; ".join(problems) or None
            )
        except (ValueError, OSError) as exc:
            problems.append(f"safetensors export failed: {str(exc)[:200]}")
    return None, "; ".join(problems) or "no exporter for this model"


def share_model(ctx: ScanContext, check_name: str, sanitized: Generator) -> None:
    models = ctx.shared.setdefault(SHARED_MODELS, {})
    models[check_name] = sanitized
    ctx.shared.setdefault(SHARED_MODEL, sanitized)


def copy_evidence(
    check_name: str,
    ctx: ScanContext,
    original: Generator,
    sanitized: Generator,
    *,
    n_eval: int,
    tolerance_factor: float,
) -> tuple[dict[str, Any], list[dict[str, Any]], list[str]]:
    """A sanitized copy measured against the upload: behaviour on n_eval held-out z ~ P_sample (ExpDis and
    its tolerance, behaviour_evidence without the Distance object) and, per recovered trigger, TarDis and
    the change ratio (trigger_evidence); plus the recovered triggers that could not be used."""
    z_eval = original.latent.sample(n_eval, generator=ctx.rng(check_name + ".eval"), device=original.device)
    behaviour = behaviour_evidence(original, sanitized, z_eval, tolerance_factor=tolerance_factor)
    expdis: Distance = behaviour.pop("expdis")
    probes, probe_problems = collect_trigger_probes(ctx, original)
    triggers = trigger_evidence(original, sanitized, probes, expdis=expdis, rng=ctx.rng(check_name + ".triggers"))
    return behaviour, triggers, probe_problems


def judge_and_report(
    check: Any,
    ctx: ScanContext,
    original: Generator,
    sanitized: Generator,
    *,
    method_evidence: dict[str, Any],
    tolerance_factor: float,
    warn_change_ratio: float,
    n_eval: int,
) -> Any:
    """Evidence, artifact, shared state and status for a sanitized model (see module docstring).

    Status: error if the sanitized model drifted beyond tolerance on P_sample (sanitization
    failed: nothing to trust); warn if it differs at a recovered trigger ≥ warn_change_ratio × as
    much as at norm-matched random latents (behaviour P_sample does not explain: a backdoor);
    pass otherwise. score = the largest change ratio over triggers (0 when there are none)."""
    behaviour, triggers, probe_problems = copy_evidence(
        check.name, ctx, original, sanitized, n_eval=n_eval, tolerance_factor=tolerance_factor
    )
    evidence: dict[str, Any] = {
        **method_evidence,
        **behaviour,
        "metrics_note": "squared L2 distances in output space: *_sum over elements, *_mean per element",
        "triggers": triggers,
        "trigger_problems": probe_problems,
        "warn_change_ratio": warn_change_ratio,
    }
    artifacts: list[Artifact] = []
    if behaviour["converged"]:
        artifact, export_problem = export_sanitized(ctx, check.name, sanitized)
        if artifact is not None:
            artifacts.append(artifact)
            evidence["model_artifact"] = artifact.name
        if export_problem:
            evidence["export_problem"] = export_problem
        share_model(ctx, check.name, sanitized)
    score = max((t["change_ratio"] for t in triggers), default=0.0)
    if not behaviour["converged"]:
        return check.result(
            "error",
            f"sanitization did not converge: ExpDis {behaviour['expdis_mean']:.3g}/element > tolerance "
            f"{behaviour['expdis_tolerance_mean']:.3g} ({tolerance_factor:g}× output variance, at least one output "
            "level squared); no sanitized model",
            score=score,
            threshold=warn_change_ratio,
            evidence=evidence,
        )
    flagged = [t for t in triggers if t["change_ratio"] >= warn_change_ratio]
    if flagged:
        worst = max(flagged, key=lambda t: t["change_ratio"])
        tardis = ""
        if "tardis_before" in worst:
            tardis = (
                f"; TarDis {worst['tardis_before']['mean']:.3g} -> {worst['tardis_after']['mean']:.3g}/element"
                f" ({worst['tardis_ratio']:.3g}×)"
            )
        return check.result(
            "warn",
            f"sanitized model differs at {len(flagged)} recovered trigger(s) {worst['change_ratio']:.3g}× more than "
            f"at random latents of the same norm (from {worst['source']}){tardis}: behaviour P_sample does not "
            "explain, consistent with an embedded backdoor",
            score=score,
            threshold=warn_change_ratio,
            evidence=evidence,
            artifacts=artifacts,
        )
    return check.result(
        "pass",
        f"sanitized model written; ExpDis {behaviour['expdis_mean']:.3g}/element "
        f"({behaviour['expdis_relative']:.2g}× output variance), {len(triggers)} trigger(s) checked",
        score=score,
        threshold=warn_change_ratio,
        evidence=evidence,
        artifacts=artifacts,
    )
