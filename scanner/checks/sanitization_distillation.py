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
- fresh_copy: after a converged sanitization, distil a fresh student (init "reinit", the same steps
  and fidelity bound, then fresh_copy_rounds − 1 perturb-and-distill rounds) in what is left of the time
  budget; when it meets the bound it is the model written out (the artifact), with its own ExpDis and
  TarDis in evidence["written_copy"]. Why a second round: training from scratch can grow a unit out of its
  layer's bulk, and the perturbation pulls it back in (the bench's ReX OOD body: one round left a log
  weight norm at robust z 6.08 and static.bias_outliers warned on the written copy; two rounds 3.27).
- unlearn (with unlearn_floor, unlearn_weight, unlearn_every, unlearn_restarts, unlearn_steps,
  unlearn_max_targets): the fresh copy is also trained away from each target a *failed* detector tied to
  a recovered trigger (the hint's image, or the upload's output at the recovered z* when the detector had
  no hint: ob_oi.novelty, bf_oi.outliers), up to unlearn_max_targets of them
  (scanner.sanitize.TargetUnlearning): every unlearn_every steps a reconstruction search on the student
  (unlearn_restarts × unlearn_steps) finds where it draws each target, and a hinge keeps its outputs there
  at least unlearn_floor × the median distance of the upload's samples from the target. evidence
  ["written_copy"]["unlearned"] lists them with that floor and the closest the last search found. Keeping
  away from a target the upload draws over part of P_sample costs fidelity: the fresh copy's round 1 may
  then train on to unlearn_steps_factor × max_round_steps.
