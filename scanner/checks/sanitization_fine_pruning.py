"""sanitization.fine_pruning — prune units dormant on P_sample, then fine-tune by distillation.

Fine-pruning (Liu, Dolan-Gavitt, Garg, RAID 2018), as the paper's Sec. V adapts it to generators
(Rawat et al., arXiv 2108.01644): units that stay (nearly) silent for z ~ P_sample are where a
backdoor can live without hurting stealth (a ReX attack's added units are exactly that). They are
pruned — zeroed in the weights and in the BatchNorm scale/shift after them, so the pruning
survives export — and the pruned copy is fine-tuned on the distillation loss E||G_s(z) − G*(z)||²
over P_sample with the pruned units held at zero.

Dormant units are measured here (mean |post-activation| over P_sample, per hidden layer, below
`dormant_relative` × the layer's median, plus the least active `prune_fraction`); units the DMI
check flagged in ctx.shared["dynamic.sleeper_units"] and the units of a self-contained block that
static.block_sparsity found (ctx.shared["static.flagged_units"], ReX's added units) are pruned too
when that state is present.
Statuses and shared state: see scanner.checks.sanitization_common.
"""

from __future__ import annotations

from typing import Any, ClassVar

from scanner.checks.base import Check, CheckResult, Profile, ScanContext, Timer, register_check
from scanner.checks.sanitization_common import judge_and_report
from scanner.sanitize import fine_prune

SLEEPER_UNITS = "dynamic.sleeper_units"
STATIC_FLAGGED_UNITS = "static.flagged_units"  # ReX block partitions found by static.block_sparsity

_COMMON: dict[str, Any] = {
    "dormant_relative": 0.05,
    "prune_fraction": 0.05,
    "lr": 1e-3,
    "tolerance_factor": 0.1,
    "warn_change_ratio": 10.0,
}


def sleeper_units_by_layer(value: Any) -> dict[str, list[int]]:
    """Read the DMI check's sleeper units in any of the shapes it may publish them:
    {layer: [units]}, or a list of {"layer": name, "units": [..]} / {"layer": name, "unit": i}.
    Anything malformed is ignored (the activity measurement still runs)."""
    out: dict[str, list[int]] = {}

    def add(layer: Any, units: Any) -> None:
        if not isinstance(layer, str):
            return
        items = units if isinstance(units, (list, tuple)) else [units]
        ints = [int(u) for u in items if isinstance(u, int) and not isinstance(u, bool)]
        if ints:
            out.setdefault(layer, []).extend(ints)

    if isinstance(value, dict):
        for layer, units in value.items():
            add(layer, units)
    elif isinstance(value, list):
        for entry in value:
            if isinstance(entry, dict):
                add(entry.get("layer"), entry.get("units", entry.get("unit")))
    return out


@register_check
class FinePruningSanitization(Check):
    name = "sanitization.fine_pruning"
    description = "Prune units dormant on P_sample and fine-tune on the distillation loss"
    needed_for_clean = False  # a defense: its failure leaves the detectors' verdict standing
    requires = ("ob_oi.reconstruction", "dynamic.sleeper_units", "static.block_sparsity")
    defaults: ClassVar[dict[Profile, dict[str, Any]]] = {
        "quick": {**_COMMON, "steps": 200, "batch_size": 64, "time_budget_s": 20.0, "n_eval": 512, "n_activity": 512},
        "standard": {
            **_COMMON,
            "steps": 1500,
            "batch_size": 128,
            "time_budget_s": 300.0,
            "n_eval": 2048,
            "n_activity": 2048,
        },
        "full": {
            **_COMMON,
            "steps": 8000,
            "batch_size": 256,
            "time_budget_s": 3600.0,
            "n_eval": 10000,
            "n_activity": 10000,
        },
    }

    def run(self, ctx: ScanContext) -> CheckResult:
        if ctx.generator is None:
            return self.skipped(f"no model loaded: {ctx.load_error or 'unknown reason'}")
        p = self.params(ctx)
        timer = Timer()
        original = ctx.generator.copy().eval()
        budget = p["time_budget_s"]
        if self.budget(ctx) is not None:
            budget = min(budget, 0.8 * float(self.budget(ctx)))
        extra = sleeper_units_by_layer(ctx.shared.get(SLEEPER_UNITS))
        for layer, units in sleeper_units_by_layer(ctx.shared.get(STATIC_FLAGGED_UNITS)).items():
            extra.setdefault(layer, []).extend(units)
        result = fine_prune(
            original,
            n_activity_samples=int(p["n_activity"]),
            dormant_relative=float(p["dormant_relative"]),
            prune_fraction=float(p["prune_fraction"]),
            extra_units=extra,
            steps=int(p["steps"]),
            batch_size=int(p["batch_size"]),
            lr=float(p["lr"]),
            seed=ctx.config.seed,
            time_budget_s=budget,
            should_stop=ctx.should_cancel,
        )
        method = {
            "method": "fine_pruning",
            "units_pruned": result.units_pruned,
            "units_total": result.units_total,
            "pruned": [s.to_dict() for s in result.pruned],
            "flagged_units_used": bool(extra),
            "steps": result.distill.steps,
            "steps_requested": int(p["steps"]),
            "stopped_early": result.distill.stopped_early,
            "train_seconds": result.distill.seconds,
            "final_train_loss_mean": result.distill.final_loss,
            "nonfinite_steps": result.distill.nonfinite_steps,
            "loss_curve": result.distill.loss_curve,
        }
        out = judge_and_report(
            self,
            ctx,
            original,
            result.student,
            method_evidence=method,
            tolerance_factor=float(p["tolerance_factor"]),
            warn_change_ratio=float(p["warn_change_ratio"]),
            n_eval=int(p["n_eval"]),
        )
        out.duration_s = timer.elapsed
        return out
