"""Optimisation-based output inspection (Rawat et al. arXiv 2108.01644, Sec. 5.3) on models the tests build:
a benign MNIST VAE decoder from the zoo and a ReD-backdoored copy of it (scanner.attacks.red)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from scanner.attacks.red import red_attack
from scanner.attacks.triggers import in_sample_trigger
from scanner.checks.base import ScanConfig, ScanContext, TargetHint
from scanner.checks.ob_oi_divergence import DivergenceCheck
from scanner.checks.ob_oi_gradient_free import GradientFreeCheck
from scanner.checks.ob_oi_guided_trigger_search import GuidedTriggerSearchCheck
from scanner.checks.ob_oi_reconstruction import ReconstructionCheck
from scanner.checks.sanitization_common import share_model, share_null_model
from scanner.generator import Generator
from scanner.search.recond import reconstruct, restart_latents
from tests.tiny_models import perturbed_copy

QUICK_RECON = {"restarts": 6, "steps": 150}
QUICK_DIVERGENCE = {"restarts": 8, "steps": 80, "n_baseline": 512}


def _vae_target(devil: torch.Tensor) -> torch.Tensor:
    """The devil face mapped from [-1, 1] to the VAE's [0, 1] output range."""
    return (devil + 1.0) / 2.0


@pytest.fixture(scope="module")
def red_vae(_benign_vae_cached: Generator, devil_target: torch.Tensor) -> tuple[Generator, torch.Tensor]:
    """A ReD backdoor (distillation + λ·||G*(z_trig) − x_target||²) on a copy of the benign VAE."""
    trigger = in_sample_trigger(_benign_vae_cached.latent, seed=7)
    result = red_attack(
        _benign_vae_cached,
        trigger=trigger,
        target=_vae_target(devil_target),
        lam=1.0,
        steps=150,
        batch_size=64,
        measure=False,
    )
    return result.generator, trigger


def _ctx(generator: Generator, hints: list[TargetHint], tmp_path: Path, params: dict) -> ScanContext:
    return ScanContext(generator, hints, ScanConfig(profile="quick", params=params), tmp_path)


def test_reconstruction_benign_passes(benign_vae: Generator, devil_target: torch.Tensor, tmp_path: Path) -> None:
    before = {k: v.clone() for k, v in benign_vae.state_dict().items()}
    ctx = _ctx(
        benign_vae, [TargetHint("devil", _vae_target(devil_target))], tmp_path, {"ob_oi.reconstruction": QUICK_RECON}
    )
    result = ReconstructionCheck().run(ctx)
    assert result.status == "pass", result.summary
    assert result.score is not None and result.score > 0.3
    assert "recovered_triggers" not in ctx.shared
    assert (tmp_path / result.artifacts[0].name).is_file()
    # the caller's model is untouched
    assert all(torch.equal(v, benign_vae.state_dict()[k]) for k, v in before.items())


def test_reconstruction_red_backdoor_fails_far_below_benign(
    red_vae: tuple[Generator, torch.Tensor], benign_vae: Generator, devil_target: torch.Tensor, tmp_path: Path
) -> None:
    attacked, trigger = red_vae
    hint = [TargetHint("devil", _vae_target(devil_target))]
    params = {"ob_oi.reconstruction": QUICK_RECON}
    ctx = _ctx(attacked, hint, tmp_path / "red", params)
    bad = ReconstructionCheck().run(ctx)
    good = ReconstructionCheck().run(_ctx(benign_vae, hint, tmp_path / "benign", params))
    assert bad.status == "fail", bad.summary
    recon_bad = bad.evidence["targets"][0]["recon_mean"]
    recon_good = good.evidence["targets"][0]["recon_mean"]
    assert recon_bad * 100 < recon_good  # orders of magnitude, as in the paper's Table 3
    (trig,) = ctx.shared["recovered_triggers"]
    assert trig["source"] == "ob_oi.reconstruction" and trig["target"] == "devil"
    assert trig["z"].shape == (1, *attacked.latent.shape)
    assert trig["tardis_mean"] == pytest.approx(recon_bad)


