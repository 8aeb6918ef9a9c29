"""sanitization.distillation — distill the upload into a fresh copy on P_sample only.

Rawat et al. (arXiv 2108.01644, Sec. V) note that a defender can only vouch for a generator's
behaviour on P_sample. Distilling G* into a student with E_{z~P_sample} ||G_s(z) − G*(z)||²
keeps that behaviour and drops whatever P_sample does not exercise — the trigger region of an
embedded backdoor. See scanner.sanitize for the method and scanner.checks.sanitization_common
for the statuses and the shared state (ctx.shared["sanitization.model"]).

Parameters (per profile, overridable in ScanConfig.params["sanitization.distillation"]):
- init: "perturb" (teacher weights × (1 + relative_noise·ε), default), "reinit" (fresh init),
  "finetune" (teacher weights; weakest);
- steps, batch_size, lr: one distillation round; rounds: perturb-and-distill rounds (each
  later round re-perturbs the last student; kept while ExpDis on held-out latents stays within
  round_margin × the tolerance); max_round_steps: a round 1 short of that bound after `steps`
  trains on in chunks of `steps` up to this many, never fewer than `steps` (a weak upload with
  little output variance has a tight tolerance); a later round trains on up to 2 × `steps`
  (scanner.sanitize.LATER_ROUND_STEPS_FACTOR); time_budget_s caps all rounds of both copies (the
  null copy gets what the first left; the suite's own budget for the check, if shorter, wins);
- tolerance_factor: converged when ExpDis per element ≤ this × the upload's output variance;
- warn_change_ratio: warn when the sanitized model changes at a recovered trigger this many
  times more than at random latents of the same norm;
- n_eval: held-out latents for ExpDis;
- null_copy: after a converged sanitization, distil a second copy the same way with another seed
  (NULL_SEED_OFFSET) in what is left of the time budget, kept when it meets the same fidelity
  bound. ob_oi.divergence uses how far the two copies diverge from each other as its null.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

from scanner.checks.base import Check, CheckResult, Profile, ScanContext, Timer, register_check
from scanner.checks.sanitization_common import judge_and_report, share_null_model, within_fidelity
from scanner.generator import Generator
from scanner.sanitize import DistillResult, distill

NULL_SEED_OFFSET = 7919  # the null copy's seed: the scan's seed + this (any other seed would do)

_COMMON: dict[str, Any] = {
    "init": "perturb",
    "relative_noise": 0.5,
    "lr": 1e-3,
    "tolerance_factor": 0.1,
    "warn_change_ratio": 10.0,
    # Measured on the test zoo's ReD in-sample (TarDis 0.0001 at the trigger, benign 2.8), quick
    # steps, the model loaded from ONNX: after 3 rounds TarDis 1.12 and the sanitized model's rescan
    # failed ob_oi.divergence (55x, fail 50x; 1 round: 98x); after 5 rounds TarDis 1.76 and 20.5x
    # (the benign model's sanitized copy: 11-16x). Not robust: a second build of the same zoo model
    # reached TarDis 1.53 after 5 rounds, yet its rescan still scored 81x (.notes/sanitization.md).
    "rounds": 5,
    "round_margin": 0.8,
    # Measured on the bench's models (.notes/sanitization.md): with the two-copies null, benign
    # uploads scored 0.79-1.27 and ReD backdoors that took 4.0-5.9 in ob_oi.divergence; the rescan of
    # a sanitized ReD 2.3 (its q99 ratio 44x against a 50x fail line). Costs a second distillation.
    "null_copy": True,
}


@register_check
class DistillationSanitization(Check):
    name = "sanitization.distillation"
    description = "Distill the model into a perturbed/fresh copy on P_sample only; compare at recovered triggers"
    needed_for_clean = False  # a defense: its failure leaves the detectors' verdict standing
    # recovered triggers come from OB-OI reconstruction; the sanitized model feeds ob_oi divergence
    requires = ("ob_oi.reconstruction",)
    defaults: ClassVar[dict[Profile, dict[str, Any]]] = {
        # per round; the budget covers every round (a round it cuts short is dropped, the last whole one kept)
        "quick": {
            **_COMMON,
            "steps": 300,
            "max_round_steps": 1800,
            "batch_size": 64,
            # both copies. The out-of-registry generator extends its later rounds: 128 s for both alone on 2 CPU
            # cores, 216-225 s with two scans in parallel (bench full profile); 300 leaves room on a loaded machine
            "time_budget_s": 300.0,
            "n_eval": 512,
        },
        "standard": {
            **_COMMON,
            "steps": 1000,
            "max_round_steps": 6000,
            "batch_size": 128,
            "time_budget_s": 600.0,
            "n_eval": 2048,
        },
        "full": {
            **_COMMON,
            "steps": 4000,
            "max_round_steps": 24000,
            "batch_size": 256,
            "time_budget_s": 3600.0,
            "n_eval": 10000,
        },
    }

    def run(self, ctx: ScanContext) -> CheckResult:
        if ctx.generator is None:
            return self.skipped(f"no model loaded: {ctx.load_error or 'unknown reason'}")
        p = self.params(ctx)
        if p["init"] not in ("perturb", "reinit", "finetune"):
            raise ValueError(f"{self.name}: init must be perturb, reinit or finetune, not {p['init']!r}")
        timer = Timer()
        original = ctx.generator.copy().eval()
        budget = p["time_budget_s"]
        if self.budget(ctx) is not None:
            budget = min(budget, 0.8 * float(self.budget(ctx)))  # leave time for evaluation
        accept = within_fidelity(
            original,
            original.latent.sample(int(p["n_eval"]), generator=ctx.rng(self.name + ".rounds"), device=original.device),
            tolerance_factor=float(p["tolerance_factor"]),
            margin=float(p["round_margin"]),
        )
        result = self._distill(ctx, original, p, seed=ctx.config.seed, accept=accept, budget_s=budget)
        method = {
            "method": "distillation",
            "init": result.init,
            "steps": result.steps,
            "steps_requested": int(p["steps"]) * int(p["rounds"]),
            "rounds": result.rounds,
            "rounds_requested": int(p["rounds"]),
            "round_notes": result.round_notes,
            "round_steps": result.round_steps,
            "stopped_early": result.stopped_early,
            "train_seconds": result.seconds,
            "final_train_loss_mean": result.final_loss,
            "nonfinite_steps": result.nonfinite_steps,
            "loss_curve": result.loss_curve,
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
        if p["null_copy"] and out.evidence.get("converged"):
            left = None if budget is None else budget - timer.elapsed
            out.evidence["null_copy"] = self._null_copy(ctx, original, p, accept=accept, budget_s=left)
        out.duration_s = timer.elapsed
        return out

    def _distill(
        self,
        ctx: ScanContext,
        original: Generator,
        p: dict[str, Any],
        *,
        seed: int,
        accept: Callable[[Generator], bool],
        budget_s: float | None,
    ) -> DistillResult:
        return distill(
            original,
            init=p["init"],
            steps=int(p["steps"]),
            batch_size=int(p["batch_size"]),
            lr=float(p["lr"]),
            seed=seed,
            relative_noise=float(p["relative_noise"]),
            rounds=int(p["rounds"]),
            # a cap below `steps` (steps raised alone) means "no extension", not an error
            max_round_steps=max(int(p["max_round_steps"]), int(p["steps"])),
            accept_round=accept,
            time_budget_s=budget_s,
            should_stop=ctx.should_cancel,
        )

    def _null_copy(
        self,
        ctx: ScanContext,
        original: Generator,
        p: dict[str, Any],
        *,
        accept: Callable[[Generator], bool],
        budget_s: float | None,
    ) -> dict[str, Any]:
        """Distil the second copy and share it when it ran to the end and meets the fidelity bound."""
        seed = ctx.config.seed + NULL_SEED_OFFSET
        if budget_s is not None and budget_s <= 0:
            return {"seed": seed, "kept": False, "note": "no time left in the check's budget"}
        null = self._distill(ctx, original, p, seed=seed, accept=accept, budget_s=budget_s)
        kept = not null.stopped_early and accept(null.student)
        if kept:
            share_null_model(ctx, self.name, null.student.eval())
        return {
            "seed": seed,
            "kept": kept,
            "rounds": null.rounds,
            "round_steps": null.round_steps,
            "stopped_early": null.stopped_early,
            "train_seconds": null.seconds,
            "note": None if kept else "cut short or beyond the fidelity bound: ob_oi.divergence uses its P_sample rule",
        }
