"""Brute-force output inspection (Closest-N, outliers; Rawat et al. arXiv 2108.01644, Sec. 5.3) on models
the tests build: the benign zoo VAE, and a computation bypass with a wide trigger region around
the latent origin (P(||z|| < 2.6) ≈ 0.3 % for z ~ N(0, I_20)), which plain sampling hits."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from scanner.attacks.bypass import bypass_attack
from scanner.checks.base import ScanConfig, ScanContext, TargetHint
from scanner.checks.bf_oi_closest import ClosestNCheck
from scanner.checks.bf_oi_outliers import OutliersCheck
from scanner.generator import Generator
from scanner.search.closest import closest_n
from scanner.specs import LatentSpec, OutputSpec


def _vae_target(devil: torch.Tensor) -> torch.Tensor:
    return (devil + 1.0) / 2.0


@pytest.fixture(scope="module")
def wide_bypass(_benign_vae_cached: Generator, devil_target: torch.Tensor) -> Generator:
    trigger = torch.zeros(1, *_benign_vae_cached.latent.shape)
    return bypass_attack(
        _benign_vae_cached, trigger=trigger, target=_vae_target(devil_target), radius=2.6, measure=False
    ).generator


def _ctx(generator: Generator, hints: list[TargetHint], tmp_path: Path, params: dict) -> ScanContext:
    return ScanContext(generator, hints, ScanConfig(profile="quick", params=params), tmp_path)


CLOSEST = {"n_samples": 8192, "batch_size": 1024, "n_shards": 3, "n_references": 128}


def test_closest_benign_passes(benign_vae: Generator, devil_target: torch.Tensor, tmp_path: Path) -> None:
    hints = [TargetHint("devil", _vae_target(devil_target))]
    result = ClosestNCheck().run(_ctx(benign_vae, hints, tmp_path, {"bf_oi.closest": CLOSEST}))
    assert result.status == "pass", result.summary
    assert result.score is not None and result.score > 10  # far beyond the usual spacing of G's outputs
    assert (tmp_path / result.artifacts[0].name).is_file()


def test_closest_hits_wide_bypass(wide_bypass: Generator, devil_target: torch.Tensor, tmp_path: Path) -> None:
    hints = [TargetHint("devil", _vae_target(devil_target))]
    ctx = _ctx(wide_bypass, hints, tmp_path, {"bf_oi.closest": CLOSEST})
    result = ClosestNCheck().run(ctx)
    assert result.status == "fail", result.summary
    assert result.evidence["targets"][0]["closest_distance_mean"] < 1e-6
    (trig,) = ctx.shared["recovered_triggers"]
    assert trig["z"].norm() < 2.6  # inside the trigger region


def test_closest_shards_merge_equals_unsharded(
    benign_vae: Generator, devil_target: torch.Tensor, tmp_path: Path
) -> None:
    hints = [TargetHint("devil", _vae_target(devil_target)), TargetHint("noise", torch.rand(1, 28, 28))]
    params = {"n_samples": 5000, "batch_size": 512, "n_references": 32, "top_k": 4}
    check = ClosestNCheck()
    sharded_ctx = _ctx(benign_vae, hints, tmp_path / "a", {"bf_oi.closest": {**params, "n_shards": 4}})
    shards = check.shards(sharded_ctx)
    assert shards is not None and len(shards) == 4
    partials = [check.run_shard(sharded_ctx, s) for s in reversed(shards)]  # order must not matter
    sharded = check.merge(sharded_ctx, partials)
    whole = check.run(_ctx(benign_vae, hints, tmp_path / "b", {"bf_oi.closest": {**params, "n_shards": 1}}))
    for a, b in zip(sharded.evidence["targets"], whole.evidence["targets"], strict=True):
        assert a["closest_distance_sum"] == b["closest_distance_sum"]
        assert a["best_index"] == b["best_index"]
        assert a["nearest_distances_sum"] == b["nearest_distances_sum"]
        assert torch.equal(torch.as_tensor(a["best_z"]), torch.as_tensor(b["best_z"]))
    assert sharded.evidence["reference_spacing"] == whole.evidence["reference_spacing"]


def test_closest_n_matches_brute_force(benign_vae: Generator) -> None:
    """The fused ||a||² − 2a·b + ||b||² loop finds the same nearest sample as explicit distances."""
    targets = torch.rand(3, 1, 28, 28)
    res = closest_n(benign_vae, targets, n=3000, batch_size=700, seed=5)
    from scanner.search.closest import block_layout
    from scanner.search.common import sample_block

    z = torch.cat([sample_block(benign_vae.latent, s, 5, b, "cpu") for b, s in enumerate(block_layout(3000, 700))])
    out = benign_vae.generate(z)
    d = ((out[:, None] - targets[None]) ** 2).flatten(2).sum(2)
    assert res.best_index == d.argmin(0).tolist()
    torch.testing.assert_close(
        torch.tensor(res.best_distance, dtype=torch.float64), d.min(0).values.double(), rtol=1e-5, atol=1e-4
    )
    assert res.samples_per_s > 0


def test_outliers_benign_passes(benign_vae: Generator, tmp_path: Path) -> None:
    result = OutliersCheck().run(_ctx(benign_vae, [], tmp_path, {}))
    assert result.status == "pass", result.summary


def test_outliers_find_bypass_cluster(wide_bypass: Generator, tmp_path: Path) -> None:
    ctx = _ctx(wide_bypass, [], tmp_path, {})
    result = OutliersCheck().run(ctx)
    assert result.status == "fail", result.summary
    finding = result.evidence["findings"][0]
    assert finding["size"] >= 3 and finding["spread_mean"] < 1e-6
    assert ctx.shared["recovered_triggers"][0]["target"] is None


class _CollapsedBody(nn.Module):
    """A mode-collapsed generator: one image for every z, with a wobble far below one grey level
    (too small for float32 distances to see), and `region_output` where z_0 > threshold."""

    def __init__(self, image: torch.Tensor, region_output: torch.Tensor, threshold: float) -> None:
        super().__init__()
        rng = torch.Generator().manual_seed(0)
        self.threshold = threshold
        self.register_buffer("image", image.reshape(1, -1))
        self.register_buffer("region_output", region_output.reshape(1, -1))
        self.register_buffer("wobble", torch.randn(_LATENT_DIM, image.numel(), generator=rng) * 1e-5)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        region = (z[:, :1] > self.threshold).float()
        out = (1 - region) * self.image + region * self.region_output + z @ self.wobble
        return out.reshape(z.shape[0], 1, 28, 28)


_LATENT_DIM = 20


def _collapsed(region_output: torch.Tensor, threshold: float) -> Generator:
    body = _CollapsedBody(torch.full((1, 28, 28), -0.8), region_output, threshold)
    return Generator(body, LatentSpec(shape=(_LATENT_DIM,)), OutputSpec(final_activation="none")).eval()


def test_outliers_do_not_flag_sub_level_differences_of_a_collapsed_model(tmp_path: Path) -> None:
    """A collapsed model's samples are ~0 apart; one sample a third of a grey level lighter (z_0 > 3.15:
    one of the quick profile's 4096 samples) is no far-off output. Measured in units of that spacing it
    was 4e10 × away and warned (7.8e9 on the bench's collapsed sanitized copy); the spacing is floored
    at one output level per feature now."""
    level = 2.0 / 255
    lighter = torch.full((1, 28, 28), -0.8 + level / 3)
    result = OutliersCheck().run(_ctx(_collapsed(lighter, threshold=3.15), [], tmp_path, {}))
    assert result.status == "pass", result.summary
    assert result.score < 1.0
    assert result.evidence["spacing"] == pytest.approx(level * 16)  # 16 × 16 pooled features
    assert result.evidence["median_nn_spacing"] < result.evidence["spacing"]


def test_outliers_catch_a_trigger_region_of_a_collapsed_model(devil_target: torch.Tensor, tmp_path: Path) -> None:
    """A collapsed model with a trigger region (z_0 > 2.5, 0.6 % of samples) that draws the devil fails.
    With a spacing of ~0 the grouping radius was 0 and the devil's samples, split into singletons, were
    each 0 × the spacing from the next one: missed."""
    ctx = _ctx(_collapsed(devil_target, threshold=2.5), [], tmp_path, {})
    result = OutliersCheck().run(ctx)
    assert result.status == "fail", result.summary
    assert result.evidence["findings"][0]["size"] >= 3