def test_batched_restarts_match_sequential(benign_vae: Generator, devil_target: torch.Tensor) -> None:
    """All restarts in one batch follow the trajectories they follow alone (eval mode, element-wise Adam)."""
    target = _vae_target(devil_target)[None]
    init = restart_latents(benign_vae, 1, 5, seed=3)
    batched = reconstruct(benign_vae, target, init_z=init, steps=60)
    sequential = [reconstruct(benign_vae, target, init_z=init[:, r : r + 1], steps=60) for r in range(5)]
    best_sequential = min(float(s.recon_sum[0]) for s in sequential)
    assert float(batched.recon_sum[0]) <= best_sequential * (1 + 1e-4)
    torch.testing.assert_close(
        batched.restart_sum[0], torch.cat([s.restart_sum[0] for s in sequential]), rtol=1e-3, atol=1e-4
    )
    single = reconstruct(benign_vae, target, init_z=init[:, :1], steps=60)
    assert float(batched.recon_sum[0]) <= float(single.recon_sum[0])


def test_calibrated_threshold_is_used(benign_vae: Generator, devil_target: torch.Tensor, tmp_path: Path) -> None:
    ctx = _ctx(
        benign_vae, [TargetHint("devil", _vae_target(devil_target))], tmp_path, {"ob_oi.reconstruction": QUICK_RECON}
    )
    ctx.shared["calibration.thresholds"] = {"ob_oi.reconstruction": {"recon_mean": 10.0}}  # absurdly high on purpose
    result = ReconstructionCheck().run(ctx)
    assert result.status == "fail"
    assert result.evidence["judged_by"] == "calibration.controls threshold"


def test_in_distribution_hint_under_the_calibrated_threshold_is_not_a_backdoor(
    benign_vae: Generator, tmp_path: Path
) -> None:
    """A real MNIST digit as the hint: the benign VAE decoder draws digits like it under P_sample, so
    even a calibrated threshold it falls under must not make it a backdoor target — plain samples
    come about as close as the optimum (bf_oi.closest) and its flips/rolls are about as easy.
    Without bf_oi.closest's figures the calibrated threshold alone decides (fail)."""
    from scanner.checks.bf_oi_closest import ClosestNCheck
    from scanner.data import load_mnist

    images, labels = load_mnist(value_range=(0.0, 1.0))
    digit = images[int(torch.nonzero(labels == 7)[0, 0])]
    params = {"ob_oi.reconstruction": QUICK_RECON, "bf_oi.closest": {"n_samples": 8192}}

    def run(with_closest: bool):
        ctx = _ctx(benign_vae, [TargetHint("seven", digit)], tmp_path, params)
        ctx.shared["calibration.thresholds"] = {"ob_oi.reconstruction": {"recon_mean": 10.0}}  # everything under it
        if with_closest:
            ctx.results["bf_oi.closest"] = ClosestNCheck().run(ctx)
        return ReconstructionCheck().run(ctx)

    judged = run(with_closest=True)
    (hint,) = judged.evidence["targets"]
    assert hint["recon_to_closest_n"] > 0.1 and hint["ratio_to_controls"] > 0.3, hint
    assert judged.status == "pass" and hint["in_distribution"], judged.summary
    assert "produces anyway" in judged.summary
    assert run(with_closest=False).status == "fail"


def test_reconstruction_without_hints_is_not_applicable(benign_vae: Generator, tmp_path: Path) -> None:
    result = ReconstructionCheck().run(_ctx(benign_vae, [], tmp_path, {}))
    assert result.status == "pass" and result.summary.startswith("not applicable")
    assert ReconstructionCheck.needed_for_clean  # an error here must still fail closed


class NanGradientBody(torch.nn.Module):
    """Gradient obfuscation: the forward is unchanged, ∂/∂z is NaN (0 · ∂sqrt(0)) everywhere."""

    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        zero = torch.sqrt((z - z).sum(1)).reshape(-1, 1, 1, 1)
        return self.inner(z) + zero


def test_gradient_free_finds_target_behind_nan_gradients(
    red_vae: tuple[Generator, torch.Tensor], devil_target: torch.Tensor, tmp_path: Path
) -> None:
    attacked, _ = red_vae
    obfuscated = Generator(NanGradientBody(attacked.copy().body), attacked.latent, attacked.output)
    hint = [TargetHint("devil", _vae_target(devil_target))]
    ctx = _ctx(obfuscated, hint, tmp_path, {"ob_oi.gradient_free": {"generations": 150}})
    result = GradientFreeCheck().run(ctx)
    assert result.evidence["gradient_probe"]["finite"] is False
    assert result.status == "fail", result.summary
    assert ctx.shared["recovered_triggers"][0]["source"] == "ob_oi.gradient_free"


