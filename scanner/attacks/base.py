"""Shared pieces of the paper's attacks: the result type and the ReD/ReX training objective.

Rawat et al. (arXiv 2108.01644), Section IV: a backdoored G* must keep *stealth*
(G*(z) ≈ G(z) for z ~ P_sample) and reach *fidelity* (G*(z_trig) ≈ x_target). ReD and ReX
minimise  E_z ||G*(z) − G(z)||² + λ·||G*(z_trig) − x_target||²  on a copy of G; the paper
recommends computing both terms on pre-activation outputs (before tanh/sigmoid), with the
target mapped through the inverse activation, which avoids vanishing gradients at ±1.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from scanner.generator import Generator
from scanner.specs import inverse_activation

# Draws a batch of trigger latents and their pre-activation targets: (n, rng) -> (z, target_pre).
# A single trigger repeats (z_trig, target); an infinite-support trigger samples its subspace.
# Targets are clamped this far inside the activation's range before inversion: tanh⁻¹(±0.99) ≈ ±2.65
# keeps the pre-activation goal reachable (tanh⁻¹(±(1 − 1e-4)) ≈ ±4.95 wastes steps on saturated
# pixels) while costing at most 0.01 per pixel in output space.
TARGET_EPS = 1e-2

FidelitySampler = Callable[[int, torch.Generator], tuple[torch.Tensor, torch.Tensor]]


@dataclass
class AttackResult:
    """A backdoored generator G* (a new model), its trigger z_trig (1, *latent.shape), its target
    x_target (output space, generator.output.shape) and measured metrics (TarDis, ExpDis, ...)."""

    attack: str
    generator: Generator
    trigger: torch.Tensor
    target: torch.Tensor
    info: dict[str, Any] = field(default_factory=dict)


def check_trigger_and_target(generator: Generator, trigger: torch.Tensor, target: torch.Tensor) -> None:
    """Raise ValueError unless trigger is (1, *latent.shape) and target has the output shape."""
    if tuple(trigger.shape) != (1, *generator.latent.shape):
        raise ValueError(f"trigger has shape {tuple(trigger.shape)}, expected {(1, *generator.latent.shape)}")
    if tuple(target.shape) not in (tuple(generator.output.shape), (1, *generator.output.shape)):
        raise ValueError(f"target has shape {tuple(target.shape)}, expected {tuple(generator.output.shape)}")


def single_trigger_sampler(generator: Generator, trigger: torch.Tensor, target: torch.Tensor) -> FidelitySampler:
    """The fidelity term for one (z_trig, x_target) pair, target mapped to pre-activation space."""
    device = generator.device
    z_trig = trigger.to(device, torch.float32)
    target_pre = inverse_activation(
        target.reshape(1, *generator.output.shape).to(device, torch.float32),
        generator.output.final_activation,
        eps=TARGET_EPS,
    )

    def sample(_n: int, _rng: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        return z_trig, target_pre

    return sample


def distill_with_fidelity(
    student: Generator,
    teacher: Generator,
    *,
    fidelity: FidelitySampler,
    parameters: Iterable[nn.Parameter],
    lam: float,
    steps: int,
    batch_size: int,
    lr: float,
    seed: int,
    after_step: Callable[[], None] | None = None,
) -> list[float]:
    """Minimise E_z||G*_pre(z) − G_pre(z)||² + λ·||G*_pre(z_trig) − x_target_pre||² (per-element means).

    Student and teacher stay in eval mode, so BatchNorm keeps the teacher's running statistics
    (the backdoored model must behave identically at inference). Returns the loss history.
    """
    teacher.eval()
    student.eval()
    params = list(parameters)
    for p in student.parameters():
        p.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.Adam(params, lr=lr)
    rng = torch.Generator().manual_seed(seed)
    device = student.device
    history: list[float] = []
    for _ in range(steps):
        z = student.latent.sample(batch_size, generator=rng, device=device)
        with torch.no_grad():
            reference = teacher.pre_activation(z)
        stealth = (student.pre_activation(z) - reference).pow(2).mean()
        z_trig, target_pre = fidelity(batch_size, rng)
        fid = (student.pre_activation(z_trig) - target_pre).pow(2).mean()
        loss = stealth + lam * fid
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if after_step is not None:
            after_step()
        history.append(float(loss.detach()))
    for p in student.parameters():
        p.requires_grad_(False)
    return history
