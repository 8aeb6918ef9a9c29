"""Target-free trigger search: z where G and its sanitized copy disagree most
(Rawat et al. arXiv 2108.01644, Sec. 5: sanitization removes the backdoor but keeps P_sample
behaviour, so the trigger is where the two diverge).

max_z ||G(z) − G_s(z)||² with batched Adam restarts inside a ball of a few typical radii,
compared with the divergence over plain samples of P_sample.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from scanner.generator import Generator
from scanner.search.common import clamp_norm_, sample_block, typical_radius

DIVERGENCE_STREAM = 6


@dataclass
class DivergenceResult:
    z: torch.Tensor  # (R, *latent)
    divergence: torch.Tensor  # (R,) ||G(z) − G_s(z)||², sum over elements
    outputs: torch.Tensor  # (R, *out) G(z)
    sanitized_outputs: torch.Tensor  # (R, *out)
    baseline: torch.Tensor  # (N,) divergence over samples of P_sample
    steps: int


def divergence_search(
    generator: Generator,
    sanitized: Generator,
    *,
    restarts: int = 16,
    steps: int = 200,
    lr: float = 0.05,
    radius_factor: float = 2.0,
    seed: int = 0,
    n_baseline: int = 1024,
    should_stop: Callable[[], bool] | None = None,
) -> DivergenceResult:
    """Both generators in eval mode and frozen (see common.eval_copy)."""
    device = generator.device
    sanitized = sanitized.to(device)

    def div(z: torch.Tensor) -> torch.Tensor:
        return ((generator(z) - sanitized(z)) ** 2).flatten(1).sum(1)

    with torch.no_grad():
        base_z = sample_block(generator.latent, n_baseline, seed, 1, device, stream=DIVERGENCE_STREAM)
        chunks = [div(base_z[i : i + 512]) for i in range(0, n_baseline, 512)]
        baseline = torch.cat(chunks) if chunks else torch.empty(0, device=device)  # n_baseline 0: no baseline
    z = sample_block(generator.latent, restarts, seed, 0, device, stream=DIVERGENCE_STREAM).requires_grad_(True)
    max_norm = radius_factor * typical_radius(generator.latent)
    optimiser = torch.optim.Adam([z], lr=lr)
    best_div = torch.full((restarts,), -1.0, device=device)
    best_z = z.detach().clone()
    done = 0
    for step in range(steps + 1):
        if should_stop is not None and step > 0 and should_stop():
            break
        d = div(z)
        with torch.no_grad():
            dd = torch.nan_to_num(d.detach(), nan=-1.0)
            better = dd > best_div
            best_div[better] = dd[better]
            best_z[better] = z.detach()[better]
        if step == steps:
            break
        optimiser.zero_grad(set_to_none=True)
        (-d.sum()).backward()
        if z.grad is not None:
            z.grad.nan_to_num_(nan=0.0, posinf=0.0, neginf=0.0)
        optimiser.step()
        clamp_norm_(z, max_norm)
        generator.latent.clamp_into_support_(z)
        done = step + 1
    with torch.no_grad():
        outputs, sanitized_outputs = generator(best_z), sanitized(best_z)
    return DivergenceResult(
        z=best_z.cpu(),
        divergence=best_div.cpu(),
        outputs=outputs.cpu(),
        sanitized_outputs=sanitized_outputs.cpu(),
        baseline=baseline.cpu(),
        steps=done,
    )
