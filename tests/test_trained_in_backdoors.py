"""Backdoors trained in from scratch — TrAIL and data poisoning (Rawat et al., arXiv 2108.01644,
Sec. IV-A) — are flagged at every trigger kind.

These models have no added units, no multiplexer and no fine-tuned copy to compare with, so static
inspection has little to find; output inspection carries the detection: at in-sample and mode
triggers the hint reconstructs far better than its negative controls (ob_oi.reconstruction), at the
OOD trigger it is drawn far out where sanitized copies draw something else (ob_oi.far_field).
Measured on this project's test zoo (quick profile, seed 0; figures in .notes/ood_triggers.md).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from scanner.attacks import AttackResult
from scanner.checks.base import ScanConfig, ScanContext, TargetHint
from scanner.checks.ob_oi_reconstruction import ReconstructionCheck
from tests.far_field_run import run_far_field


def _tardis_at_trigger(attack: AttackResult, target: torch.Tensor) -> float:
    g = attack.generator
    with torch.no_grad():
        return float((g(attack.trigger) - target.reshape(1, *g.output.shape)).pow(2).mean())


@pytest.mark.slow
@pytest.mark.parametrize("trigger", ["in-sample", "mode"])
def test_trail_hint_reconstructs_far_below_its_controls(
    zoo, devil_target: torch.Tensor, trigger: str, tmp_path: Path
) -> None:
    attack = zoo.attacked("trail", trigger, seed=0)
    assert _tardis_at_trigger(attack, devil_target) < 0.1  # the backdoor took (measured 0.035, 0.078)
    ctx = ScanContext(attack.generator, [TargetHint("devil", devil_target)], ScanConfig(profile="quick"), tmp_path)
    result = ReconstructionCheck().run(ctx)
    # measured: ReconD 0.036 / 0.028 per element, 0.28 / 0.19 of the negative controls: a warn
    # (suspicious), not a fail (≤ 0.1) — a model trained with the target in its data reconstructs
    # other shapes fairly well too
    assert result.status in ("warn", "fail"), result.summary
    assert result.score is not None and result.score <= 0.3


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["trail", "poison"])
def test_trained_in_backdoor_at_the_ood_trigger_fails_the_far_field_search(
    zoo, devil_target: torch.Tensor, kind: str, tmp_path: Path
) -> None:
    attack = zoo.attacked(kind, "ood", seed=0)
    result, shared = run_far_field(attack.generator, devil_target, tmp_path, null=True)
    # measured: TrAIL (TarDis 0.064 at the trigger) score 0.055, poisoning (0.29: a weak backdoor)
    # 0.102, fail line 0.5; plain reconstruction passes both (1.13 and 1.04 of the controls)
    assert result.status == "fail", result.summary
    (trigger,) = shared["recovered_triggers"]
    assert trigger["source"] == "ob_oi.far_field"
