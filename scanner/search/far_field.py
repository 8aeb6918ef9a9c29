"""Hint search on spheres far outside the typical set, where an OOD trigger (the paper's z = (100, …))
lives (Rawat et al. arXiv 2108.01644, Sec. 4: triggers outside P_sample's support).

Restarts on the unit scale never reach such a trigger (measured: .notes/ood_triggers.md), so the
search fixes the radius R and optimises only the direction u, z = R·u/||u||, minimising the
output-space distance to each hint. All (hint × restart) pairs of one radius run as one batch.

The radii are climbed as a ladder: each radius starts from the directions the previous one ended
at. Far out the basin of a trigger is a narrow cone (.notes/ood_triggers.md); a smaller radius has
wider, smoother basins, and its end directions point into the cone. Measured on the bench's quick-zoo
DCGAN with ReD at z = (100, …) (TarDis 0.047 at the trigger), 16 restarts, devil hint: fresh starts
at each radius reached 0.195 (150 steps) and 0.104 (600 steps) per element; the ladder at 300 steps
per radius 0.094 (cosine to the trigger 0.83).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from scanner.generator import Generator
from scanner.search.common import sample_block

FAR_FIELD_STREAM = 7


@dataclass
class FarFieldResult:
    radii: list[float]
    distance: torch.Tensor  # (T, len(radii)) best per-element squared distance to each hint at each radius
    z: torch.Tensor  # (T, *latent) the latent of each hint's overall best
    output: torch.Tensor  # (T, *out) G at that latent
    steps: int
    complete: bool  # every radius ran all its steps (False: stopped by a budget or cancellation)


def far_field_search(
    generator: Generator,
    targets: torch.Tensor,
    *,
    radii: Sequence[float],  # climbed in the given order: pass them smallest first
    restarts: int,
    steps: int,
    lr: float,
    seed: int,
    should_stop: Callable[[], bool] | None = None,
) -> FarFieldResult:
    """min over ||z|| = R of mean (G(z) − target)², for each target (T, *out) and radius.

    `generator` frozen in eval mode (common.eval_copy). The same seed gives the same starting
    directions, so two models searched with one seed are compared on equal terms."""
    device = generator.device
    n_targets = targets.shape[0]
    targets = targets.to(device).reshape(n_targets, 1, -1)
    dim = generator.latent.dim
    distance = torch.full((n_targets, len(radii)), float("inf"))
    best_z = torch.zeros(n_targets, dim)
    done = 0
    start = sample_block(generator.latent, n_targets * restarts, seed, 0, device, stream=FAR_FIELD_STREAM)
    directions = start.reshape(n_targets * restarts, dim)
    for r, radius in enumerate(radii):
        u = directions.detach().clone().requires_grad_(True)
        optimiser = torch.optim.Adam([u], lr=lr)
        for step in range(steps):
            if should_stop is not None and step > 0 and should_stop():
                break
            z = radius * u / u.norm(dim=1, keepdim=True).clamp_min(1e-12)
            out = generator(z.reshape(-1, *generator.latent.shape)).reshape(n_targets, restarts, -1)
            d = torch.nan_to_num((out - targets).pow(2).mean(2), nan=float("inf"))  # (T, restarts)
            with torch.no_grad():
                value, index = d.min(dim=1)
                better = value.cpu() < distance[:, r]
                distance[better, r] = value.cpu()[better]
                chosen = z.detach().reshape(n_targets, restarts, dim)[torch.arange(n_targets), index].cpu()
                overall = distance[:, r] <= distance.min(dim=1).values
                best_z[better & overall] = chosen[better & overall]
            optimiser.zero_grad(set_to_none=True)
            torch.where(torch.isfinite(d), d, torch.zeros_like(d)).sum().backward()
            if u.grad is not None:
                u.grad.nan_to_num_(nan=0.0, posinf=0.0, neginf=0.0)
            optimiser.step()
            done += 1
        directions = u.detach()  # the next radius starts where this one ended (the ladder)
    best_z = best_z.reshape(n_targets, *generator.latent.shape)
    with torch.no_grad():
        output = generator(best_z.to(device)).cpu()
    complete = done == len(radii) * steps
    return FarFieldResult(radii=list(radii), distance=distance, z=best_z, output=output, steps=done, complete=complete)