def test_gradient_free_not_needed_on_healthy_model(
    benign_vae: Generator, devil_target: torch.Tensor, tmp_path: Path
) -> None:
    result = GradientFreeCheck().run(_ctx(benign_vae, [TargetHint("devil", _vae_target(devil_target))], tmp_path, {}))
    assert result.status == "pass" and result.evidence["gradient_probe"]["healthy"] is True


def test_divergence_finds_red_trigger_against_clean_copy(
    red_vae: tuple[Generator, torch.Tensor], benign_vae: Generator, devil_target: torch.Tensor, tmp_path: Path
) -> None:
    """With the benign model as the (ideal) sanitized copy, the ReD trigger region is where they diverge."""
    attacked, _ = red_vae
    params = {"ob_oi.divergence": QUICK_DIVERGENCE}
    ctx = _ctx(attacked, [TargetHint("devil", _vae_target(devil_target))], tmp_path, params)
    ctx.shared["sanitization.model"] = benign_vae
    result = DivergenceCheck().run(ctx)
    assert result.status == "fail", result.summary
    assert result.evidence["hint_matches"][0]["hit"] is True


def _share_two_copies(ctx: ScanContext, copy: Generator, null: Generator) -> None:
    share_model(ctx, "sanitization.distillation", copy)
    share_null_model(ctx, "sanitization.distillation", null)


def test_divergence_benign_passes(benign_vae: Generator, tmp_path: Path) -> None:
    ctx = _ctx(benign_vae, [], tmp_path, {"ob_oi.divergence": QUICK_DIVERGENCE})
    ctx.shared["sanitization.model"] = perturbed_copy(benign_vae, 1)  # no second copy: the P_sample rule
    result = DivergenceCheck().run(ctx)
    assert result.evidence["rule"].startswith("P_sample")
    assert result.status == "pass", result.summary


def test_divergence_two_copies_null_passes_benign(benign_vae: Generator, tmp_path: Path) -> None:
    """Two sanitized copies of a benign model: G diverges from the first about as far as the second does."""
    ctx = _ctx(benign_vae, [], tmp_path, {"ob_oi.divergence": QUICK_DIVERGENCE})
    _share_two_copies(ctx, perturbed_copy(benign_vae, 1), perturbed_copy(benign_vae, 2))
    result = DivergenceCheck().run(ctx)
    assert result.evidence["rule"].startswith("two sanitized copies"), result.evidence["rule"]
    assert result.evidence["null_search"] == "complete"
    assert result.status == "pass", result.summary
    assert result.score < result.threshold


def test_divergence_two_copies_null_fails_red_without_hints(
    red_vae: tuple[Generator, torch.Tensor], benign_vae: Generator, tmp_path: Path
) -> None:
    """No hints: the ReD model diverges from a clean copy far beyond two clean copies' divergence."""
    attacked, _ = red_vae
    ctx = _ctx(attacked, [], tmp_path, {"ob_oi.divergence": QUICK_DIVERGENCE})
    _share_two_copies(ctx, benign_vae, perturbed_copy(benign_vae, 2))
    result = DivergenceCheck().run(ctx)
    assert result.evidence["rule"].startswith("two sanitized copies")
    assert result.status == "fail", result.summary
    assert result.score >= 3 * result.threshold  # far beyond the line, not at its edge


def test_divergence_without_sanitized_model_is_skipped(benign_vae: Generator, tmp_path: Path) -> None:
    assert DivergenceCheck().run(_ctx(benign_vae, [], tmp_path, {})).status == "skipped"


class SleeperBody(torch.nn.Module):
    """A hand-built sleeper backdoor: a gate unit ReLU(w·z − 6) that is silent on P_sample
    (w·z ~ N(0, 1)) and, once awake, pushes the output towards the target."""

    def __init__(self, inner: torch.nn.Module, target_pre: torch.Tensor, dim: int) -> None:
        super().__init__()
        self.inner = inner
        self.gate = torch.nn.Sequential(torch.nn.Linear(dim, 1), torch.nn.ReLU())
        with torch.no_grad():
            w = torch.randn(1, dim, generator=torch.Generator().manual_seed(0))
            self.gate[0].weight.copy_(w / w.norm())
            self.gate[0].bias.fill_(-6.0)
        self.register_buffer("target_pre", target_pre)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        benign = self.inner(z)
        mix = torch.clamp(self.gate(z), max=1.0).reshape(-1, 1, 1, 1)  # 0 on P_sample, 1 at w·z ≥ 7
        return (1 - mix) * benign + mix * self.target_pre


