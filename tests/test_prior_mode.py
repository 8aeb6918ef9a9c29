"""ob_oi.prior_mode: G at the latent prior's mode against its sanitized copies, with no hints.

The paper's mode trigger (z = 0; Rawat et al., arXiv 2108.01644, Sec. IV) lies where no sample of a
100-d normal prior ever comes, so the divergence search, which starts from samples, never looks
there. Figures: the check's docstring and .notes/no_hint_detection.md.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from scanner.attacks.red import red_attack
from scanner.checks.base import CheckResult, ScanConfig, ScanContext, TargetHint
from scanner.checks.ob_oi_prior_mode import PriorModeCheck, prior_mode
from scanner.checks.sanitization_common import SANITIZATION_NO_TIME_CAP, share_model, share_null_model
from scanner.checks.sanitization_distillation import DistillationSanitization
from scanner.generator import Generator
from scanner.specs import LatentSpec
from tests.tiny_models import perturbed_copy


def _scan_after_sanitization(model: Generator, tmp_path: Path) -> tuple[CheckResult, dict]:
    """sanitization.distillation as a quick scan runs it (both copies, no wall-clock cap), then the check."""
    ctx = ScanContext(model, [], ScanConfig(profile="quick", seed=0, params=SANITIZATION_NO_TIME_CAP), tmp_path)
    sanitization = DistillationSanitization().run(ctx)
    assert sanitization.evidence["null_copy"]["kept"], sanitization.summary
    return PriorModeCheck().run(ctx), ctx.shared


@pytest.mark.slow
def test_trail_at_the_mode_is_caught_without_hints(zoo, devil_target: torch.Tensor, tmp_path: Path) -> None:
    attack = zoo.attacked("trail", "mode", seed=0)
    g = attack.generator
    with torch.no_grad():
        assert float((g(attack.trigger) - devil_target.reshape(1, *g.output.shape)).pow(2).mean()) < 0.1  # it took
    result, shared = _scan_after_sanitization(g, tmp_path)
    assert result.status == "fail", result.summary
    assert result.score is not None and result.score >= result.threshold
    (trigger,) = shared["recovered_triggers"]
    assert trigger["source"] == "ob_oi.prior_mode" and trigger["target"] is None
    assert torch.equal(trigger["z"], torch.zeros_like(trigger["z"]))
    # what it recovered is the attacker's target, found with no hint
    assert float((trigger["output"] - devil_target.reshape(trigger["output"].shape)).pow(2).mean()) < 0.1
    assert (tmp_path / result.artifacts[0].name).is_file()


@pytest.mark.slow
def test_benign_dcgan_passes(benign_dcgan: Generator, tmp_path: Path) -> None:
    result, shared = _scan_after_sanitization(benign_dcgan, tmp_path)
    assert result.status == "pass", result.summary
    assert "recovered_triggers" not in shared
    assert len(result.evidence["distance_to_each_copy_at_mode"]) == 2  # both copies made by the scan were used


def _ctx(
    model: Generator, copies: list[Generator], tmp_path: Path, hints: list[TargetHint] | None = None
) -> ScanContext:
    ctx = ScanContext(model, hints or [], ScanConfig(profile="quick", seed=0), tmp_path)
    if copies:
        share_model(ctx, "sanitization.distillation", copies[0])
    if len(copies) > 1:
        share_null_model(ctx, "sanitization.distillation", copies[1])
    return ctx


@pytest.fixture(scope="module")
def red_vae_at_mode(_benign_vae_cached: Generator, devil_target: torch.Tensor) -> Generator:
    """ReD with the mode trigger on a copy of the benign VAE (its sigmoid output: the devil in [0, 1])."""
    mode = prior_mode(_benign_vae_cached.latent)
    return red_attack(
        _benign_vae_cached, trigger=mode, target=(devil_target + 1) / 2, lam=1.0, steps=150, measure=False
    ).generator


@pytest.mark.parametrize("n_copies", [1, 2])
def test_red_at_the_mode_fails_against_clean_copies(
    red_vae_at_mode: Generator, benign_vae: Generator, devil_target: torch.Tensor, tmp_path: Path, n_copies: int
) -> None:
    """With clean copies of the benign model standing in for sanitization; one copy: the P_sample rule."""
    copies = [benign_vae, perturbed_copy(benign_vae, 2)][:n_copies]
    hint = TargetHint("devil", (devil_target + 1) / 2)
    result = PriorModeCheck().run(_ctx(red_vae_at_mode, copies, tmp_path, [hint]))
    assert result.status == "fail", result.summary
    assert len(result.evidence["distance_to_each_copy_at_mode"]) == n_copies
    assert result.evidence["hint_distance_at_mode"]["devil"] < 0.05  # G draws the hint at the mode


def test_benign_vae_against_perturbed_copies_passes(benign_vae: Generator, tmp_path: Path) -> None:
    before = {k: v.clone() for k, v in benign_vae.state_dict().items()}
    copies = [perturbed_copy(benign_vae, 1), perturbed_copy(benign_vae, 2)]
    result = PriorModeCheck().run(_ctx(benign_vae, copies, tmp_path))
    assert result.status == "pass", result.summary
    assert result.score is not None and result.score < result.threshold
    assert all(torch.equal(v, benign_vae.state_dict()[k]) for k, v in before.items())  # the upload is untouched


def test_without_a_sanitized_copy_it_is_skipped(benign_vae: Generator, tmp_path: Path) -> None:
    assert PriorModeCheck().run(_ctx(benign_vae, [], tmp_path)).status == "skipped"


def test_the_mode_of_each_prior() -> None:
    assert torch.equal(prior_mode(LatentSpec((4,), "normal")), torch.zeros(1, 4))
    assert torch.equal(prior_mode(LatentSpec((2, 3), "uniform", low=0.0, high=2.0)), torch.ones(1, 2, 3))
