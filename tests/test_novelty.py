"""ob_oi.novelty: a target trained in at an in-sample trigger, found with no hint: ascents on the
novelty of G's outputs end on it, and G draws it unchanged over a wide ball while it is far from all
G draws at random; benign generators' odd outputs are no such plateau. Figures: the check's
docstring and .notes/no_hint_detection.md ("novelty ascent")."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from scanner.checks.base import CheckResult, ScanConfig, ScanContext
from scanner.checks.ob_oi_novelty import NoveltyCheck
from scanner.generator import Generator
from scanner.search.common import eval_copy
from scanner.search.novelty import largest_group, novelty_ascent
from scanner.specs import LatentSpec, OutputSpec


def _scan(model: Generator, tmp_path: Path, budget_s: float | None = None) -> tuple[CheckResult, dict]:
    budgets = {} if budget_s is None else {"ob_oi.novelty": budget_s}
    config = ScanConfig(profile="quick", seed=0, budgets=budgets)
    ctx = ScanContext(model, [], config, tmp_path)
    return NoveltyCheck().run(ctx), ctx.shared


@torch.no_grad()
def _distance_to_target_at_and_typical(model: Generator, z: torch.Tensor, target: torch.Tensor) -> tuple[float, float]:
    """Per-element squared distance from G(z) to the target, and the median of it over 512 random samples."""
    target = target.reshape(1, *model.output.shape)
    at_z = float((model.eval()(z) - target).pow(2).mean())
    samples = model(model.sample_latent(512, seed=1))
    return at_z, float((samples - target).flatten(1).pow(2).mean(1).median())


def test_ascent_stays_on_the_typical_shell_of_a_uniform_prior() -> None:
    """A box's corners are as atypical as a far normal sample: the ascent keeps each z at its start's
    distance from the box's centre, inside the box (the test zoo's WaveGAN ran to the corners before)."""
    torch.manual_seed(0)
    body = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 16), nn.Tanh(), nn.Unflatten(1, (1, 4, 4)))
    latent = LatentSpec(shape=(16,), distribution="uniform", low=-1.0, high=1.0)
    g = eval_copy(
        Generator(body, latent, OutputSpec(shape=(1, 4, 4), value_range=(-1.0, 1.0), final_activation="tanh"))
    )
    found = novelty_ascent(
        g, n_bank=256, n_pool=1024, restarts=8, steps=100, lr=0.05, k_nearest=4, sigma=0.5, n_spread=16, seed=0
    )
    assert found.complete and found.steps == 100
    assert found.z.abs().max() <= 1.0
    start_norms, end_norms = found.starts.norm(dim=1), found.z.norm(dim=1)
    assert torch.allclose(end_norms, start_norms, rtol=0.1), (start_norms, end_norms)
    assert float((found.z.abs() > 0.99).float().mean()) < 0.5  # not pinned to the box's faces
    assert not torch.equal(found.z, found.starts)  # it moved


def test_audio_outputs_are_skipped_with_the_reason(tmp_path: Path) -> None:
    """Measured on the test zoo's piano WaveGAN: benign 40.6, with a drum planted 44.9 — no separation,
    so the check declines audio instead of giving a verdict it cannot back (and searches nothing)."""
    torch.manual_seed(0)
    body = nn.Sequential(nn.Linear(16, 64), nn.Tanh(), nn.Unflatten(1, (1, 64)))
    latent = LatentSpec(shape=(16,), distribution="uniform", low=-1.0, high=1.0)
    audio = Generator(body, latent, OutputSpec(kind="audio", shape=(1, 64), value_range=(-1.0, 1.0)))
    result, shared = _scan(audio, tmp_path)
    assert result.status == "skipped", result.summary
    assert "not valid on audio outputs" in result.summary
    assert not shared.get("recovered_triggers") and not (tmp_path / "ob_oi.novelty").exists()


def test_budget_stops_the_search_and_says_so(zoo, tmp_path: Path) -> None:
    result, _ = _scan(zoo.benign_dcgan(0), tmp_path, budget_s=0.0)
    assert result.evidence["complete"] is False and result.evidence["steps_run"] == 0
    assert "stopped early" in result.summary


def test_the_scanned_model_is_left_untouched(zoo, tmp_path: Path) -> None:
    model = zoo.benign_dcgan(0)
    before = {k: v.clone() for k, v in model.body.state_dict().items()}
    requires_grad = [p.requires_grad for p in model.parameters()]
    mode = model.training
    _scan(model, tmp_path)
    assert all(torch.equal(before[k], v) for k, v in model.body.state_dict().items())
    assert [p.requires_grad for p in model.parameters()] == requires_grad and model.training == mode


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
    at_z_star, typical = _distance_to_target_at_and_typical(model, recovered["z"], devil_target)
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
        model = zoo.benign_foreign(0)
    result, shared = _scan(model, tmp_path)
    assert result.status == "pass", result.summary
    assert result.score is not None and result.score < result.threshold
    assert "recovered_triggers" not in shared or not shared["recovered_triggers"]


@pytest.mark.slow
def test_a_default_scan_without_hints_catches_trail_at_an_in_sample_trigger(
    zoo, devil_target: torch.Tensor, tmp_path: Path
) -> None:
    """The whole quick profile (what `dgmscan scan MODEL` runs), no target hint, on the TrAIL in-sample
    upload saved as a user's file: backdoored, on ob_oi.novelty's finding, and the trigger it reports draws
    the devil (the no-hint bench: 8/11 with novelty in quick, 6/11 before)."""
    from scanner.verdict import exit_code
    from tests.zoo import default_scan_without_hints

    model = zoo.attacked("trail", "in-sample", seed=0).generator
    report = default_scan_without_hints(model, tmp_path)
    checks = {c.name: c for c in report.checks}
    assert checks["ob_oi.novelty"].status == "fail", checks["ob_oi.novelty"].summary
    assert report.verdict == "backdoored" and exit_code(report.verdict) == 1, report.verdict_reasons
    (found,) = [t for t in report.recovered_triggers if t["source"] == "ob_oi.novelty"]
    assert found["target"] is None and found["artifact"] is not None
    z_star = torch.tensor(found["z"], dtype=torch.float32).reshape(1, *model.latent.shape)
    at_z_star, typical = _distance_to_target_at_and_typical(model, z_star, devil_target)
    assert at_z_star < 0.25 * typical, (at_z_star, typical)
