"""ob_oi.far_field alone on every zoo model it is meant for: the spread of its score on benign models
(its null distribution) next to the backdoors at the OOD trigger, per hint.

The full-profile part runs the check inside the whole quick profile on three seeds; its fail lines
(score = ratio / null_ratio ≤ 0.5, the ratio alone ≤ 0.25 without a null) were set on about ten
models. This part measures them on more: benign dcgan28 and VAE decoder over every zoo seed, each
with every zoo target as hint (the digit7 hint is in-distribution: the check's weak spot), and
every zoo model attacked at the OOD trigger z = (100, …), plus ReD with the paper's λ = 0.1 for
1000 steps at that trigger on DCGAN seeds 0-1 and the VAE seed 0 (backdoors that took).

Scans run `only=["ob_oi.far_field"]` (with the sanitization.distillation it requires) at the quick
profile, sanitization without its wall-clock cap so a loaded machine makes the same copies.
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

from bench.detection import backdoor_took
from bench.full_profile import strong_red
from bench.zoo import Zoo, ZooEntry
from scanner.checks.base import ScanConfig
from scanner.checks.sanitization_common import SANITIZATION_NO_TIME_CAP

CHECK = "ob_oi.far_field"
STRONG_OOD_BASES = (("dcgan", 0), ("dcgan", 1), ("vae", 0))


def far_field_entries(zoo: Zoo, out_dir: Path) -> list[ZooEntry]:
    """Benign models of every zoo seed, the zoo's OOD-trigger attacks and the strong OOD ReD models."""
    entries = [zoo.benign(family, seed) for family in ("dcgan", "vae") for seed in zoo.spec.benign_seeds]
    entries += [zoo.attacked(p) for p in zoo.spec.attacks if p.trigger == "ood"]
    entries += [strong_red(out_dir, zoo.benign(family, seed), "ood", seed) for family, seed in STRONG_OOD_BASES]
    return entries


def far_field_config(device: str) -> ScanConfig:
    return ScanConfig(profile="quick", seed=0, device=device, only=[CHECK], params=SANITIZATION_NO_TIME_CAP)


def per_hint_rows(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (model, hint): the check's per-hint evidence with the model's ground truth."""
    rows = []
    for r in records:
        check = r.get("checks", {}).get(CHECK, {})
        hints = r.get("evidence", {}).get(CHECK, {}).get("hints") or []
        if not hints:
            rows.append(_row(r, check, None))
        rows += [_row(r, check, h) for h in hints]
    return rows


def _row(record: dict[str, Any], check: dict[str, Any], hint: dict[str, Any] | None) -> dict[str, Any]:
    took = backdoor_took(record)
    group = "benign" if record["attack"] == "benign" else ("took" if took else "did not take")
    row: dict[str, Any] = {
        "model": record["model"],
        "group": group,
        "tardis_mean_at_trigger": record.get("tardis_mean_at_trigger"),
        "check_status": check.get("status", "missing"),
    }
    if hint is None:
        return {**row, "hint": None, "status": check.get("status", "missing")}
    keys = ("score", "threshold", "ratio", "null_ratio", "own_best_ratio", "best_distance_mean")
    return {
        **row,
        "hint": hint.get("target"),
        "status": hint.get("status"),
        "copy_reproduces_hint": hint.get("sanitized_copy_reproduces_hint"),
        **{k: hint.get(k) for k in keys},
    }


def summarise(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Per group: judged (model, hint) pairs, how many failed, and the score's spread; the margins of
    the fail line to the lowest benign score and to the highest score of a backdoor that took."""
    rows = per_hint_rows(records)
    out: dict[str, Any] = {"rows": rows, "groups": {}}
    for group in ("benign", "took", "did not take"):
        mine = [r for r in rows if r["group"] == group]
        judged = [r for r in mine if r.get("score") is not None and not r.get("copy_reproduces_hint")]
        scores = sorted(float(r["score"]) for r in judged)
        out["groups"][group] = {
            "pairs": len(mine),
            "judged": len(judged),
            "not_judged_copy_reproduces": sum(bool(r.get("copy_reproduces_hint")) for r in mine),
            "not_scored": sum(r.get("score") is None for r in mine),
            "failed": sum(r["status"] == "fail" for r in mine),
            "score_min": scores[0] if scores else None,
            "score_median": statistics.median(scores) if scores else None,
            "score_max": scores[-1] if scores else None,
        }
    return out
