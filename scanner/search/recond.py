"""ReconD = min_z ||G(z) − x_t||² by gradient descent with batched random restarts
(optimisation-based output inspection, Rawat et al. arXiv 2108.01644, Sec. 5.3).

All restarts of all targets are optimised together: one forward and one backward per step for
the whole (targets × restarts) batch. The generator is in eval mode and Adam is element-wise,
so every restart follows exactly the trajectory it would follow alone — batching changes the
cost, not the answer. Following the paper, the loss can be taken *before* the final activation
(G.pre_activation against inverse_activation(x_t)), which avoids tanh/sigmoid saturation;
ReconD itself is always reported in output space, as a sum over elements and a per-element mean.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch

from scanner.generator import Generator
from scanner.search.common import clamp_norm_, eval_copy, sample_block
from scanner.specs import apply_activation, inverse_activation

RESTART_STREAM = 2  # latent stream the random restarts are drawn from
LossSpace = Literal["pre_activation", "output"]


@dataclass
class ReconResult:
    """Per target: the best of all restarts, judged by the output-space distance."""

    recon_sum: torch.Tensor  # (T,) ||G(z*) − x_t||², sum over output elements
    recon_mean: torch.Tensor  # (T,) the same as a per-element mean
    best_z: torch.Tensor  # (T, *latent)
    best_output: torch.Tensor  # (T, *out)
    restart_sum: torch.Tensor  # (T, R) best output-space distance each restart reached
    steps: int
    nonfinite_steps: int  # steps where some restart's loss or gradient was NaN/Inf
    stopped_early: bool


def restart_latents(generator: Generator, n_targets: int, restarts: int, seed: int) -> torch.Tensor:
    """Initial latents (T, R, *latent) drawn from P_sample, reproducible from the seed."""
    z = sample_block(generator.latent, n_targets * restarts, seed, 0, generator.device, stream=RESTART_STREAM)
    return z.reshape(n_targets, restarts, *generator.latent.shape)


def reconstruct(
    generator: Generator,
    targets: torch.Tensor,
    *,
    restarts: int = 8,
    steps: int = 200,
    lr: float = 0.05,
    seed: int = 0,
    loss_space: LossSpace = "pre_activation",
    max_norm: float | None = None,
    init_z: torch.Tensor | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> ReconResult:
    """Minimise ||G(z) − x_t||² over z for each target (T, *out) from `restarts` random starts.

    `init_z` (T, R, *latent) replaces the random starts (used to compare batched and sequential
    runs). `max_norm` projects z back onto a ball after each step (None: unconstrained, as the
    paper's ReconD). The caller's generator is not modified.
    """
    frozen = eval_copy(generator)
    device = frozen.device
    out_shape = frozen.output.shape
    latent_shape = frozen.latent.shape
    targets = targets.reshape(-1, *out_shape).to(device, torch.float32)
    n_targets = targets.shape[0]
    if init_z is None:
        init_z = restart_latents(frozen, n_targets, restarts, seed)
    restarts = init_z.shape[1]
    z = init_z.reshape(n_targets * restarts, *latent_shape).to(device, torch.float32).clone().requires_grad_(True)
    activation = frozen.output.final_activation
    target_out = targets.repeat_interleave(restarts, 0)
    target_loss = inverse_activation(target_out, activation) if loss_space == "pre_activation" else target_out
    optimiser = torch.optim.Adam([z], lr=lr)
    best_sum = torch.full((n_targets * restarts,), float("inf"), device=device)
    best_z = z.detach().clone()
    best_out = torch.zeros_like(target_out)
    nonfinite_steps = 0
    stopped = False
    steps_done = 0

    def track(pre: torch.Tensor) -> None:
        # Keep, per restart, the z with the smallest *output-space* distance seen so far.
        with torch.no_grad():
            out = apply_activation(pre, activation)
            dist = ((out - target_out) ** 2).flatten(1).sum(1)
            dist = torch.nan_to_num(dist, nan=float("inf"))
            better = dist < best_sum
            best_sum[better] = dist[better]
            best_z[better] = z.detach()[better]
            best_out[better] = out[better]

    for step in range(steps + 1):
        if should_stop is not None and step > 0 and should_stop():
            stopped = True
            break
        pre = frozen.pre_activation(z)
        track(pre)
        if step == steps:
            break
        pred = pre if loss_space == "pre_activation" else apply_activation(pre, activation)
        per_restart = ((pred - target_loss) ** 2).flatten(1).sum(1)
        optimiser.zero_grad(set_to_none=True)
        per_restart.sum().backward()  # restarts are independent: the sum's gradient is per-restart
        grad = z.grad
        if grad is not None and not torch.isfinite(grad).all():
            nonfinite_steps += 1
            grad.nan_to_num_(nan=0.0, posinf=0.0, neginf=0.0)
        optimiser.step()
        if max_norm is not None:
            clamp_norm_(z, max_norm)
        steps_done = step + 1
    restart_sum = best_sum.reshape(n_targets, restarts)
    best_restart = restart_sum.argmin(1)
    rows = torch.arange(n_targets, device=device)
    pick = rows * restarts + best_restart
    numel = targets[0].numel()
    recon_sum = restart_sum[rows, best_restart]
    return ReconResult(
        recon_sum=recon_sum.detach().cpu().double(),
        recon_mean=(recon_sum / numel).detach().cpu().double(),
        best_z=best_z[pick].cpu(),
        best_output=best_out[pick].cpu(),
        restart_sum=restart_sum.detach().cpu().double(),
        steps=steps_done,
        nonfinite_steps=nonfinite_steps,
        stopped_early=stopped,
    )
