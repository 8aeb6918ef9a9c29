"""Detection quality: scan every zoo model with the suite, then TPR at fixed FPR, AUROC, verdict confusion.

Each zoo model is scanned twice with `scanner.suite` (open_scan_generator + execute_scan, the
same code path as `run_scan` on a file): once WITH target hints (an attacked model gets its own
target; a benign model gets every zoo target, so hint-driven checks are tested for false alarms
on exactly the targets they look for) and once WITHOUT hints.

Per-family suspicion score (for ROC curves and TPR at fixed FPR): every check gets a per-check
suspicion = status rank (pass 0, warn 1, fail 2; error/skipped 0) + the percentile of its raw
score among all scanned models, oriented so that larger = more suspicious (bf_oi.closest and
ob_oi.* scores are ratios where SMALLER is more suspicious). The family score is the max over the
family's checks. "Any" is the max over all detector families. Thresholds at a target FPR are the
(1 − FPR) quantile of benign scores; with few benign models that quantile is an extrapolation,
which the report states with the benign count.

Trigger recovery (paper Sec. V-D, OB-OI): for every recovered trigger z* in a report we compute
TarDis(G*(z*), x_target) per element against the ground-truth target; "reproduced" means
TarDis_mean ≤ REPRODUCED_TARDIS_MEAN (on the model's output scale). The same level says whether an
attack *took*: TarDis at the attacker's own trigger above it means G(trigger) is not visibly the target
(a short attack on a small model often ends so); detection is also reported for the two groups apart.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import math
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.zoo import ZooEntry, load_target
from scanner.checks.base import ScanConfig, TargetHint
from scanner.suite import execute_scan, open_scan_generator
from scanner.verdict import DETECTOR_FAMILIES, VERDICTS

log = logging.getLogger("bench.detection")

STATUS_RANK = {"pass": 0, "warn": 1, "fail": 2}
# Scores where a SMALLER value is more suspicious (distance/reconstruction ratios).
LOWER_IS_SUSPICIOUS = ("bf_oi.closest", "ob_oi.reconstruction", "ob_oi.gradient_free")
REPRODUCED_TARDIS_MEAN = 0.05  # per element on a [-1, 1] image (RMS error ≈ 0.22): visibly the target
FPR_POINTS = (0.01, 0.05)
TOOK, DID_NOT_TAKE = "backdoor took", "backdoor did not take"
AUDIO_REPRODUCED_FRACTION = 0.1


def reproduced_level(family: str) -> float:
    """REPRODUCED_TARDIS_MEAN on a zoo family's output scale: the VAE decoders draw in [0, 1], half the
    [-1, 1] width, so a quarter of the squared distance. Audio (wavegan): a drum hit is short and most
    of a clip is near silence, so the level is relative to the target's own power — the error at most
    AUDIO_REPRODUCED_FRACTION of it (a 10 dB signal-to-error ratio)."""
    if family == "wavegan":
        return AUDIO_REPRODUCED_FRACTION * _drum_power()
    return REPRODUCED_TARDIS_MEAN / 4 if family == "vae" else REPRODUCED_TARDIS_MEAN


@functools.cache
def _drum_power() -> float:
    """Mean squared sample of the drum-hit target (computed once: backdoor_took runs per record)."""
    from bench.zoo import load_target

    return float(load_target("drum").pow(2).mean())


def backdoor_took(record: dict[str, Any]) -> bool | None:
    """Whether the attack embedded its target: TarDis per element at the true trigger ≤ the reproduced
    level (None for benign models and records without a trigger)."""
    value = record.get("tardis_mean_at_trigger")
    return None if value is None else value <= reproduced_level(record["family"])


SCANNER_DIR = Path(__file__).resolve().parent.parent / "scanner"


def _scanner_source_digest() -> str:
    """A digest of the scanner package's source: part of the scan-cache key."""
    digest = hashlib.sha256()
    for path in sorted(SCANNER_DIR.rglob("*.py")):
        digest.update(path.relative_to(SCANNER_DIR).as_posix().encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def scan_entry(
    entry: ZooEntry,
    *,
    hints: bool,
    config: ScanConfig,
    artifacts_dir: Path,
    all_targets: list[str],
    evidence_of: tuple[str, ...] = (),
) -> dict[str, Any]:
    """Scan one zoo model; returns a compact JSON-able record (verdict, per-check status/score, recovery;
    the scalar evidence of the checks named in `evidence_of`)."""
    if hints:
        names = [entry.target_name] if entry.backdoored else list(all_targets)
        targets = [
            TargetHint(n, entry.target if entry.backdoored else load_target(n, entry.generator.output.value_range))
            for n in names
        ]  # type: ignore[arg-type]
    else:
        targets = []
    t0 = time.perf_counter()
    session = open_scan_generator(
        entry.generator, targets=targets, config=config, artifacts_dir=artifacts_dir, name=entry.name
    )
    report = execute_scan(session)
    duration = time.perf_counter() - t0
    record: dict[str, Any] = {
        "model": entry.name,
        "family": entry.family,
        "attack": entry.attack,
        "trigger": entry.trigger_kind,
        "target": entry.target_name,
        "seed": entry.seed,
        "hints": hints,
        "verdict": report.verdict,
        "verdict_reasons": report.verdict_reasons[:6],
        "duration_s": round(duration, 2),
        "checks": {
            c.name: {
                "status": c.status,
                "score": _finite(c.score),
                "threshold": _finite(c.threshold),
                "duration_s": round(c.duration_s, 2),
            }
            for c in report.checks
        },
        "recovered": [],
    }
    if "recipe" in entry.info:  # models made outside the zoo's spec say how
        record["recipe"] = entry.info["recipe"]
    if evidence_of:
        record["evidence"] = {c.name: _scalars(c.evidence) for c in report.checks if c.name in evidence_of}
    if entry.backdoored and entry.target is not None and entry.trigger is not None:
        g = entry.generator.eval()
        with torch.no_grad():
            true_out = g(entry.trigger.to(g.device, torch.float32)).cpu()
            record["tardis_mean_at_trigger"] = float((true_out - entry.target.reshape(true_out.shape)).pow(2).mean())
            for trig in report.recovered_triggers:
                z = trig.get("z")
                if z is None:
                    continue
                zt = torch.tensor(z, dtype=torch.float32).reshape(1, *g.latent.shape).to(g.device)
                out = g(zt).cpu()
                value = float((out - entry.target.reshape(out.shape)).pow(2).mean())
                record["recovered"].append(
                    {"source": trig.get("source"), "tardis_mean": value, "z_norm": float(zt.norm())}
                )
    return record


def _finite(x: float | None) -> float | None:
    return None if x is None or not math.isfinite(float(x)) else float(x)


def _scalars(value: Any, max_list: int = 8) -> Any:
    """`value` with tensors and lists longer than `max_list` left out (z vectors, per-radius curves):
    what a results file needs to tabulate a check's figures."""
    if isinstance(value, dict):
        return {k: v for k, v in ((k, _scalars(v, max_list)) for k, v in value.items()) if v is not _DROPPED}
    if isinstance(value, list | tuple):
        if len(value) > max_list:
            return _DROPPED
        return [v for v in (_scalars(v, max_list) for v in value) if v is not _DROPPED]
    if isinstance(value, float):
        return _finite(value)
    if value is None or isinstance(value, str | int | bool):
        return value
    return _DROPPED


_DROPPED = object()


def _scan_job(job: tuple[ZooEntry, bool, ScanConfig, Path, list[str], tuple[str, ...]]) -> dict[str, Any]:
    """One scan in a worker process (1 torch thread); a crash becomes a record, never stops the run."""
    entry, hints, config, art, all_targets, evidence_of = job
    torch.set_num_threads(1)
    try:
        rec = scan_entry(
            entry, hints=hints, config=config, artifacts_dir=art, all_targets=all_targets, evidence_of=evidence_of
        )
    except Exception as exc:  # a crash is a finding of the benchmark, not a reason to stop it
        log.exception("scan of %s failed", entry.name)
        rec = {
            "model": entry.name,
            "family": entry.family,
            "attack": entry.attack,
            "hints": hints,
            "trigger": entry.trigger_kind,
            "target": entry.target_name,
            "seed": entry.seed,
            "verdict": "crash",
            "error": repr(exc),
            "checks": {},
            "recovered": [],
            "duration_s": 0.0,
        }
    shutil.rmtree(art, ignore_errors=True)
    return rec


def run_detection(
    entries: list[ZooEntry],
    *,
    config: ScanConfig,
    out_dir: Path,
    all_targets: list[str],
    jobs: int = 1,
    scan_missing: bool = True,
    settings: tuple[bool, ...] = (True, False),
    evidence_of: tuple[str, ...] = (),
) -> list[dict[str, Any]]:
    """Scan every entry with and without hints (in `jobs` worker processes); artifacts go to a scratch folder.
    Records keep the scalar evidence of the checks named in `evidence_of`."""
    import concurrent.futures as cf
    import multiprocessing as mp

    scratch = Path(out_dir) / "scan-artifacts"
    # Finished scan records are cached per (model, hints, scan config, scanner source), so an
    # interrupted or partial run (e.g. before the slow from-scratch attacks are built) is resumed,
    # not repeated, while a changed check is scanned again.
    cache = Path(out_dir) / "scans"
    cache.mkdir(parents=True, exist_ok=True)
    cfg_key = hashlib.sha256(
        json.dumps(
            [
                config.profile,
                config.seed,
                config.device,
                config.skip,
                config.only,
                config.params,
                list(evidence_of),
                _scanner_source_digest(),
            ],
            sort_keys=True,
        ).encode()
    ).hexdigest()[:12]

    def cached(e: ZooEntry, h: bool) -> Path:
        return cache / f"{e.name}-{'hints' if h else 'nohints'}-{cfg_key}.json"

    records: list[dict[str, Any]] = []
    for e in entries:
        for h in settings:
            if cached(e, h).is_file():
                records.append(json.loads(cached(e, h).read_text()))
    done = {(r["model"], r["hints"]) for r in records}
    work = [
        (e, h, config, scratch / f"{e.name}-{'hints' if h else 'nohints'}", all_targets, evidence_of)
        for e in entries
        for h in settings
        if (e.name, h) not in done and scan_missing
    ]
    names = {e.name: e for e in entries}
    with cf.ProcessPoolExecutor(max_workers=max(1, jobs), mp_context=mp.get_context("spawn")) as pool:
        futures = [pool.submit(_scan_job, job) for job in work]
        for i, fut in enumerate(cf.as_completed(futures)):
            rec = fut.result()
            records.append(rec)
            if rec["verdict"] != "crash":
                cached(names[rec["model"]], rec["hints"]).write_text(json.dumps(rec))
            log.info(
                "detection %d/%d %s hints=%s -> %s (%.0fs)",
                i + 1,
                len(work),
                rec["model"],
                rec["hints"],
                rec["verdict"],
                rec.get("duration_s", float("nan")),
            )
    records.sort(key=lambda r: (r["model"], not r["hints"]))
    return records


# -- analysis ----------------------------------------------------------------------------------
def _suspicion_table(records: list[dict[str, Any]]) -> dict[str, np.ndarray]:
    """Per check: suspicion per record = status rank + percentile of the oriented raw score."""
    names = sorted({n for r in records for n in r["checks"]})
    table: dict[str, np.ndarray] = {}
    for name in names:
        raw = np.full(len(records), np.nan)
        rank = np.zeros(len(records))
        for i, r in enumerate(records):
            c = r["checks"].get(name)
            if c is None:
                continue
            rank[i] = STATUS_RANK.get(c["status"], 0)
            if c["score"] is not None and c["status"] in STATUS_RANK:
                raw[i] = -c["score"] if name in LOWER_IS_SUSPICIOUS else c["score"]
        valid = ~np.isnan(raw)
        pct = np.zeros(len(records))
        if valid.sum() > 1:
            order = raw[valid].argsort().argsort()
            pct[valid] = order / (valid.sum() - 1) * 0.999  # in [0, 1): never outranks a status step
        table[name] = rank + pct
    return table


def family_scores(records: list[dict[str, Any]]) -> dict[str, np.ndarray]:
    """Family → suspicion per record (max over its checks); 'any' = max over detector families."""
    table = _suspicion_table(records)
    fams: dict[str, np.ndarray] = {}
    for name, values in table.items():
        fam = name.split(".", 1)[0]
        fams[fam] = np.maximum(fams[fam], values) if fam in fams else values.copy()
    detectors = [v for f, v in fams.items() if f in DETECTOR_FAMILIES]
    if detectors:
        fams["any"] = np.max(np.stack(detectors), axis=0)
    return fams


def auroc(pos: np.ndarray, neg: np.ndarray) -> float | None:
    """Mann-Whitney AUROC (ties count one half); None when a class is empty."""
    if len(pos) == 0 or len(neg) == 0:
        return None
    greater = (pos[:, None] > neg[None, :]).sum()
    ties = (pos[:, None] == neg[None, :]).sum()
    return float((greater + 0.5 * ties) / (len(pos) * len(neg)))


def tpr_at_fpr(pos: np.ndarray, neg: np.ndarray, fpr: float) -> tuple[float | None, float | None]:
    """TPR with the threshold = the (1 − fpr) quantile of benign scores (a positive must exceed it).

    With n benign models the smallest resolvable FPR is 1/n: below that the threshold is the
    benign maximum (an extrapolation; the report says so)."""
    if len(pos) == 0 or len(neg) == 0:
        return None, None
    threshold = float(np.quantile(neg, 1 - fpr, method="higher"))
    return float((pos > threshold).mean()), threshold


def analyse(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Everything BENCHMARKS.md shows about detection, per hints setting."""
    out: dict[str, Any] = {}
    for hints in (True, False):
        recs = [r for r in records if r["hints"] == hints and r["verdict"] != "crash"]
        if not recs:
            continue
        fams = family_scores(recs)
        benign_idx = np.array([r["attack"] == "benign" for r in recs])
        groups: dict[str, np.ndarray] = {"all attacks": ~benign_idx}
        for attack in sorted({r["attack"] for r in recs} - {"benign"}):
            groups[attack] = np.array([r["attack"] == attack for r in recs])
        for trig in sorted({r["trigger"] for r in recs if r["trigger"]}):
            groups[f"trigger={trig}"] = np.array([r["trigger"] == trig for r in recs])
        for tg in sorted({r["target"] for r in recs if r["target"]}):
            groups[f"target={tg}"] = np.array([r["target"] == tg for r in recs])
        for label, took in ((TOOK, True), (DID_NOT_TAKE, False)):
            mask = np.array([backdoor_took(r) is took for r in recs])
            if mask.any():
                groups[label] = mask
        rows = []
        for group, mask in groups.items():
            for fam, scores in fams.items():
                pos, neg = scores[mask], scores[benign_idx]
                row = {
                    "group": group,
                    "family": fam,
                    "n_pos": int(mask.sum()),
                    "n_benign": int(benign_idx.sum()),
                    "auroc": auroc(pos, neg),
                }
                for fpr in FPR_POINTS:
                    row[f"tpr@{fpr:g}"], row[f"thr@{fpr:g}"] = tpr_at_fpr(pos, neg, fpr)
                rows.append(row)
        confusion: dict[str, dict[str, int]] = {}
        for r in recs:
            key = "benign" if r["attack"] == "benign" else r["attack"]
            confusion.setdefault(key, {v: 0 for v in VERDICTS})
            confusion[key][r["verdict"]] = confusion[key].get(r["verdict"], 0) + 1
        fp_sources: dict[str, int] = {}
        for r in recs:
            if r["attack"] != "benign":
                continue
            for name, c in r["checks"].items():
                if c["status"] in ("warn", "fail"):
                    fp_sources[f"{name}:{c['status']}"] = fp_sources.get(f"{name}:{c['status']}", 0) + 1
        recovery = []
        for r in recs:
            if r["attack"] == "benign":
                continue
            best = min((x["tardis_mean"] for x in r["recovered"]), default=None)
            recovery.append(
                {
                    "model": r["model"],
                    "attack": r["attack"],
                    "trigger": r["trigger"],
                    "n_recovered": len(r["recovered"]),
                    "best_tardis_mean": best,
                    "tardis_mean_at_trigger": r.get("tardis_mean_at_trigger"),
                    "reproduced": best is not None and best <= reproduced_level(r["family"]),
                }
            )
        detected = [r for r in recs if r["attack"] != "benign" and r["verdict"] in ("backdoored", "suspicious")]
        missed = [
            {
                "model": r["model"],
                "verdict": r["verdict"],
                "tardis_mean_at_trigger": r.get("tardis_mean_at_trigger"),
                "took": backdoor_took(r),
            }
            for r in recs
            if r["attack"] != "benign" and r["verdict"] not in ("backdoored", "suspicious")
        ]
        out["hints" if hints else "no_hints"] = {
            "n_models": len(recs),
            "n_benign": int(benign_idx.sum()),
            "n_backdoored": int((~benign_idx).sum()),
            "rows": rows,
            "confusion": confusion,
            "false_positive_sources": dict(sorted(fp_sources.items(), key=lambda kv: -kv[1])),
            "recovery": recovery,
            "verdict_detection_rate": len(detected) / max(int((~benign_idx).sum()), 1),
            "missed": missed,
            "median_scan_s": float(np.median([r["duration_s"] for r in recs])),
        }
    return out
