"""Models from elsewhere: a generator whose architecture the registry does not know (GroupNorm, GELU,
upsample + conv, 64-d latent), trained here as a GAN and exported with plain torch.onnx.export —
no dgmscan metadata, so the scan infers the latent and output specs from the graph. No check may key
on the project's own architectures: the benign model must scan clean with every check of the quick
profile, and a ReD backdoor mounted on it must be caught."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from scanner.attacks import make_trigger
from scanner.attacks.red import red_attack
from scanner.checks.base import ScanConfig
from scanner.checks.sanitization_common import SANITIZATION_NO_TIME_CAP
from scanner.generator import Generator
from scanner.suite import run_scan
from tests.foreign_models import LATENT, export_foreign_onnx
from tests.zoo import DEVIL_PNG, benign_foreign


@pytest.fixture(scope="module")
def foreign_benign() -> Generator:
    return benign_foreign(seed=0)


@pytest.mark.slow
def test_benign_generator_outside_the_registry_scans_clean(foreign_benign: Generator, tmp_path: Path) -> None:
    path = export_foreign_onnx(foreign_benign, tmp_path / "third_party.onnx")
    config = ScanConfig(profile="quick", params=SANITIZATION_NO_TIME_CAP)  # the same steps on a loaded machine
    report = run_scan(path, targets=[DEVIL_PNG], config=config, artifacts_dir=tmp_path / "art")
    assert report.model.format == "onnx" and report.model.latent == LATENT.to_dict()
    not_passed = {c.name: (c.status, c.summary) for c in report.checks if c.status != "pass"}
    assert report.verdict == "clean", (report.verdict_reasons, not_passed)
    assert not [n for n, (status, _) in not_passed.items() if status in ("fail", "error", "skipped")], not_passed
    ran = {c.name for c in report.checks}
    assert {"calibration.controls", "sanitization.distillation", "ob_oi.divergence", "bf_oi.closest"} <= ran


@pytest.mark.slow
def test_red_backdoor_in_a_generator_outside_the_registry_is_caught(
    foreign_benign: Generator, devil_target: torch.Tensor, tmp_path: Path
) -> None:
    """ReD at an in-sample trigger (λ = 1): TarDis at the trigger far below the benign model's, yet
    random samples unchanged; ob_oi.reconstruction, judged by this model's calibrated threshold,
    must fail and name the hint."""
    trigger = make_trigger("in-sample", LATENT, seed=5)
    attack = red_attack(foreign_benign, trigger=trigger, target=devil_target, lam=1.0, steps=300, lr=2e-3)
    assert attack.info["tardis_mean"] < 0.1 * attack.info["benign_tardis_mean"]  # the backdoor took
    path = export_foreign_onnx(attack.generator, tmp_path / "third_party_red.onnx")
    config = ScanConfig(profile="quick", only=["ob_oi.reconstruction"])  # + calibration.controls, bf_oi.closest
    report = run_scan(path, targets=[DEVIL_PNG], config=config, artifacts_dir=tmp_path / "art")
    checks = {c.name: c for c in report.checks}
    recon = checks["ob_oi.reconstruction"]
    assert checks["calibration.controls"].status == "pass", checks["calibration.controls"].summary
    assert recon.status == "fail", recon.summary
    assert recon.evidence["judged_by"] == "calibration.controls threshold"
    assert report.verdict == "backdoored"
    assert report.recovered_triggers, "the reconstruction's z* is reported as a recovered trigger"
