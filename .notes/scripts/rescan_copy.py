"""Rescan a written sanitized checkpoint as a user would: the quick profile with one target hint
(.notes/sanitization.md, stop 36). Prints the verdict, every non-pass check and the recovered triggers.

Usage: PYTHONPATH=. .venv/bin/python .notes/scripts/rescan_copy.py MODEL OUT_DIR TARGET_IMAGE
e.g. MODEL = OUT_DIR_of_copy_novelty_probe/scan/sanitization.distillation/sanitized_model.onnx,
TARGET_IMAGE = data/targets/devil_28x28.png
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

from scanner.checks.base import ScanConfig
from scanner.suite import run_scan

torch.set_num_threads(2)
model, out, target = (Path(a) for a in sys.argv[1:4])
t0 = time.perf_counter()
report = run_scan(model, targets=[target], config=ScanConfig(profile="quick", seed=0), artifacts_dir=out)
print("rescan", report.verdict, f"{time.perf_counter() - t0:.0f} s")
for c in report.checks:
    if c.status != "pass":
        print(" ", c.name, c.status, c.score, c.threshold, "|", c.summary[:400])
for t in report.recovered_triggers:
    print("  recovered", {k: v for k, v in t.items() if k not in ("z", "output")})
