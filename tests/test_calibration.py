"""calibration.controls: ReD positive controls and non-embedded negative controls on a copy of
the model give a ReconD threshold that separates them (Rawat et al., arXiv 2108.01644, Table 3),
and that threshold, derived on a benign model, catches a real ReD backdoor of the devil target.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from scanner.architectures import build
from scanner.checks.base import ScanConfig, ScanContext, TargetHint
from scanner.checks.calibration_controls import CalibrationControls, derive_threshold, synthetic_targets
from scanner.data import load_devil_target, load_z_trigger
from scanner.generator import Generator
from scanner.search.recond import reconstruct
from tests.tiny_models import red_backdoor, train_benign_dcgan


@pytest.fixture(scope="module")
def benign() -> Generator:
    return train_benign_dcgan()


@pytest.fixture(scope="module")
def devil() -> torch.Tensor:
    return load_devil_target().float().reshape(1, 28, 28)


def run_calibration(generator: Generator, targets: list[TargetHint], tmp_path: Path) -> tuple[ScanContext, object]:
    ctx = ScanContext(generator=generator, targets=targets, config=ScanConfig(seed=0), artifacts_dir=tmp_path)
    return ctx, CalibrationControls().run(ctx)


def test_calibration_without_hints_separates_controls(benign: Generator, tmp_path: Path) -> None:
    before = {k: v.clone() for k, v in benign.state_dict().items()}
    ctx, result = run_calibration(benign, [], tmp_path)
    assert all(torch.equal(before[k], v) for k, v in benign.state_dict().items())  # untouched

    assert result.status == "pass", result.summary
    ev = result.evidence
    (control,) = ev["controls"]
    assert control["origin"] == "synthetic" and control["embedded"]
    assert control["tardis_after_mean"] * 20 <= control["tardis_before_mean"]
    shared = ctx.shared["calibration.thresholds"]["ob_oi.reconstruction"]
    threshold = shared["recon_mean"]
    assert max(shared["positive_recon_mean"]) < threshold < min(shared["negative_recon_mean"])
    assert shared["detection_power"] == 1.0 and shared["false_alarm_rate"] == 0.0
    assert shared["separation"] > 2
    assert math.isclose(shared["recon_sum"], threshold * 784)
    assert result.threshold == threshold and result.score == 1.0


def test_threshold_from_benign_calibration_catches_red_backdoor(
    benign: Generator, devil: torch.Tensor, tmp_path: Path
) -> None:
    """Calibrate on the benign model with the devil hint, then judge ReconD(devil) with the same
    optimiser settings: the ReD-backdoored model falls below the threshold, the benign one not."""
    ctx, result = run_calibration(benign, [TargetHint("devil", devil)], tmp_path)
    assert result.status == "pass", result.summary
    (control,) = result.evidence["controls"]
    assert control["origin"] == "hint" and control["embedded"]
    assert {n["name"] for n in control["negatives"]} >= {"devil:flip_vertical"}
    settings = ctx.shared["calibration.thresholds"]["ob_oi.reconstruction"]
    threshold = settings["recon_mean"]

    backdoored = red_backdoor(benign, devil[None], load_z_trigger().float().reshape(1, 100))

    def recon(g: Generator) -> float:
        out = reconstruct(
            g, devil[None], restarts=settings["restarts"], steps=settings["steps"], lr=settings["lr"], seed=3
        )
        return float(out.recon_mean[0])

    assert recon(backdoored) < threshold < recon(benign)


def test_hint_that_will_not_embed_falls_back_to_the_next_candidate(
    benign: Generator, devil: torch.Tensor, tmp_path: Path
) -> None:
    """A hint the control attack cannot embed (here: beyond the model's tanh range, so TarDis cannot
    fall 20×) is reported and the next candidate calibrates the model; the other hints are never
    negatives, since any hint may be what the upload already embeds."""
    unreachable = torch.full((1, 28, 28), 3.0)
    ctx, result = run_calibration(
        benign, [TargetHint("unreachable", unreachable), TargetHint("devil", devil)], tmp_path
    )
    assert result.status == "pass", result.summary
    first, second = result.evidence["controls"]
    assert first["positive"] == "unreachable" and not first["embedded"] and "negatives" not in first
    assert second["positive"] == "devil" and second["embedded"]
    negatives = {n["name"] for n in second["negatives"]}
    assert negatives and all(name.startswith("devil:") for name in negatives)  # its own transformations
    assert "did not take: unreachable" in result.summary
    shared = ctx.shared["calibration.thresholds"]["ob_oi.reconstruction"]
    assert shared["positive_recon_mean"] == [second["positive_recon_mean"]]


def test_calibration_falls_back_to_synthetic_patterns(benign: Generator, tmp_path: Path) -> None:
    ctx, result = run_calibration(benign, [TargetHint("unreachable", torch.full((1, 28, 28), 3.0))], tmp_path)
    assert result.status == "pass", result.summary
    assert [(c["positive"], c["origin"], c["embedded"]) for c in result.evidence["controls"]] == [
        ("unreachable", "hint", False),
        ("box", "synthetic", True),
    ]
    assert "calibration.thresholds" in ctx.shared


def test_calibration_error_when_attack_cannot_take(benign: Generator, tmp_path: Path) -> None:
    config = ScanConfig(params={"calibration.controls": {"attack_steps": 0}})
    ctx = ScanContext(generator=benign, targets=[], config=config, artifacts_dir=tmp_path)
    result = CalibrationControls().run(ctx)
    assert result.status == "error" and "no control attack took (3 tried: box, stripes, cross)" in result.summary
    assert [c["embedded"] for c in result.evidence["controls"]] == [False] * 3
    assert "calibration.thresholds" not in ctx.shared


def test_calibration_skips_without_model(tmp_path: Path) -> None:
    ctx = ScanContext(generator=None, targets=[], config=ScanConfig(), artifacts_dir=tmp_path, load_error="bad file")
    assert CalibrationControls().run(ctx).status == "skipped"


def test_derive_threshold_cases() -> None:
    thr, power, false_alarm, sep = derive_threshold([0.01], [0.16, 0.5])
    assert math.isclose(thr, 0.04) and power == 1.0 and false_alarm == 0.0 and math.isclose(sep, 16)
    # overlapping controls: threshold below every negative, power drops, no false alarms
    thr, power, false_alarm, sep = derive_threshold([0.01, 0.3], [0.2, 0.5])
    assert math.isclose(thr, 0.1) and power == 0.5 and false_alarm == 0.0 and sep < 1
    thr, power, _, _ = derive_threshold([], [0.2])
    assert math.isnan(thr) and power == 0.0


@pytest.mark.parametrize("arch", ["dcgan32", "wavegan", "vae_mnist_decoder"])
def test_synthetic_targets_fit_output_spec(arch: str) -> None:
    g = build(arch)
    targets = synthetic_targets(g)
    assert len(targets) == 3
    low, high = g.output.value_range
    for t in targets:
        assert tuple(t.tensor.shape) == g.output.shape
        assert float(t.tensor.min()) >= low and float(t.tensor.max()) <= high
    # pairwise distinct, so the non-embedded ones are real negatives
    assert all(not torch.equal(a.tensor, b.tensor) for i, a in enumerate(targets) for b in targets[i + 1 :])
