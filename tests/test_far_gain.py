"""ob_oi.far_gain: a planted far (OOD) trigger found with no hint, from G's own far field.

A rectifier generator's pre-activation grows linearly with ‖z‖ far out; a backdoor at the paper's OOD
trigger z = (100, …) pins it to the target's level in one direction (Rawat et al., arXiv 2108.01644,
Sec. IV). Figures: the check's docstring and .notes/no_hint_detection.md.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch import nn

from scanner.checks.base import CheckResult, ScanConfig, ScanContext, TargetHint
from scanner.checks.ob_oi_far_gain import FarGainCheck
from scanner.generator import Generator
from scanner.search.common import eval_copy
from scanner.search.far_gain import far_gain_search, rms_pre_activation
from scanner.specs import LatentSpec, OutputSpec


def _scan(
    model: Generator, tmp_path: Path, hints: list[TargetHint] | None = None, **params
) -> tuple[CheckResult, dict]:
    config = ScanConfig(profile="quick", seed=0, params={"ob_oi.far_gain": params} if params else {})
    ctx = ScanContext(model, hints or [], config, tmp_path)
    return FarGainCheck().run(ctx), ctx.shared


def _cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.nn.functional.cosine_similarity(a.flatten().float(), b.flatten().float(), dim=0))


def _assert_caught(
    model: Generator, result: CheckResult, shared: dict, trigger: torch.Tensor, target: torch.Tensor
) -> None:
    assert result.status == "fail", result.summary
    assert result.score is not None and result.score >= result.threshold
    (recovered,) = shared["recovered_triggers"]
    assert recovered["source"] == "ob_oi.far_gain" and recovered["target"] is None
    # found with no hint, it points at the attacker's trigger, and along it, at the trigger's norm, G draws
    # the target: closer to it than G at most other directions of that norm. (z* itself may lie at another
    # radius of the ladder, and the least gain lies beside the trigger, where the planted output and the far
    # field's growth cancel: measured 0.69/element from the devil at z*, 0.23 along u* at the trigger's norm.)
    z_star = recovered["z"].reshape(1, -1)
    assert _cosine(z_star, trigger) > 0.9
    norm = trigger.float().norm()
    along = (z_star / z_star.norm() * norm).reshape(1, *model.latent.shape)
    others = torch.randn(256, z_star.numel(), generator=torch.Generator().manual_seed(0))
    others = (others / others.norm(dim=1, keepdim=True) * norm).reshape(-1, *model.latent.shape)
    target = target.reshape(1, *model.output.shape)
    with torch.no_grad():
        to_target = float((model(along) - target).pow(2).mean())
        typical = float((model(others) - target).flatten(1).pow(2).mean(1).median())
    assert to_target < 0.5 * typical, (to_target, typical)


def test_red_at_the_ood_trigger_is_caught_without_hints(zoo, devil_target: torch.Tensor, tmp_path: Path) -> None:
    attack = zoo.attacked("red", "ood", seed=0)
    result, shared = _scan(attack.generator, tmp_path)
    _assert_caught(attack.generator, result, shared, attack.trigger, devil_target)
    assert (tmp_path / result.artifacts[0].name).is_file()


@pytest.mark.slow
def test_a_benign_dcgan_trained_longer_passes(zoo, tmp_path: Path) -> None:
    """Trained 12 epochs, a DCGAN's far field has low-gain directions of its own, and its typical shell
    sits far above the straight line its rays settle on: judged against a smaller radius (the first rule)
    this model scored 11-18, a fail; judged against the ray's far asymptote it passes."""
    model = zoo.benign_dcgan_long(seed=0)
    result, shared = _scan(model, tmp_path)
    assert result.status == "pass", result.summary
    assert "recovered_triggers" not in shared
    assert max(result.evidence["ratio_per_radius"]) > 5  # anisotropic, as trained GANs become
    z_star = result.evidence["z_star"].reshape(1, *model.latent.shape)
    with torch.no_grad():
        frozen = eval_copy(model)
        toward_shell = 10 * rms_pre_activation(frozen, z_star / 10) / rms_pre_activation(frozen, z_star)
    assert float(toward_shell) > 5  # what the first rule read as a deficit


def test_benign_generators_pass(benign_dcgan: Generator, benign_vae: Generator, tmp_path: Path) -> None:
    for model in (benign_dcgan, benign_vae):
        result, shared = _scan(model, tmp_path)
        assert result.status == "pass", result.summary
        assert "recovered_triggers" not in shared
        # a rectifier far field: the median gain grows with the radius (10 → 100 × √dim)
        assert result.evidence["growth"] > 5
        # the pattern route's premise: where the gain cancels, G draws nothing smoother than elsewhere
        # (measured: robust z -4 to -10 on these two)
        assert max(result.evidence["coherence_z_per_radius"]) < 0, result.evidence["coherence_z_per_radius"]
        assert max(result.evidence["pattern_route_score_per_radius"]) == 0