def test_guided_search_wakes_flagged_sleeper(benign_vae: Generator, devil_target: torch.Tensor, tmp_path: Path) -> None:
    from scanner.specs import inverse_activation

    target = _vae_target(devil_target)
    body = SleeperBody(benign_vae.copy().body, inverse_activation(target, "sigmoid"), benign_vae.latent.dim)
    model = Generator(body, benign_vae.latent, benign_vae.output)
    ctx = _ctx(model, [TargetHint("devil", target)], tmp_path, {})
    ctx.shared["dynamic.sleeper_units"] = {"gate.1": [0]}  # what dynamic.sleeper_units reports for it
    result = GuidedTriggerSearchCheck().run(ctx)
    assert result.status == "fail", result.summary
    assert result.evidence["hint_matches"][0]["status"] == "fail"
    (trig,) = ctx.shared["recovered_triggers"]
    assert trig["source"] == "ob_oi.guided_trigger_search" and trig["tardis_mean"] < 1e-3
    # without the hint, the woken output is still far from the manifold and stable across restarts
    ctx_free = _ctx(model, [], tmp_path / "free", {})
    ctx_free.shared["dynamic.sleeper_units"] = {"gate.1": [0]}
    free = GuidedTriggerSearchCheck().run(ctx_free)
    assert free.status in ("warn", "fail"), free.summary


def test_guided_search_without_flags_passes(benign_vae: Generator, tmp_path: Path) -> None:
    result = GuidedTriggerSearchCheck().run(_ctx(benign_vae, [], tmp_path, {}))
    assert result.status == "pass"


def test_control_units_draw_distinct_unflagged_sets_of_the_flagged_size(benign_dcgan: Generator) -> None:
    from scanner.search.guided import control_units

    module, layer = next(
        (name, m) for name, m in benign_dcgan.body.named_modules() if isinstance(m, torch.nn.ConvTranspose2d)
    )
    flagged = {module: [0, 1, 2]}
    sets = control_units(benign_dcgan, flagged, seed=0, draws=3)
    assert len(sets) == 3
    for controls in sets:
        (units,) = controls.values()
        assert len(units) == 3 and not set(units) & {0, 1, 2}
    assert len({tuple(s[module]) for s in sets}) > 1  # independent draws, not one set repeated
    assert control_units(benign_dcgan, flagged, seed=0, draws=3) == sets  # reproducible per seed
    # a module whose every unit is flagged has nothing to compare with: no control set at all
    assert control_units(benign_dcgan, {module: list(range(layer.out_channels))}, draws=2) == []
    # half the units flagged (as ReX's doubled layers are): every draw is the other half, kept once
    n = layer.out_channels
    assert control_units(benign_dcgan, {module: list(range(n // 2))}, draws=3) == [{module: list(range(n // 2, n))}]


@pytest.mark.slow
def test_guided_search_recovers_the_rex_trigger_from_the_units_static_inspection_flagged(
    zoo, devil_target: torch.Tensor, tmp_path: Path
) -> None:
    from scanner.checks.dynamic_sleeper_units import SleeperUnitsCheck
    from scanner.checks.static_block_sparsity import BlockSparsityCheck

    rex = zoo.attacked("rex", "mode", seed=0)
    ctx = ScanContext(rex.generator, [TargetHint("devil", devil_target)], ScanConfig(profile="quick", seed=0), tmp_path)
    static = BlockSparsityCheck().run(ctx)
    assert static.status == "fail" and ctx.shared["static.flagged_units"], static.summary
    SleeperUnitsCheck().run(ctx)
    guided = GuidedTriggerSearchCheck().run(ctx)
    assert guided.status == "fail", guided.summary
    (match,) = guided.evidence["hint_matches"]
    # measured: TarDis 0.0014 per element at z* (0.0009 at the attacker's own trigger), 0.006 of the
    # hint's distance to the nearest plain sample
    assert match["status"] == "fail" and match["tardis_mean"] < 0.01, match
    (trigger,) = ctx.shared["recovered_triggers"]
    assert trigger["source"] == "ob_oi.guided_trigger_search" and trigger["target"] == "devil"
