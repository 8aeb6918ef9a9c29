"""Where does ob_oi.novelty fail on the written copy of the bench's poisoning OOD DCGAN?
(.notes/sanitization.md, stop 36)

Usage: PYTHONPATH=. .venv/bin/python .notes/scripts/copy_novelty_probe.py [OUT_DIR]
Loads (or builds into bench/out) the quick zoo's poisoning DCGAN at the OOD trigger (seed 0), scans it as the bench's
whole quick profile does (devil hint, no override, wall-clock caps on), loads the sanitized checkpoint it writes, and
runs the novelty ascent (the quick profile's settings, scan seed 0) on the upload, on the written copy and on the
benign DCGAN of the same seed. Per model: the output variance over random samples; per ascent end: ||z||, the raw
per-element squared distances (novelty = to the nearest bank output, spread = to G within 0.5 prior std), the end's
distance to a blank (all -1) image and to the devil, and how many of 32768 random samples G draws within half the
end's novelty of it. Then each model's best end evaluated by the other models. Writes OUT_DIR/probe.json and strips
of the ends (OUT_DIR/<model>_ends.png).

FORCE_PERTURBED=1 counts the fresh student as missing the fidelity bound (its training is marked cut short), so
the perturbed unlearned copies are trained and one of them written, as on stop 35's build of this model.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from itertools import combinations
from pathlib import Path

import torch

from bench.zoo import AttackPlan, Zoo, zoo_spec
from scanner.checks.base import ScanConfig, TargetHint
from scanner.checks.sanitization_distillation import DistillationSanitization
from scanner.generator import Generator
from scanner.loading import load_generator
from scanner.search import novelty as nv
from scanner.search.common import eval_copy, sample_block
from scanner.search.imaging import save_strip
from scanner.suite import execute_scan, open_scan_generator

torch.set_num_threads(2)
out = Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/exp/poison-ood-copy")
out.mkdir(parents=True, exist_ok=True)
zoo = Zoo(zoo_spec("quick"), Path("bench/out"))
entry = zoo.attacked(AttackPlan("poison", "dcgan", "ood", "devil", 0))
if os.environ.get("FORCE_PERTURBED") == "1":
    trained_candidate = DistillationSanitization._candidate

    def _fresh_misses(self, ctx, original, p, *, init, **kw):  # noqa: ANN001, ANN003, ANN202
        trained = trained_candidate(self, ctx, original, p, init=init, **kw)
        return dataclasses.replace(trained, stopped_early=True) if init == "reinit" else trained

    DistillationSanitization._candidate = _fresh_misses  # type: ignore[method-assign]

devil = entry.target.reshape(entry.generator.output.shape).float()

t0 = time.perf_counter()
session = open_scan_generator(
    entry.generator,
    targets=[TargetHint("devil", devil)],
    config=ScanConfig(profile="quick", seed=0),
    artifacts_dir=out / "scan",
)
report = execute_scan(session)
print(f"upload: {report.verdict} in {time.perf_counter() - t0:.0f} s", flush=True)
checks = {c.name: c for c in report.checks}
for c in report.checks:
    if c.status != "pass":
        print(f"  {c.name}: {c.status} {c.score} / {c.threshold}")
dist = checks["sanitization.distillation"]
print("distillation:", dist.summary)
copy = load_generator(out / "scan" / dist.evidence["model_artifact"])
models: dict[str, Generator] = {
    "upload": eval_copy(entry.generator),
    "copy": eval_copy(copy),
    "benign": eval_copy(zoo.benign("dcgan", 0).generator),
}

record: dict[str, object] = {"verdict": report.verdict, "distillation": dist.summary}
best: dict[str, torch.Tensor] = {}
for name, g in models.items():
    t0 = time.perf_counter()
    found = nv.novelty_ascent(
        g, n_bank=4096, n_pool=32768, restarts=16, steps=200, lr=0.05, k_nearest=8, sigma=0.5, n_spread=64, seed=0
    )
    with torch.no_grad():
        pool = torch.cat([g(b).flatten(1) for b in sample_block(g.latent, 32768, 0, 9, g.device, 0).split(1024)])
        ends = found.outputs.flatten(1)
        near = torch.stack(
            [
                ((pool - e).pow(2).mean(1) < 0.5 * n * found.spacing).sum()
                for e, n in zip(ends, found.novelty, strict=True)
            ]
        )
    isolation = found.novelty / found.spread.clamp_min(1e-12)
    order = isolation.argsort(descending=True)
    best[name] = found.z[order[0] : order[0] + 1]
    rows = []
    for i in order.tolist():
        rows.append(
            {
                "z_norm": float(found.z[i].norm()),
                "isolation": float(isolation[i]),
                "novelty_raw": float(found.novelty[i] * found.spacing),
                "spread_raw": float(found.spread[i] * found.spacing),
                "to_blank": float((ends[i] + 1).pow(2).mean()),
                "to_devil": float((ends[i] - devil.flatten()).pow(2).mean()),
                "pool_within_half_novelty": int(near[i]),
            }
        )
    record[name] = {
        "seconds": time.perf_counter() - t0,
        "score_median_isolation": float(isolation.median()),
        "spacing": found.spacing,
        "output_variance_mean": float(pool.var(0).mean()),
        "pool_to_blank_median": float((pool + 1).pow(2).mean(1).median()),
        "pool_to_devil_median": float((pool - devil.flatten()).pow(2).mean(1).median()),
        "ends": rows,
    }
    save_strip([*found.outputs[order[:8]]], g.output, out / f"{name}_ends.png")
    print(name, json.dumps({k: v for k, v in record[name].items() if k != "ends"}), flush=True)
    for r in rows[:6]:
        print("   ", json.dumps(r))

cross = {}
with torch.no_grad():
    for at, z in best.items():
        outs = {name: g(z.to(g.device)).flatten(1) for name, g in models.items()}
        pairs = {f"{a}_vs_{b}": float((outs[a] - outs[b]).pow(2).mean()) for a, b in combinations(outs, 2)}
        cross[at] = pairs | {f"{a}_to_blank": float((outs[a] + 1).pow(2).mean()) for a in outs}
record["cross_at_best_end"] = cross
print("cross:", json.dumps(cross, indent=1))
(out / "probe.json").write_text(json.dumps(record, indent=1))
