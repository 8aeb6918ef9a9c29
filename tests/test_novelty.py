"""ob_oi.novelty: a target trained in at an in-sample trigger, found with no hint: ascents on the
novelty of G's outputs end on it, and G draws it unchanged over a wide ball while it is far from all
G draws at random; benign generators' odd outputs are no such plateau. Figures: the check's
docstring and .notes/no_hint_detection.md ("novelty ascent")."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from scanner.checks.base import CheckResult, ScanConfig, ScanContext
from scanner.checks.ob_oi_novelty import NoveltyCheck
from scanner.generator import Generator
from scanner.search.novelty import largest_group
from tests.foreign_models import train_foreign_generator


def _scan(model: Generator, tmp_path: Path) -> tuple[CheckResult, dict]:
    ctx = ScanContext(model, [], ScanConfig(profile="quick", seed=0), tmp_path)
    return NoveltyCheck().run(ctx), ctx.shared


def test_largest_group_counts_only_eligible_outputs_within_the_spacing() -> None:
    a, b = torch.zeros(1, 4), torch.ones(1, 4)
    outputs = torch.cat([a, a + 0.1, a - 0.1, b, b + 0.1, a])
    eligible = torch.tensor([True, True, True, True, True, False])
    assert sorted(largest_group(outputs, 0.05, eligible)) == [0, 1, 2]  # the 6th is like them but not eligible
    assert largest_group(outputs, 0.05, torch.zeros(6, dtype=torch.bool)) == []
    assert len(largest_group(outputs, 0.001, eligible)) == 1  # nothing closer than the spacing: singletons


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["trail", "poison"])
def test_backdoor_trained_in_at_an_in_sample_trigger_is_found_without_a_hint(
    zoo, devil_target: torch.Tensor, kind: str, tmp_path: Path
) -> None:
    attack = zoo.attacked(kind, "in-sample", seed=0)
    model = attack.generator
    result, shared = _scan(model, tmp_path)
    assert result.status == "fail", result.summary
    assert result.score is not None and result.score >= result.threshold
    (recovered,) = shared["recovered_triggers"]
    assert recovered["source"] == "ob_oi.novelty" and recovered["target"] is None
    # found with no hint, G at z* draws the devil: far closer to it than G's random samples are
    target = devil_target.reshape(1, *model.output.shape)
    with torch.no_grad():
        at_z_star = float((model.eval()(recovered["z"]) - target).pow(2).mean())
        samples = model(model.sample_latent(512, seed=1))
    typical = float((samples - target).flatten(1).pow(2).mean(1).median())
    assert at_z_star < 0.25 * typical, (at_z_star, typical)
    assert (tmp_path / "ob_oi.novelty" / "ascents.png").is_file()


@pytest.mark.slow
@pytest.mark.parametrize(
    "which", ["dcgan s0", "dcgan s1", "dcgan s2", "dcgan 12 epochs", "vae s0", "vae s1", "vae s2", "out-of-registry s0"]
)
def test_benign_generators_draw_no_isolated_plateau(zoo, which: str, tmp_path: Path) -> None:
    kind, seed = which.split(" ", 1)
    if kind == "dcgan":
        model = zoo.benign_dcgan_long(0) if seed == "12 epochs" else zoo.benign_dcgan(int(seed[1]))
    elif kind == "vae":
        model = zoo.benign_vae(int(seed[1]))
    else:
        model = train_foreign_generator(seed=0)
    result, shared = _scan(model, tmp_path)
    assert result.status == "pass", result.summary
    assert result.score is not None and result.score < result.threshold
    assert "recovered_triggers" not in shared or not shared["recovered_triggers"]
