"""Helpers shared by the output-inspection searches (Rawat et al., arXiv 2108.01644, Sec. 5)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from scipy import stats

from scanner.generator import Generator
from scanner.specs import LatentSpec


def eval_copy(generator: Generator) -> Generator:
    """A frozen copy in eval mode, so searches never touch the caller's model (train mode,
    requires_grad) and BatchNorm uses running statistics (each z is then independent)."""
    frozen = generator.copy()
    frozen.eval()
    frozen.requires_grad_(False)
    return frozen


def block_generator(seed: int, block_index: int, stream: int = 0) -> torch.Generator:
    """A CPU generator for one block of latents.

    Each block of a stream has its own seed, so any range of blocks (a shard) draws exactly
    the latents the unsharded run draws for those blocks.
    """
    # Mixing with large odd constants keeps streams/blocks of nearby seeds apart.
    mixed = (seed * 0x9E3779B1 + block_index * 0x85EBCA77 + stream * 0xC2B2AE3D) % (2**63 - 1)
    return torch.Generator().manual_seed(mixed)


def sample_block(latent: LatentSpec, n: int, seed: int, block_index: int, device: torch.device, stream: int = 0):
    """The latents of block `block_index` (size n) of stream `stream` for a scan seed."""
    return latent.sample(n, generator=block_generator(seed, block_index, stream), device=device)


@dataclass(frozen=True)
class Plausibility:
    """How typical a latent z* is under P_sample.

    For N(0, I): ||z||² ~ χ²(d); `percentile` is its CDF value and `p_value` the two-sided tail
    probability (a z* with a tiny p-value lies outside the typical set, as many triggers do).
    For a uniform: whether z* lies inside the support (p_value 1 or 0).
    """

    log_density: float
    norm: float
    percentile: float
    p_value: float

    def to_dict(self) -> dict[str, float]:
        return {
            "log_density": self.log_density,
            "norm": self.norm,
            "percentile": self.percentile,
            "p_value": self.p_value,
        }


def latent_plausibility(latent: LatentSpec, z: torch.Tensor) -> Plausibility:
    """Plausibility of one latent (shape (1, *latent.shape) or latent.shape) under P_sample."""
    z = z.detach().reshape(1, -1).double().cpu()
    log_density = float(latent.log_density(z)[0])
    norm = float(z.norm())
    if latent.distribution == "normal":
        cdf = float(stats.chi2.cdf(norm**2, df=latent.dim))
        p_value = 2.0 * min(cdf, 1.0 - cdf)
        return Plausibility(log_density, norm, cdf, p_value)
    inside = math.isfinite(log_density)
    return Plausibility(log_density, norm, 1.0 if inside else 0.0, 1.0 if inside else 0.0)


def typical_radius(latent: LatentSpec, quantile: float = 0.999999) -> float:
    """The radius of the latent ball that holds `quantile` of P_sample's mass (normal), or the
    corner radius of the support (uniform). Searches clamp to a multiple of it so they do not
    run off to infinity while still reaching triggers outside the typical set."""
    if latent.distribution == "normal":
        return math.sqrt(float(stats.chi2.ppf(quantile, df=latent.dim)))
    return math.sqrt(latent.dim) * max(abs(latent.low), abs(latent.high))


def clamp_norm_(z: torch.Tensor, max_norm: float) -> None:
    """Project each row of z onto the ball of radius max_norm, in place."""
    with torch.no_grad():
        flat = z.view(z.shape[0], -1)
        norms = flat.norm(dim=1, keepdim=True).clamp_min(1e-12)
        flat.mul_(torch.clamp(max_norm / norms, max=1.0))


def per_element(value: float, numel: int) -> float:
    """A sum of squared differences as a per-element mean."""
    return value / max(numel, 1)
