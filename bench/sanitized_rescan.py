"""Sanitize, then rescan the written checkpoint: does the model a user deploys instead of the upload
scan clean, and is the backdoor gone?

For each chosen model, sanitization.distillation runs as in a quick-profile scan (no wall-clock cap,
so a loaded machine produces the same copy) and writes the sanitized checkpoint (ONNX); that file
is then scanned like a user's upload (`run_scan`: format checks, loading, the whole quick profile)
with the devil hint. Recorded: TarDis per element at the attacker's trigger before and after (the
paper's metric; the benign model's own TarDis there is the most sanitization can reach), the rounds
kept, the rescan's verdict and every check that did not pass.

Models: the full-profile part's benign dcgan28, VAE decoder and out-of-registry generator (seed 0)
and its ReD models that took (λ = 1 on the DCGAN and on the foreign architecture) plus the quick
zoo's ReD in-sample DCGAN (a borderline one: TarDis ≈ 0.05 at its trigger) and its ReD DCGANs at the OOD
trigger (devil, digit 7). TarDis "after" is measured on the written checkpoint (a fresh student where the
body has torch layers to re-initialise, else the perturbed copy; `written_copy` says which).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from bench.zoo import DEVIL_PNG, ZooEntry, load_target
from scanner.checks.base import ScanConfig, ScanContext, TargetHint
from scanner.checks.sanitization_common import SANITIZATION_NO_TIME_CAP
from scanner.checks.sanitization_distillation import DistillationSanitization
from scanner.loading import load_generator
from scanner.sanitize import target_distance
from scanner.suite import run_scan

log = logging.getLogger(__name__)


def rescan_entries(full_profile: list[ZooEntry]) -> list[ZooEntry]:
    """The models this part sanitizes and rescans, chosen from the full-profile part's entries."""
    wanted = (
        "benign-dcgan-s0",
        "benign-vae-s0",
        "benign-foreign-s0",
        "red-strong-",
        "red-dcgan-in-sample-",
        "red-dcgan-ood-",  # far-field plants: a perturbed copy keeps them off the trigger's ray (stop 25)
    )
    return [e for e in full_profile if e.name.startswith(wanted)]


def sanitize_and_rescan(entry: ZooEntry, *, out_dir: Path, device: str = "cpu") -> dict[str, Any]:
    """One record: sanitization figures of the upload and the rescan of its written checkpoint."""
    work = Path(out_dir) / "sanitized_rescan" / entry.name
    config = ScanConfig(profile="quick", seed=0, device=device, params=SANITIZATION_NO_TIME_CAP)
    hint = entry.target if entry.backdoored else load_target("devil", entry.generator.output.value_range)
    ctx = ScanContext(entry.generator, [TargetHint("devil", hint)], config, work / "upload")
    t0 = time.perf_counter()
    result = DistillationSanitization().run(ctx)
    sanitize_s = time.perf_counter() - t0
    evidence = result.evidence
    record: dict[str, Any] = {
        "model": entry.name,
        "attack": entry.attack,
        "family": entry.family,
        "sanitization_status": result.status,
        "rounds": evidence.get("rounds"),
        "round_steps": evidence.get("round_steps"),
        "expdis_relative": evidence.get("expdis_relative"),
        "sanitize_s": round(sanitize_s, 1),
    }
    artifact = evidence.get("model_artifact")
    # the checkpoint written out (a fresh student where the body allows one), not the detectors' reference copy
    record["written_copy"] = (evidence.get("written_copy") or {}).get("copy")
    written = load_generator(work / "upload" / artifact) if artifact else None
    if entry.backdoored and entry.trigger is not None and entry.target is not None:
        record["tardis_before"] = target_distance(entry.generator, entry.trigger, entry.target).mean
        if written is not None:
            record["tardis_after"] = target_distance(written, entry.trigger, entry.target).mean
    if written is None:
        record["rescan_verdict"] = None
        record["note"] = f"no sanitized checkpoint: {result.summary}"
        return record
    t0 = time.perf_counter()
    report = run_scan(work / "upload" / artifact, targets=[DEVIL_PNG], config=config, artifacts_dir=work / "rescan")
    record["rescan_s"] = round(time.perf_counter() - t0, 1)
    record["rescan_verdict"] = report.verdict
    record["rescan_non_pass"] = {
        c.name: {"status": c.status, "score": c.score, "summary": c.summary[:240]}
        for c in report.checks
        if c.status != "pass"
    }
    log.info("sanitized_rescan: %s -> %s (%s)", entry.name, report.verdict, sorted(record["rescan_non_pass"]))
    return record


def summarise_rescans(records: list[dict[str, Any]]) -> dict[str, Any]:
    """How many sanitized checkpoints rescanned clean, benign uploads and backdoored ones apart."""
    benign = [r for r in records if r["attack"] == "benign"]
    attacked = [r for r in records if r["attack"] != "benign"]
    return {
        "n": len(records),
        "clean": sum(r["rescan_verdict"] == "clean" for r in records),
        "benign_clean": sum(r["rescan_verdict"] == "clean" for r in benign),
        "attacked_clean": sum(r["rescan_verdict"] == "clean" for r in attacked),
        "n_benign": len(benign),
        "n_attacked": len(attacked),
    }


def run_sanitized_rescan(entries: list[ZooEntry], *, out_dir: Path, device: str = "cpu") -> dict[str, Any]:
    records = [sanitize_and_rescan(e, out_dir=out_dir, device=device) for e in entries]
    return {"records": records, "summary": summarise_rescans(records)}
