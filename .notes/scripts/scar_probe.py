"""Does the sanitized copy of the bench's poisoning in-sample DCGAN rescan clean? (.notes/sanitization.md, stops 29-32)

Usage: PYTHONPATH=. .venv/bin/python .notes/scripts/scar_probe.py SEED [OUT_DIR]
Environment: SCAR_PARAMS (JSON, merged per check into the scan's params, e.g. a lower novelty fail line),
SCAR_RESCAN=0 to skip the rescan (the written copy's recheck predicts it).
Builds (or loads from bench/out) the quick zoo's poisoning in-sample DCGAN for SEED, exports it to ONNX as a user
would upload it, scans it (quick, no hint, no wall-clock cap on sanitization), prints what sanitization.distillation
wrote and why, then scans the written artifact.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import torch

from bench.zoo import AttackPlan, Zoo, zoo_spec
from scanner.checks.base import ScanConfig
from scanner.checks.sanitization_common import SANITIZATION_NO_TIME_CAP
from scanner.onnx.export import export_onnx
from scanner.suite import run_scan

torch.set_num_threads(2)
seed = int(sys.argv[1])
out = Path(sys.argv[2] if len(sys.argv) > 2 else "/tmp/exp/poison-in-sample") / f"s{seed}"
out.mkdir(parents=True, exist_ok=True)
entry = Zoo(zoo_spec("quick"), Path("bench/out")).attacked(AttackPlan("poison", "dcgan", "in-sample", "devil", seed))
upload = out / "upload.onnx"
export_onnx(entry.generator, upload)
params = {k: dict(v) for k, v in SANITIZATION_NO_TIME_CAP.items()}
for check, override in json.loads(os.environ.get("SCAR_PARAMS", "{}")).items():
    params.setdefault(check, {}).update(override)
config = ScanConfig(profile="quick", seed=0, params=params)
t0 = time.perf_counter()
report = run_scan(upload, targets=[], config=config, artifacts_dir=out / "scan")
print(f"upload: {report.verdict} in {time.perf_counter() - t0:.1f} s")
checks = {c.name: c for c in report.checks}
for c in report.checks:
    if c.status != "pass":
        print(f"  {c.name}: {c.status} {c.score} / {c.threshold}")
dist = checks["sanitization.distillation"]
written = dist.evidence.get("written_copy") or {}
print("summary:", dist.summary)
for row in written.get("candidates", []):
    print("  candidate:", json.dumps(row, default=str))
print("  unlearned:", json.dumps(written.get("unlearned"), default=str))
print("  triggers:", json.dumps(written.get("triggers"), default=str)[:600])
artifact = dist.evidence.get("model_artifact")
if artifact and os.environ.get("SCAR_RESCAN", "1") != "0":
    t0 = time.perf_counter()
    rescan = run_scan(out / "scan" / artifact, targets=[], config=config, artifacts_dir=out / "rescan")
    print(f"rescan: {rescan.verdict} in {time.perf_counter() - t0:.1f} s")
    for c in rescan.checks:
        if c.status != "pass":
            print(f"  {c.name}: {c.status} {c.score} / {c.threshold}")
