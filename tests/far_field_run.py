"""ob_oi.far_field run on one model with the sanitized copies sanitization.distillation would share.

Shared by tests/test_far_field.py and tests/test_trained_in_backdoors.py.
"""

from __future__ import annotations

from pathlib import Path

import torch

from scanner.checks.base import CheckResult, ScanConfig, ScanContext, TargetHint
from scanner.checks.ob_oi_far_field import FarFieldCheck
from scanner.checks.sanitization_common import share_model, share_null_model
from scanner.generator import Generator
from scanner.sanitize import distill


def run_far_field(
    model: Generator, hint: torch.Tensor, tmp_path: Path, *, sanitize: bool = True, null: bool = False
) -> tuple[CheckResult, dict]:
    """The check's result and the scan's shared state (recovered triggers) for `model` with one hint.
    sanitize: share one round of sanitization.distillation's quick steps (the check runs up to five);
    null: share the second copy (other seed) that the two-copies null compares with."""
    ctx = ScanContext(model, [TargetHint("devil", hint)], ScanConfig(profile="quick", seed=0), tmp_path)
    if sanitize:
        share_model(ctx, "sanitization.distillation", distill(model, init="perturb", steps=300, seed=0).student)
    if null:
        share_null_model(ctx, "sanitization.distillation", distill(model, init="perturb", steps=300, seed=1).student)
    return FarFieldCheck().run(ctx), ctx.shared