def test_trail_at_the_ood_trigger_is_caught_by_the_picture_along_its_low_gain_ray(
    zoo, devil_target: torch.Tensor, tmp_path: Path
) -> None:
    """TrAIL trains the target into a low-slope straight ray (deficit ≈ 1.3 on the bench zoo's model, which
    the deficit route misses): what gives it away is that along that ray G draws a picture, smoother than
    the textures it draws along random directions of the same radius."""
    attack = zoo.attacked("trail", "ood", seed=0)
    result, shared = _scan(attack.generator, tmp_path)
    assert result.status == "fail", result.summary
    pattern = result.evidence["pattern_route_score_per_radius"]
    assert max(pattern) >= result.threshold, result.evidence  # the pattern route alone clears the line
    best = max(range(len(pattern)), key=pattern.__getitem__)
    assert result.evidence["coherence_z_per_radius"][best] >= result.evidence["pattern_min_coherence_z"]
    assert (
        result.evidence["coherence_least_gain_per_radius"][best]
        > (result.evidence["coherence_random_median_per_radius"][best])
    )


def test_a_smooth_picture_along_a_straight_low_gain_ray_is_caught(tmp_path: Path) -> None:
    """A linear map (no bend anywhere: deficit 1) whose weak input direction draws a smooth blob while every
    other direction draws noise: the deficit route cannot see it, the pattern route fails it. With a noise
    pattern in the same weak direction (test_an_anisotropic_linear_far_field_is_not_a_plant) it passes."""
    rng = torch.Generator().manual_seed(2)
    side, dim = 8, 8
    noise = torch.randn(side * side, dim - 1, generator=rng)
    grid = torch.arange(side, dtype=torch.float32) - (side - 1) / 2
    blob = torch.exp(-(grid[:, None] ** 2 + grid[None, :] ** 2) / 8).reshape(-1, 1)
    weight = torch.cat([noise, 0.02 * blob / blob.norm()], dim=1)
    result, shared = _scan(_linear_generator(weight), tmp_path)
    assert result.status == "fail", result.summary
    assert result.evidence["failed_by"] == "pattern"
    assert max(result.evidence["growth_deficit_per_radius"]) < 1.5  # straight rays: the deficit sees nothing
    assert max(result.evidence["deficit_route_score_per_radius"]) < result.threshold
    assert "smoother" in result.summary
    (recovered,) = shared["recovered_triggers"]
    assert abs(_cosine(recovered["z"], torch.eye(dim)[-1])) > 0.99  # the blob's direction


def test_hint_distance_is_reported(zoo, devil_target: torch.Tensor, tmp_path: Path) -> None:
    attack = zoo.attacked("red", "ood", seed=0)
    result, _ = _scan(attack.generator, tmp_path, hints=[TargetHint("devil", devil_target.reshape(1, 28, 28))])
    assert 0 <= result.evidence["hint_distance_at_z_star"]["devil"] < 1.0  # benign far outputs: ≈ 2.6


class _Linear(nn.Module):
    def __init__(self, weight: torch.Tensor) -> None:
        super().__init__()
        self.weight = nn.Parameter(weight)
        self.side = math.isqrt(weight.shape[0])

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return (z @ self.weight.T).reshape(-1, 1, self.side, self.side)


def _linear_generator(weight: torch.Tensor) -> Generator:
    """G(z) = tanh(W z) drawn as a square image (W: side² × dim)."""
    dim, side = weight.shape[1], math.isqrt(weight.shape[0])
    return Generator(
        _Linear(weight),
        LatentSpec(shape=(dim,)),
        OutputSpec(shape=(1, side, side), value_range=(-1.0, 1.0), final_activation="tanh"),
    )


def test_search_finds_the_direction_of_least_gain() -> None:
    """A linear map with one weak input direction: the least gain on every sphere is R·σ_min along it."""
    rng = torch.Generator().manual_seed(0)
    u, _ = torch.linalg.qr(torch.randn(16, 16, generator=rng))
    v, _ = torch.linalg.qr(torch.randn(8, 8, generator=rng))
    singular = torch.tensor([1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.01])
    weight = u[:, :8] @ torch.diag(singular) @ v.T
    g = eval_copy(_linear_generator(weight))
    found = far_gain_search(g, radii=[10.0, 100.0], restarts=4, steps=300, lr=0.05, n_reference=256, seed=0)
    assert found.complete
    for r, radius in enumerate(found.radii):
        assert float(found.least_gain[r]) == pytest.approx(radius * 0.01 / 4, rel=0.2)  # RMS over 16 elements
        assert abs(_cosine(found.z[r], v[:, 7])) > 0.99
    assert float(found.ratio.min()) > 50