- recheck, unlearned_perturbed_copies: each candidate copy that meets the bound is checked again by every failed
  detector whose target it unlearned and that a rescan runs before any sanitization (ob_oi.novelty, bf_oi.outliers,
  ob_oi.far_gain; a hinted ob_oi.reconstruction after the calibration.controls and bf_oi.closest it requires, run on
  the copy) — same profile, parameters and seed, as a rescan of the artifact would. When the fresh copy misses the
  bound or still fails a recheck, up to unlearned_perturbed_copies perturbed copies (the scan's seed, then +
  RETRY_SEED_OFFSET) are trained away from the same targets, in what is left of the budget. Written: the first
  candidate within the bound that passes every recheck, else the one within the bound that fails fewest (the earliest
  of equals), else the perturbed reference copy (rechecked too, as when no fresh copy can be trained: it is deployed
  in place of the upload all the same). evidence ["written_copy"]["candidates"] lists each candidate tried (copy,
  seed, steps, meets_bound, rechecked, written); ["rechecked"] is the written copy's, and the summary names a detector
  that still fails on it, or that could not run on it (no time left, an error). unlearn_recheck_finds,
  unlearn_floor_raise: a perturbed copy that follows a candidate which still failed learns from that candidate's
  output at the trigger the failed recheck recovered. Nearer an unlearned target than the upload's typical sample, it
  is that target's remnant, held just beyond its floor: the floor is raised to unlearn_floor_raise × its distance (at
  most the typical sample's distance). Farther from every target, it becomes a target of its own (floor measured as
  for the recovered ones). candidates[i]["recheck_finds"] say which happened. Measured on the bench's poisoning
  in-sample seed 2 with the novelty line at 18 (its first copy's 20.4 a fail): the next copy scored 24.4 without this,
  22.3 with the find added as a target (it lay 1.05× the floor from the unlearned target: a remnant), 8.8 with the
  floor raised (.notes/sanitization.md, "stop 32").

Why two kinds of copy. The detectors (ob_oi.divergence, far_field, prior_mode) were calibrated against
perturbed copies — the teacher's weights knocked and re-distilled, cheap and close to the upload — and
keep them as their reference (ctx.shared). The model a user deploys instead of the upload should carry
nothing of the upload's weights: a perturbed copy of a model planted far out keeps a far-field target
(the bench's ReD at the OOD trigger: its copy draws the devil at 0.28/element along a direction 46° off
the trigger, ob_oi.far_gain 7.9), because distillation on P_sample never supervises that region and the
perturbation leaves the weights that shaped it. A fresh student never saw those weights; the same 300
steps on P_sample bring it within the bound (ExpDis 0.08× the output variance) with TarDis at the trigger
3.31 (upload 0.019) and a far field as straight as a benign model's (far_gain 1.71, deficit ≤ 1.0;
.notes/sanitization.md, "stop 26"). In-sample triggers are another matter: P_sample around them already
fixes the target, and a fresh student learns poisoning's devil too (the test zoo's: 0.83/element at the
trigger, a hinted reconstruction reaches it at 0.70; benign 2.3-2.8). What the scan has recovered it can
unlearn: with the upload's output at ob_oi.novelty's z* as the target (no hint given), the written copy
draws the devil no nearer than 2.1 at the trigger or anywhere a hinted reconstruction looks, and rescans
clean (.notes/sanitization.md, "stop 27"). ONNX uploads get
a fresh copy too (their weight layers execute as torch modules; the normalisation constants of such a
body are plain tensors and stay the upload's). A body with nothing to re-initialise gets the perturbed
copy written, and a fresh copy that misses the fidelity bound (the bench's mode-collapsed poisoned DCGAN:
output variance 7e-5, 3600 steps on its torch body) likewise — unless a failed detector recovered a target:
then a perturbed copy is trained away from it with the same penalty (fresh_copy_rounds rounds, round 1 up to
unlearn_steps_factor × max_round_steps) and written when it meets the bound. On that bench model: ExpDis
within the bound, TarDis at the trigger 0.18 -> 1.64/element, a hinted reconstruction 0.025 -> 1.53 (benign
DCGANs ≈ 1.35; .notes/sanitization.md, "stop 28").
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch

from scanner.checks.base import CHECKS, Check, CheckResult, Profile, ScanContext, Timer, register_check
from scanner.checks.sanitization_common import (
    RECOVERED_TRIGGERS,
    SHARED_MODELS,
    copy_evidence,
    export_sanitized,
    judge_and_report,
    share_null_model,
    within_fidelity,
)
from scanner.generator import Generator
from scanner.sanitize import DistillResult, Penalty, StudentInit, TargetUnlearning, can_reinitialise, distill
from scanner.search.common import typical_radius

NULL_SEED_OFFSET = 7919  # the null copy's seed: the scan's seed + this (any other seed would do)
RETRY_SEED_OFFSET = 104729  # a second unlearned perturbed copy's seed: the scan's seed + this

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
    "fresh_copy": True,
    "fresh_copy_rounds": 2,
    # Unlearning in the fresh copy (scanner.sanitize.TargetUnlearning): targets that a failed detector
    # tied to a recovered trigger. Measured with no hint (novelty's output at z* as the target), the fresh
    # copy without -> with: test zoo poisoning in-sample TarDis at the trigger 0.83 -> 2.12/element (upload
    # 0.24), hinted ReconD 0.70 -> 2.11 (benign 2.27); bench TrAIL in-sample 0.44 -> 1.83 (upload 0.025),
    # ReconD 0.23 -> 1.53 (benign 1.35); ExpDis 0.06-0.08 x output variance either way (.notes/sanitization.md
    # "stop 27").
    "unlearn": True,
    "unlearn_floor": 0.5,  # × the median distance of the upload's samples to the target
    "unlearn_weight": 10.0,
    "unlearn_every": 50,
    "unlearn_restarts": 16,
    "unlearn_steps": 100,
    "unlearn_max_targets": 4,
    # the fresh copy's round-1 cap (max_round_steps) is this many times larger when it unlearns: a target
    # the upload draws over part of P_sample costs fidelity to keep away from (the bench's TrAIL in-sample
    # met the bound after 3300 steps, the quick cap 1800 left the perturbed copy written)
    "unlearn_steps_factor": 2,
    # one run of each such detector per candidate copy (novelty: 10-20 s in quick on the bench's DCGANs)
    "recheck": True,
    # a perturbed copy after one that still fails a recheck learns from that copy's output at the detector's z*:
    # a remnant of an unlearned target raises its floor to unlearn_floor_raise × the remnant's distance, any
    # other output becomes a target
    "unlearn_recheck_finds": True,
    "unlearn_floor_raise": 1.3,
    # perturbed copies (other seeds) tried after a fresh one that misses the bound or still fails a recheck
    "unlearned_perturbed_copies": 2,
}


