"""Build quick-zoo DCGAN models and scan them with only some checks (default: calibration.controls);
prints each check's status and every calibration control (.notes/calibration.md).

Usage: ONLY=ob_oi.reconstruction PYTHONPATH=. .venv/bin/python .notes/scripts/calibration_probe.py \\
    red:ood:digit7 benign:0 red:in-sample:devil:digit7,devil
(attack:trigger:target[:hint,hint] or benign:seed[:hint,...]; models cached in /tmp/probe/out)
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import torch

from bench.zoo import AttackPlan, Zoo, load_target, zoo_spec
from scanner.checks.base import ScanConfig, TargetHint
from scanner.suite import execute_scan, open_scan_generator

torch.set_num_threads(2)
zoo = Zoo(zoo_spec("quick"), Path("/tmp/probe/out"))
only = os.environ.get("ONLY", "calibration.controls").split(",")
for spec in (a.split(":") for a in sys.argv[1:]):
    t0 = time.perf_counter()
    if spec[0] == "benign":
        entry = zoo.benign("dcgan", int(spec[1]))
        names = spec[2].split(",") if len(spec) > 2 else ["devil", "digit7"]
    else:
        entry = zoo.attacked(AttackPlan(spec[0], "dcgan", spec[1], spec[2]))
        names = spec[3].split(",") if len(spec) > 3 else [entry.target_name]
    value_range = entry.generator.output.value_range
    hints = [TargetHint(n, entry.target if n == entry.target_name else load_target(n, value_range)) for n in names]
    print(entry.name, "built", round(time.perf_counter() - t0), "s", entry.info.get("tardis_mean"), flush=True)
    config = ScanConfig(profile="quick", seed=0, only=only)
    session = open_scan_generator(
        entry.generator, targets=hints, config=config, artifacts_dir=Path("/tmp/probe/a"), name=entry.name
    )
    for check in execute_scan(session).checks:
        print(" ", check.name, check.status, check.score, check.threshold, check.summary[:300])
        if check.name == "calibration.controls":
            for control in check.evidence["controls"]:
                print("   ", json.dumps(control)[:1500])
