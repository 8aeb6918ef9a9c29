"""Trigger distributions P_trigger of the paper's attacks (Rawat et al., arXiv 2108.01644, Section IV-A).

- in-sample: a single draw from P_sample (hard to find by sampling, looks like any other z);
- mode: the mode of P_sample (all zeros for N(0, I)) — the most probable latent;
- OOD: a latent far outside P_sample's typical set (all coordinates 100, as in the paper's issue);
- infinite support: a whole affine subspace of Z, {z : <z, u> = c}, mapped to a target *manifold*
  (the outputs of a second generator on the orthogonal component of z), used with ReD.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from scanner.attacks.base import FidelitySampler
from scanner.generator import Generator
from scanner.specs import LatentSpec, inverse_activation

TriggerKind = Literal["in-sample", "mode", "ood"]
TRIGGER_KINDS: tuple[TriggerKind, ...] = ("in-sample", "mode", "ood")
OOD_VALUE = 100.0


def in_sample_trigger(latent: LatentSpec, *, seed: int) -> torch.Tensor:
    """One draw z_trig ~ P_sample, reproducible from `seed`; shape (1, *latent.shape)."""
    return latent.sample(1, generator=torch.Generator().manual_seed(seed))


def mode_trigger(latent: LatentSpec) -> torch.Tensor:
    """The mode of P_sample: zeros for N(0, I), the centre of the box for a uniform."""
    centre = 0.0 if latent.distribution == "normal" else (latent.low + latent.high) / 2
    return torch.full((1, *latent.shape), centre)


def ood_trigger(latent: LatentSpec, *, value: float = OOD_VALUE) -> torch.Tensor:
    """A constant latent far outside P_sample (default all coordinates = 100)."""
    return torch.full((1, *latent.shape), float(value))


def make_trigger(kind: TriggerKind, latent: LatentSpec, *, seed: int = 0) -> torch.Tensor:
    """The trigger of `kind` ("in-sample" | "mode" | "ood") for `latent`."""
    if kind == "in-sample":
        return in_sample_trigger(latent, seed=seed)
    if kind == "mode":
        return mode_trigger(latent)
    if kind == "ood":
        return ood_trigger(latent)
    raise ValueError(f"unknown trigger kind {kind!r}; known: {list(TRIGGER_KINDS)}")


@dataclass
class SubspaceTrigger:
    """Infinite-support trigger: the affine subspace {z : <z, u> = offset} of Z (u a unit vector).

    Each trigger z maps to target_generator(z − <z, u>·u), i.e. the second generator applied to
    the component of z orthogonal to u, so the backdoor embeds a whole target manifold.
    """

    direction: torch.Tensor  # (1, *latent.shape), unit norm
    offset: float
    target_generator: Generator

    @classmethod
    def random(cls, latent: LatentSpec, target_generator: Generator, *, seed: int, offset: float = 30.0):
        u = torch.randn((1, *latent.shape), generator=torch.Generator().manual_seed(seed))
        return cls(direction=u / u.norm(), offset=offset, target_generator=target_generator)

    def project(self, z: torch.Tensor) -> torch.Tensor:
        """Map arbitrary latents onto the trigger subspace (keeps the orthogonal part)."""
        u = self.direction.to(z.device)
        along = (z * u).flatten(1).sum(1).reshape(-1, *([1] * (z.dim() - 1)))
        return z - along * u + self.offset * u

    def orthogonal(self, z: torch.Tensor) -> torch.Tensor:
        u = self.direction.to(z.device)
        along = (z * u).flatten(1).sum(1).reshape(-1, *([1] * (z.dim() - 1)))
        return z - along * u

    def sample(self, n: int, *, generator: torch.Generator | None = None) -> torch.Tensor:
        """n trigger latents: z ~ P_sample projected onto the subspace."""
        return self.project(self.target_generator.latent.sample(n, generator=generator))

    @torch.no_grad()
    def targets(self, z: torch.Tensor) -> torch.Tensor:
        """The target (output space) of each trigger latent."""
        tg = self.target_generator.eval()
        return tg(self.orthogonal(z).to(tg.device))

    def fidelity_sampler(self, attacked: Generator, *, batch: int = 16) -> FidelitySampler:
        """Fidelity batches for ReD: trigger latents and their pre-activation targets."""
        device = attacked.device

        def sample(_n: int, rng: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
            z = self.sample(batch, generator=rng).to(device)
            target = self.targets(z).to(device)
            return z, inverse_activation(target, attacked.output.final_activation)

        return sample
