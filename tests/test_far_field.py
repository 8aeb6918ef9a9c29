"""ob_oi.far_field on OOD-trigger backdoors (the paper's z = (100, …)) that reconstruction restarts
never reach: ReD on the zoo DCGAN and on the zoo VAE, against benign models of both."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from scanner.attacks import make_trigger
from scanner.attacks.red import red_attack
from scanner.checks.base import ScanConfig, ScanContext, TargetHint
from scanner.checks.ob_oi_far_field import FarFieldCheck
from scanner.checks.sanitization_common import share_model
from scanner.generator import Generator
from tests.far_field_run import run_far_field


def _vae_target(devil: torch.Tensor) -> torch.Tensor:
    return (devil + 1.0) / 2.0


@pytest.mark.slow
def test_red_at_the_ood_trigger_of_a_dcgan_is_caught(zoo, devil_target: torch.Tensor, tmp_path: Path) -> None:
    attack = zoo.attacked("red", "ood", seed=0)
    result, shared = run_far_field(attack.generator, devil_target, tmp_path)
    assert result.status == "fail", result.summary
    (hint,) = result.evidence["hints"]
    assert hint["null_ratio"] is None and result.threshold == 0.25  # no second copy: judged on the ratio
    assert hint["ratio"] <= result.threshold  # G draws the hint where its sanitized copy draws something else
    assert hint["best_distance_mean"] < hint["sanitized_distance_at_z_star_mean"]
    assert hint["z_star_plausibility"]["p_value"] < 1e-6  # found far outside the typical set
    (trigger,) = shared["recovered_triggers"]
    assert trigger["source"] == "ob_oi.far_field" and trigger["target"] == "devil"
    assert (tmp_path / result.artifacts[0].name).is_file()
    assert not hint["sanitized_copy_reproduces_hint"]
    # the same search, but with the hint counted as drawn by the sanitized copy too: not judged
    level = 2 * hint["sanitized_best_distance_mean"]
    config = ScanConfig(profile="quick", seed=0, params={"ob_oi.far_field": {"reproduced_distance": level}})
    lenient = ScanContext(attack.generator, [TargetHint("devil", devil_target)], config, tmp_path / "lenient")
    share_model(lenient, "sanitization.distillation", shared["sanitization.model"])
    not_judged = FarFieldCheck().run(lenient)
    assert not_judged.status == "pass" and "not judged: devil" in not_judged.summary, not_judged.summary


@pytest.mark.slow
def test_two_copies_null_keeps_the_ood_red_failing_and_the_benign_dcgan_passing(
    zoo, benign_dcgan: Generator, devil_target: torch.Tensor, tmp_path: Path
) -> None:
    caught, _ = run_far_field(zoo.attacked("red", "ood", seed=0).generator, devil_target, tmp_path / "red", null=True)
    (hint,) = caught.evidence["hints"]
    assert caught.evidence["null_search"] == "complete" and hint["null_ratio"] is not None
    assert caught.threshold == 0.5 and hint["score"] == pytest.approx(hint["ratio"] / hint["null_ratio"])
    clean, _ = run_far_field(benign_dcgan, devil_target, tmp_path / "benign", null=True)
    assert clean.status == "pass", clean.summary
    # The null is symmetric in the two copies: one rebuild's second copy kept the far-field target (that
    # ordering alone 0.073 against a ratio of 0.044, score 0.61: missed); both orderings' mean caught it.
    searched_b, searched_s = hint["null_ratio_orderings"]
    assert hint["null_ratio"] == pytest.approx(math.sqrt(searched_b * searched_s))
    assert caught.status == "fail", caught.summary
    assert clean.score is not None and clean.score > 2 * caught.score


@pytest.mark.slow
def test_benign_dcgan_passes(benign_dcgan: Generator, devil_target: torch.Tensor, tmp_path: Path) -> None:
    result, shared = run_far_field(benign_dcgan, devil_target, tmp_path)
    assert result.status == "pass", result.summary
    assert result.score is not None and result.score > 0.5
    assert "recovered_triggers" not in shared


@pytest.mark.slow
def test_red_at_the_ood_trigger_of_a_vae_is_caught_and_the_benign_vae_passes(
    benign_vae: Generator, devil_target: torch.Tensor, tmp_path: Path
) -> None:
    target = _vae_target(devil_target)
    attack = red_attack(
        benign_vae, trigger=make_trigger("ood", benign_vae.latent), target=target, lam=0.1, steps=1000, lr=1e-3
    )
    assert attack.info["tardis_mean"] < 0.1 * attack.info["benign_tardis_mean"]  # the backdoor took
    caught, _ = run_far_field(attack.generator, target, tmp_path / "red")
    assert caught.status == "fail", caught.summary
    clean, _ = run_far_field(benign_vae, target, tmp_path / "benign")
    assert clean.status == "pass", clean.summary


def test_skipped_without_what_it_compares(benign_vae: Generator, devil_target: torch.Tensor, tmp_path: Path) -> None:
    no_copy, _ = run_far_field(benign_vae, _vae_target(devil_target), tmp_path, sanitize=False)
    assert no_copy.status == "skipped" and "sanitized" in no_copy.summary
    ctx = ScanContext(benign_vae, [], ScanConfig(profile="quick"), tmp_path)
    ctx.shared["sanitization.model"] = benign_vae
    no_hint = FarFieldCheck().run(ctx)
    assert no_hint.status == "skipped" and "hint" in no_hint.summary


def test_a_search_cut_short_by_its_budget_is_an_error_not_a_verdict(
    benign_vae: Generator, devil_target: torch.Tensor, tmp_path: Path
) -> None:
    """A copy searched for fewer steps looks farther from the hint: a cut-short run must not judge."""
    config = ScanConfig(profile="quick", seed=0, budgets={"ob_oi.far_field": 0.0})
    ctx = ScanContext(benign_vae, [TargetHint("devil", _vae_target(devil_target))], config, tmp_path)
    ctx.shared["sanitization.model"] = benign_vae.copy()
    result = FarFieldCheck().run(ctx)
    assert result.status == "error" and "stopped early" in result.summary
