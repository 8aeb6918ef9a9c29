"""Gradient-free ReconD: CMA-ES (Hansen's `cma` package) over the latent, evaluated in batches.

The fallback of optimisation-based output inspection (Rawat et al. arXiv 2108.01644, Sec. 5.3)
when ∂G/∂z is unusable — NaN/Inf, stochastic or obfuscated gradients defeat Adam but not an
evolution strategy, which only needs output distances. Each generation's population is one
forward pass.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from scanner.generator import Generator

with warnings.catch_warnings():  # cma warns at import when matplotlib (plotting only) is absent
    warnings.simplefilter("ignore")
    import cma

NONFINITE_PENALTY = 1e30  # CMA-ES ranks candidates; a non-finite distance must rank last


@dataclass
class CmaResult:
    best_sum: float  # ||G(z*) − x_t||², sum over output elements
    best_z: torch.Tensor  # (*latent)
    best_output: torch.Tensor  # (*out)
    evaluations: int
    generations: int
    stopped_early: bool


@torch.no_grad()
def cma_reconstruct(
    generator: Generator,
    target: torch.Tensor,
    *,
    popsize: int = 24,
    generations: int = 100,
    sigma0: float = 0.5,
    seed: int = 0,
    should_stop: Callable[[], bool] | None = None,
) -> CmaResult:
    """min_z ||G(z) − target||² by CMA-ES from the mode of P_sample (generator in eval mode)."""
    device = generator.device
    latent = generator.latent
    target = target.reshape(1, *generator.output.shape).to(device, torch.float32)
    x0 = (
        np.zeros(latent.dim) if latent.distribution == "normal" else np.full(latent.dim, (latent.low + latent.high) / 2)
    )
    options = {"popsize": popsize, "maxiter": generations, "seed": seed + 1, "verbose": -9}
    if latent.distribution == "uniform":
        options["bounds"] = [latent.low, latent.high]
    es = cma.CMAEvolutionStrategy(x0, sigma0, options)
    best_sum, best_z = math.inf, torch.as_tensor(x0, dtype=torch.float32)
    evaluations = 0
    stopped = False
    while not es.stop():
        if should_stop is not None and evaluations and should_stop():
            stopped = True
            break
        population = es.ask()
        z = torch.as_tensor(np.asarray(population), dtype=torch.float32, device=device).reshape(-1, *latent.shape)
        dist = ((generator(z) - target) ** 2).flatten(1).sum(1).double()
        dist = torch.nan_to_num(dist, nan=NONFINITE_PENALTY, posinf=NONFINITE_PENALTY).cpu().numpy()
        es.tell(population, dist.tolist())
        evaluations += len(population)
        i = int(np.argmin(dist))
        if dist[i] < best_sum:
            best_sum, best_z = float(dist[i]), z[i].detach().cpu().clone()
    best_output = generator(best_z.reshape(1, *latent.shape).to(device))[0].cpu()
    return CmaResult(best_sum, best_z, best_output, evaluations, es.countiter, stopped)


def gradient_probe(generator: Generator, n: int = 8, seed: int = 0) -> dict[str, object]:
    """A quick look at ∂||G(z)||²/∂z: non-finite, all-zero, or different on two identical calls."""
    z = generator.latent.sample(n, generator=torch.Generator().manual_seed(seed), device=generator.device)
    grads = []
    for _ in range(2):
        zz = z.clone().requires_grad_(True)
        out = generator.pre_activation(zz)
        (g,) = torch.autograd.grad((out.float() ** 2).sum(), zz, allow_unused=True)
        grads.append(torch.zeros_like(zz) if g is None else g.detach())
    finite = bool(torch.isfinite(grads[0]).all() and torch.isfinite(grads[1]).all())
    zero = bool((grads[0] == 0).all())
    stochastic = finite and not torch.allclose(grads[0], grads[1], rtol=1e-4, atol=1e-6)
    return {
        "finite": finite,
        "all_zero": zero,
        "stochastic": bool(stochastic),
        "healthy": finite and not zero and not stochastic,
    }