def test_an_anisotropic_linear_far_field_is_not_a_plant(tmp_path: Path) -> None:
    """A weak input direction far below its sphere, but growing along its ray like every other: pass, however
    weak. (The bench zoo's VAE decoders are such generators: ratio 12-17, ray deficit ≈ 1; so are DCGANs
    trained 50-100 epochs, ratio up to 29.) The geometric mean alone would fail this one: its ratio carries
    √(ratio · deficit) over the line by itself, and the deficit's own line is what keeps it a pass."""
    rng = torch.Generator().manual_seed(1)
    u, _ = torch.linalg.qr(torch.randn(16, 16, generator=rng))
    v, _ = torch.linalg.qr(torch.randn(8, 8, generator=rng))
    weight = u[:, :8] @ torch.diag(torch.tensor([1.0] * 7 + [0.005])) @ v.T
    result, shared = _scan(_linear_generator(weight), tmp_path)
    assert result.status == "pass", result.summary
    # below its sphere, as a plant would be: √(ratio · deficit) over the fail line ...
    assert max(result.evidence["geometric_mean_per_radius"]) > result.threshold
    assert max(result.evidence["growth_deficit_per_radius"]) < 1.5  # ... but it grows along its ray
    assert max(result.evidence["pattern_route_score_per_radius"]) < result.threshold  # and draws no picture
    assert "recovered_triggers" not in shared


def test_a_scale_invariant_far_field_is_said_to_give_little(tmp_path: Path) -> None:
    """Normalised right after the input, the pre-activation does not grow: the check says it sees little."""
    body = nn.Sequential(nn.Linear(8, 32), nn.LayerNorm(32), nn.ReLU(), nn.Linear(32, 16), nn.Unflatten(1, (1, 4, 4)))
    torch.manual_seed(0)
    g = Generator(
        body, LatentSpec(shape=(8,)), OutputSpec(shape=(1, 4, 4), value_range=(-1.0, 1.0), final_activation="tanh")
    )
    result, _ = _scan(g, tmp_path)
    assert result.status == "pass", result.summary
    assert result.evidence["growth"] < 2
    assert "sees little" in result.summary


def test_budget_stops_the_search_and_says_so(zoo, tmp_path: Path) -> None:
    g = zoo.attacked("red", "ood", seed=0).generator
    config = ScanConfig(profile="quick", seed=0, budgets={"ob_oi.far_gain": 0.0})
    ctx = ScanContext(g, [], config, tmp_path)
    result = FarGainCheck().run(ctx)
    assert result.evidence["complete"] is False
    assert "stopped early" in result.summary


def test_the_scanned_model_is_left_untouched(benign_dcgan: Generator, tmp_path: Path) -> None:
    before = {k: v.clone() for k, v in benign_dcgan.body.state_dict().items()}
    requires_grad = [p.requires_grad for p in benign_dcgan.parameters()]
    _scan(benign_dcgan, tmp_path)
    after = benign_dcgan.body.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert [p.requires_grad for p in benign_dcgan.parameters()] == requires_grad


@pytest.mark.slow
def test_a_default_scan_without_hints_catches_red_at_the_ood_trigger(zoo, tmp_path: Path) -> None:
    """The whole quick profile (what `dgmscan scan MODEL` runs), no target hint, on the ReD-OOD upload saved
    as a user's file: backdoored on ob_oi.far_gain's finding, and the trigger it reports points at the
    attacker's (the no-hint bench: 10/11 with far_gain in quick, 8/11 before)."""
    from scanner.verdict import exit_code
    from tests.zoo import default_scan_without_hints

    attack = zoo.attacked("red", "ood", seed=0)
    report = default_scan_without_hints(attack.generator, tmp_path)
    far_gain = next(c for c in report.checks if c.name == "ob_oi.far_gain")
    assert far_gain.status == "fail", far_gain.summary
    assert report.verdict == "backdoored" and exit_code(report.verdict) == 1, report.verdict_reasons
    assert any(reason.startswith("ob_oi.far_gain fail") for reason in report.verdict_reasons), report.verdict_reasons
    (found,) = [t for t in report.recovered_triggers if t["source"] == "ob_oi.far_gain"]
    assert found["target"] is None
    assert _cosine(torch.tensor(found["z"], dtype=torch.float32), attack.trigger) > 0.9
