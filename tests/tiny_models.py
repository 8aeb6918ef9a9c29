"""Tiny models built in seconds for the sanitization and calibration tests."""

from __future__ import annotations

import torch

from scanner.architectures import build
from scanner.data import load_mnist
from scanner.generator import Generator


def train_benign_dcgan(seed: int = 0, n: int = 512, steps: int = 200) -> Generator:
    """A benign small DCGAN: regress G(P·x) = x on MNIST digits (P a fixed random projection,
    standardised), so G maps N(0, I) latents to varied digit-like images."""
    torch.manual_seed(seed)
    images, _ = load_mnist()
    images = images[:n].reshape(n, 1, 28, 28).float()
    rng = torch.Generator().manual_seed(seed)
    projection = torch.randn(784, 100, generator=rng)
    z = images.reshape(n, -1) @ projection
    z = (z - z.mean(0)) / z.std(0)
    g = build("dcgan28", {"base": 16}).eval()
    optimiser = torch.optim.Adam(g.parameters(), 2e-3)
    for _ in range(steps):
        idx = torch.randint(0, n, (64,), generator=rng)
        loss = (g(z[idx]) - images[idx]).pow(2).mean()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    return g.requires_grad_(False).eval()


def red_backdoor(benign: Generator, target: torch.Tensor, z_trigger: torch.Tensor, steps: int = 300) -> Generator:
    """ReD (paper Sec. IV): min E||G*(z) − G(z)||² + λ||G*(z_trig) − x_target||², λ = 10."""
    attacked = benign.copy().requires_grad_(True).eval()
    optimiser = torch.optim.Adam(attacked.parameters(), 1e-3)
    rng = torch.Generator().manual_seed(1)
    for _ in range(steps):
        z = torch.randn(32, 100, generator=rng)
        loss = (attacked(z) - benign(z)).pow(2).mean() + 10 * (attacked(z_trigger) - target).pow(2).mean()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    return attacked.requires_grad_(False).eval()


def perturbed_copy(g: Generator, seed: int, scale: float = 0.01) -> Generator:
    """A copy of `g` with N(0, scale²) added to every parameter: a stand-in for a sanitized copy, which
    differs from the upload a little everywhere (`g` itself is untouched)."""
    copy = g.copy()
    with torch.no_grad():
        for p in copy.parameters():
            p.add_(scale * torch.randn(p.shape, generator=torch.Generator().manual_seed(seed)))
    return copy