@register_check
class DistillationSanitization(Check):
    name = "sanitization.distillation"
    description = "Distill the model into a perturbed/fresh copy on P_sample only; compare at recovered triggers"
    needed_for_clean = False  # a defense: its failure leaves the detectors' verdict standing
    # recovered triggers come from OB-OI reconstruction and novelty (the fresh copy unlearns what a failed
    # detector recovered); the sanitized model feeds ob_oi divergence
    requires = ("ob_oi.reconstruction", "ob_oi.novelty")
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
        if p["fresh_copy"] and out.evidence.get("converged"):
            left = None if budget is None else budget - timer.elapsed
            self._write_fresh_copy(ctx, original, p, out, accept=accept, budget_s=left)
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
        init: StudentInit | None = None,
        rounds: int | None = None,
        penalty: Penalty | None = None,
        steps_factor: int = 1,
    ) -> DistillResult:
        return distill(
            original,
            init=init or p["init"],
            steps=int(p["steps"]),
            batch_size=int(p["batch_size"]),
            lr=float(p["lr"]),
            seed=seed,
            relative_noise=float(p["relative_noise"]),
            rounds=int(p["rounds"]) if rounds is None else rounds,
            # a cap below `steps` (steps raised alone) means "no extension", not an error
            max_round_steps=max(int(p["max_round_steps"]) * steps_factor, int(p["steps"])),
            accept_round=accept,
            time_budget_s=budget_s,
            should_stop=ctx.should_cancel,
            penalty=penalty,
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

    def _write_fresh_copy(
        self,
        ctx: ScanContext,
        original: Generator,
        p: dict[str, Any],
        out: CheckResult,
        *,
        accept: Callable[[Generator], bool],
        budget_s: float | None,
    ) -> None:
        """Distil candidate copies and write out the first that meets the fidelity bound and passes the recheck
        (else the one meeting the bound that fails fewest rechecks) in place of the perturbed copy (same artifact
        name); evidence["written_copy"] says which copy was written and lists every candidate tried. The first
        candidate is a fresh student; with recovered targets to unlearn, up to unlearned_perturbed_copies perturbed
        copies trained away from them follow: they start from the upload's weights, within reach of the bound."""
        written: dict[str, Any] = {"copy": "perturbed", "init": out.evidence.get("init")}
        out.evidence["written_copy"] = written
        no_fresh = None
        if not can_reinitialise(original):
            no_fresh = "the upload's body has no layers to re-initialise: no fresh copy"
        elif budget_s is not None and budget_s <= 0:
            no_fresh = "no time left in the check's budget for a fresh copy"
        if no_fresh is not None:
            written["note"] = no_fresh
            recovered = self._recovered_targets(ctx, original, p)[0] if p["unlearn"] else []
            detectors = _detectors_to_recheck(recovered) if p["recheck"] else []
            self._recheck_perturbed_copy(ctx, out, written, detectors, budget_s, why=no_fresh)
            return
        timer = Timer()
        unlearning, unlearned = self._unlearning(ctx, original, p) if p["unlearn"] else (None, [])
        detectors = _detectors_to_recheck(unlearned) if p["recheck"] else []
        attempts = 1 if unlearning is None else 1 + int(p["unlearned_perturbed_copies"])
        tried: list[dict[str, Any]] = []
        chosen: _Candidate | None = None
        # what the perturbed copies unlearn: the recovered targets, then what a recheck found on an earlier candidate
        targets_rows = list(unlearned)

        def left() -> float | None:
            return None if budget_s is None else budget_s - timer.elapsed

        for attempt in range(attempts):
            if attempt and _spent(left()):
                break
            fresh = attempt == 0
            # the fresh student unlearns with the penalty as built; each perturbed copy gets its own bank
            penalty = unlearning if fresh or unlearning is None else unlearning.restarted()
            seed = ctx.config.seed + max(attempt - 1, 0) * RETRY_SEED_OFFSET
            trained = self._candidate(
                ctx,
                original,
                p,
                init="reinit" if fresh else "perturb",
                seed=seed,
                penalty=penalty,
                accept=accept,
                budget_s=left(),
            )
            row: dict[str, Any] = {"copy": "fresh" if fresh else "perturbed, unlearned", "seed": seed}
            row.update(steps=trained.steps, cut_short=trained.stopped_early)
            row["meets_bound"] = not trained.stopped_early and accept(trained.student)
            if penalty is not None:
                row["unlearned_targets"] = int(penalty.targets.shape[0])
            tried.append(row)
            if not row["meets_bound"]:
                continue
            row["rechecked"], finds = _recheck(ctx, trained.student, detectors, left())
            candidate = _Candidate(trained, row, penalty, targets_rows[: row.get("unlearned_targets", 0)])
            if chosen is None or candidate.rank < chosen.rank:
                chosen = candidate
            if not _failed(row["rechecked"]):
                break
            if unlearning is not None and p["unlearn_recheck_finds"] and attempt + 1 < attempts:
                unlearning, added = self._unlearn_finds(ctx, original, p, unlearning, targets_rows, finds, row)
                targets_rows += added
        written["candidates"] = tried
        if chosen is None:
            self._record_unlearning(written, unlearned, unlearning)  # no candidate met the bound: nothing was extended
            written["note"] = f"{_missed(tried)}: the perturbed copy is written"
            self._recheck_perturbed_copy(
                ctx, out, written, detectors, left(), why="no candidate met the fidelity bound"
            )
            return
        trained, row = chosen.trained, chosen.row
        self._record_unlearning(written, chosen.unlearned, chosen.penalty)
        row["written"] = True
        kind = str(row["copy"])
        written["rechecked"] = rechecked = row["rechecked"]
        if kind != "fresh":
            fresh = tried[0]
            why = (
                f"still failed {', '.join(_failed(fresh['rechecked']))}"
                if fresh["meets_bound"]
                else f"did not meet the fidelity bound in {_steps_run(fresh)}"
            )
            written["note"] = f"the fresh copy {why}: a perturbed copy kept from the recovered targets is written"
        artifact, problem = export_sanitized(ctx, self.name, trained.student.eval())
        if artifact is None:  # a failed export may have left a partial file under the shared name: write it again
            export_sanitized(ctx, self.name, ctx.shared[SHARED_MODELS][self.name])
            written["note"] = f"the {kind} copy could not be written ({problem}): the perturbed copy is written"
            return
        behaviour, triggers, _ = copy_evidence(
            self.name,
            ctx,
            original,
            trained.student,
            n_eval=int(p["n_eval"]),
            tolerance_factor=float(p["tolerance_factor"]),
        )
        written.update(
            copy=kind,
            init=trained.init,
            steps=trained.steps,
            rounds=trained.rounds,
            round_steps=trained.round_steps,
            round_notes=trained.round_notes,
            train_seconds=trained.seconds,
            **behaviour,
            triggers=triggers,
        )
        out.artifacts = [a for a in out.artifacts if a.name != artifact.name] + [artifact]
        unlearnt = f", kept from {len(unlearned)} recovered target(s)" if unlearned else ""
        out.evidence["model_artifact"] = artifact.name
        ratios = [t["tardis_ratio"] for t in triggers if "tardis_ratio" in t]
        tardis = f", TarDis at recovered triggers ×{min(ratios):.3g} or more" if ratios else ""
        student = "a fresh student" if kind == "fresh" else "a perturbed copy trained away from the recovered targets"
        out.summary += (
            f"; written: {student} (ExpDis {behaviour['expdis_relative']:.2g}× output variance{tardis}{unlearnt}"
            f"{_recheck_clause(rechecked)})"
        )

    def _recheck_perturbed_copy(
        self,
        ctx: ScanContext,
        out: CheckResult,
        written: dict[str, Any],
        detectors: list[str],
        seconds_left: float | None,
        *,
        why: str,
    ) -> None:
        """Recheck the perturbed reference copy when it is what gets written: it is deployed in place of the
        upload all the same, so the summary names a detector that still fails on it or did not run on it."""
        rechecked, _ = _recheck(ctx, ctx.shared[SHARED_MODELS][self.name], detectors, seconds_left)
        written["rechecked"] = rechecked
        if rechecked:
            out.summary += f"; written: the perturbed copy ({why}{_recheck_clause(rechecked)})"

    def _candidate(
        self,
        ctx: ScanContext,
        original: Generator,
        p: dict[str, Any],
        *,
        init: StudentInit,
        seed: int,
        penalty: TargetUnlearning | None,
        accept: Callable[[Generator], bool],
        budget_s: float | None,
    ) -> DistillResult:
        """A copy to write out: fresh_copy_rounds rounds from `init`; round 1 may train longer when it unlearns."""
        return self._distill(
            ctx,
            original,
            p,
            seed=seed,
            accept=accept,
            budget_s=budget_s,
            init=init,
            rounds=int(p["fresh_copy_rounds"]),
            penalty=penalty,
            steps_factor=1 if penalty is None else int(p["unlearn_steps_factor"]),
        )

    @staticmethod
    def _record_unlearning(
        written: dict[str, Any], unlearned: list[dict[str, Any]], unlearning: TargetUnlearning | None
    ) -> None:
        if unlearning is not None:
            rows = [dict(row) for row in unlearned]  # a later candidate may have raised a floor: its own
            for row, floor, closest in zip(rows, unlearning.floors.tolist(), unlearning.closest, strict=True):
                row["floor_mean"] = floor
                row["closest_found_mean"] = closest  # the last search on the student, before its last steps
            written["unlearned"] = rows

    def _unlearning(
        self, ctx: ScanContext, original: Generator, p: dict[str, Any]
    ) -> tuple[TargetUnlearning | None, list[dict[str, Any]]]:
        """The penalty that keeps the fresh copy from the targets failed detectors recovered, and what it
        unlearns: a hint's image where the trigger was found for a hint, else the upload's output at the
        recovered z* (_recovered_targets)."""
        rows, images = self._recovered_targets(ctx, original, p)
        if not images:
            return None, []
        targets = torch.stack(images)
        floors = self._floors(ctx, original, p, targets, rows)
        penalty = TargetUnlearning(
            targets,
            floors,
            max_norm=typical_radius(original.latent),
            weight=float(p["unlearn_weight"]),
            refresh_every=int(p["unlearn_every"]),
            restarts=int(p["unlearn_restarts"]),
            search_steps=int(p["unlearn_steps"]),
            seed=ctx.config.seed,
        )
        return penalty, rows

    def _recovered_targets(
        self, ctx: ScanContext, original: Generator, p: dict[str, Any]
    ) -> tuple[list[dict[str, Any]], list[torch.Tensor]]:
        """What the failed detectors recovered, as rows ({source, target}) and output-shaped images. Only a
        detector that failed counts: a passing one records its best find on benign models too (a digit a benign
        model draws well is not to be unlearned)."""
        hints = {t.name: t.tensor for t in ctx.targets}
        rows: list[dict[str, Any]] = []
        images: list[torch.Tensor] = []
        seen: set[str] = set()
        for i, entry in enumerate(ctx.shared.get(RECOVERED_TRIGGERS) or []):
            if len(images) >= int(p["unlearn_max_targets"]):
                break
            source = str(entry.get("source", "")) if isinstance(entry, dict) else ""
            result = ctx.results.get(source)
            if result is None or result.status != "fail":
                continue
            hint = entry.get("target")
            image = hints.get(hint) if isinstance(hint, str) else entry.get("output")
            key = f"hint:{hint}" if isinstance(hint, str) else f"{source}#{i}"
            if not isinstance(image, torch.Tensor) or image.numel() != original.output.numel or key in seen:
                continue
            if not bool(torch.isfinite(image).all()):
                continue
            seen.add(key)
            images.append(image.reshape(original.output.shape).float().cpu())
            rows.append({"source": source, "target": hint if isinstance(hint, str) else "the upload's output at z*"})
        return rows, images

    def _floors(
        self,
        ctx: ScanContext,
        original: Generator,
        p: dict[str, Any],
        targets: torch.Tensor,
        rows: list[dict[str, Any]],
    ) -> torch.Tensor:
        """Per target: unlearn_floor × the median per-element distance of the upload's samples to it (recorded in
        `rows`). The same samples for every call of a scan (its own rng stream)."""
        z = original.latent.sample(int(p["n_eval"]), generator=ctx.rng(self.name + ".unlearn"), device=original.device)
        samples = original.generate(z).float().cpu().flatten(1)
        typical = torch.cdist(targets.flatten(1), samples).pow(2).div(original.output.numel).median(1).values
        floors = float(p["unlearn_floor"]) * typical
        for row, level, floor in zip(rows, typical, floors, strict=True):
            row.update(samples_median_mean=float(level), floor_mean=float(floor))
        return floors

    def _unlearn_finds(
        self,
        ctx: ScanContext,
        original: Generator,
        p: dict[str, Any],
        unlearning: TargetUnlearning,
        unlearned: list[dict[str, Any]],
        finds: list[tuple[str, torch.Tensor]],
        candidate: dict[str, Any],
    ) -> tuple[TargetUnlearning, list[dict[str, Any]]]:
        """The penalty for the next candidate, from the outputs a failed recheck recovered on this one (at the
        detector's z*); `unlearned` describes the penalty's targets in order. Why: a candidate that still fails
        novelty draws an isolated plateau (the bench's poisoning in-sample seed 2: both perturbed copies
        1.04-1.06× over the line, .notes/sanitization.md "stop 31"). Nearer an unlearned target than the upload's
        typical sample, that output is the target's remnant held just outside its floor: the floor is raised to
        unlearn_floor_raise × that distance (never beyond the typical sample's). Farther, it is a plateau of the
        copy's own making that no recovered target names: it becomes a target with its own floor."""
        rows: list[dict[str, Any]] = []
        images: list[torch.Tensor] = []
        known = unlearning.targets.flatten(1)
        floors = unlearning.floors.clone()
        typical = torch.tensor([float(row["samples_median_mean"]) for row in unlearned])
        for source, output in finds:
            image = output.reshape(1, -1).float().cpu()
            if image.shape[1] != known.shape[1] or not bool(torch.isfinite(image).all()):
                continue
            nearest = (known - image).pow(2).mean(1)
            which = int(nearest.argmin())
            distance = float(nearest[which])
            note: dict[str, Any] = {"source": source, "nearest_unlearned": which, "nearest_unlearned_mean": distance}
            candidate.setdefault("recheck_finds", []).append(note)
            if distance < float(typical[which]):
                raised = min(
                    float(p["unlearn_floor_raise"]) * max(distance, float(floors[which])), float(typical[which])
                )
                note["floor_raised"] = [float(floors[which]), raised]
                floors[which] = max(float(floors[which]), raised)
                continue
            note["added"] = True
            rows.append(
                {"source": source, "target": f"the {candidate['copy']} copy's (seed {candidate['seed']}) output at z*"}
            )
            images.append(image.reshape(original.output.shape))
        if not images:
            return unlearning.extended(floors), []
        targets = torch.stack(images)
        return unlearning.extended(floors, targets, self._floors(ctx, original, p, targets, rows)), rows


@dataclass
class _Candidate:
    """A copy that met the fidelity bound, with its row of evidence and what it was trained away from."""

    trained: DistillResult
    row: dict[str, Any]
    penalty: TargetUnlearning | None
    unlearned: list[dict[str, Any]]

    @property
    def rank(self) -> tuple[int, int]:
        """Lower is better: rechecks failed, then rechecks that could not run (budget, error)."""
        rechecked = self.row["rechecked"]
        return len(_failed(rechecked)), len(_unverified(rechecked))


def _steps_run(candidate: dict[str, Any]) -> str:
    return f"{candidate['steps']} steps{' (cut short)' if candidate['cut_short'] else ''}"


def _missed(tried: list[dict[str, Any]]) -> str:
    """Why no candidate copy was written: each one tried missed the fidelity bound."""
    steps = ", ".join(f"{row['copy']}: {_steps_run(row)}" for row in tried)
    return f"no candidate copy met the fidelity bound ({steps})"


def _spent(seconds_left: float | None) -> bool:
    return seconds_left is not None and seconds_left <= 0


def _detectors_to_recheck(unlearned: list[dict[str, Any]]) -> list[str]:
    """The failed detectors whose recovered targets the copy unlearns and that a rescan of the copy would run
    before any sanitization: novelty, bf_oi.outliers, far_gain alone; a hinted ob_oi.reconstruction with what it
    requires (calibration.controls, bf_oi.closest), as a rescan would calibrate it on the copy."""
    from scanner.checks import load_all  # the registry as a scan sees it, also when this check runs alone

    names = {str(row["source"]) for row in unlearned}
    return sorted(n for n in names if n in load_all() and not any(_sanitizes(r) for r in _with_requirements(n)))


def _sanitizes(check: str) -> bool:
    return check.split(".", 1)[0] == "sanitization"


def _with_requirements(name: str) -> list[str]:
    """`name` after every check it requires, transitively (requirements first, each once)."""
    order: list[str] = []
    entered: set[str] = set()

    def visit(check: str) -> None:
        if check in entered or check not in CHECKS:
            return
        entered.add(check)  # before its requirements: a cycle ends here instead of recursing
        for required in CHECKS[check].requires:
            visit(required)
        order.append(check)

    visit(name)
    return order


def _recheck(
    ctx: ScanContext, copy: Generator, detectors: list[str], seconds_left: float | None
) -> tuple[dict[str, dict[str, Any]], list[tuple[str, torch.Tensor]]]:
    """Run each detector on the copy as a rescan would (same profile, parameters and seed, its requirements run
    on the copy first; artifacts discarded): a copy written out should not fail what failed on the upload.
    {name: status, score, threshold}, and the outputs at the triggers the failed ones recovered on the copy, as
    (detector, output)."""
    if not detectors:
        return {}, []
    if _spent(seconds_left):
        return {name: {"status": "skipped", "note": "no time left in the check's budget"} for name in detectors}, []
    rows: dict[str, dict[str, Any]] = {}
    raised: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="dgmscan-recheck-") as scratch:
        copy_ctx = ScanContext(
            copy.eval(), list(ctx.targets), ctx.config, Path(scratch), should_cancel=ctx.should_cancel
        )
        for detector in detectors:
            *required, _ = chain = _with_requirements(detector)
            for name in chain:
                if name in copy_ctx.results:
                    continue
                try:
                    copy_ctx.results[name] = CHECKS[name]().run(copy_ctx)
                except Exception as exc:  # a detector that breaks on the copy says nothing about it: recorded
                    raised[name] = f"{type(exc).__name__}: {exc}"
                    copy_ctx.results[name] = CheckResult(name=name, status="error", summary=raised[name])
            result = copy_ctx.results[detector]
            if detector in raised:
                rows[detector] = {"status": "error", "error": raised[detector]}
            else:
                rows[detector] = {"status": result.status, "score": result.score, "threshold": result.threshold}
            if required:
                rows[detector]["ran_first"] = required
            errored = [r for r in required if copy_ctx.results[r].status == "error"]
            if errored:
                rows[detector]["requirements_errored"] = errored
        found = copy_ctx.shared.get(RECOVERED_TRIGGERS) or []
    finds = [
        (str(entry["source"]), entry["output"])
        for entry in found
        if isinstance(entry, dict)
        and isinstance(entry.get("output"), torch.Tensor)
        and rows.get(str(entry.get("source")), {}).get("status") == "fail"
    ]
    return rows, finds


def _failed(rechecked: dict[str, dict[str, Any]]) -> list[str]:
    return [name for name, row in rechecked.items() if row.get("status") == "fail"]


def _unverified(rechecked: dict[str, dict[str, Any]]) -> list[str]:
    """Detectors that did not run to a verdict on the copy (no time left, or an error)."""
    return [name for name, row in rechecked.items() if row.get("status") not in ("pass", "warn", "fail")]


def _recheck_clause(rechecked: dict[str, dict[str, Any]]) -> str:
    """The summary's words on the written copy's recheck: detectors that still fail on it or could not run."""
    still, unverified = _failed(rechecked), _unverified(rechecked)
    clause = f"; {', '.join(still)} still fail(s) on it" if still else ""
    if unverified:
        clause += f"; {', '.join(unverified)} not rechecked on it ({_why_unverified(rechecked, unverified)})"
    return clause


def _why_unverified(rechecked: dict[str, dict[str, Any]], names: list[str]) -> str:
    return "; ".join(
        sorted({str(rechecked[n].get("note") or rechecked[n].get("error") or rechecked[n]["status"]) for n in names})
    )
