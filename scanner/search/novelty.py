"""Target-free ascent on the novelty of G's outputs: does G draw one output, unlike all it draws
elsewhere, that searches from many places run into?

A backdoor planted at a latent inside P_sample (the paper's in-sample trigger, Rawat et al., arXiv
2108.01644, Sec. IV; trained in by TrAIL or by poisoning the training set) makes G draw the
attacker's target over a wide ball around the trigger (measured on the test zoo's TrAIL: TarDis
0.09 at a distance of 10 from it in 100-d, about the distance between two samples). The sanitized
copies learn part of that ball too, so the divergence searches find nothing there, and without a
hint there is no target to reconstruct. What is left is that the target is unlike anything else
G draws, and that its basin is wide: an ascent on "distance to G's other outputs" started from
many places ends in it again and again. A benign generator has odd outputs of its own (strokes,
blobs), but they are isolated points: each ascent finds a different one.

novelty(x) = the per-element squared distance from x to its nearest output in a bank of G's
outputs at random latents, over the bank's own median nearest-neighbour distance (its typical
spacing). The ascent maximises the log of the mean distance to the k nearest bank outputs
(smoother than the nearest alone), from the most novel of a pool of random samples, keeping each z
at its start's distance from the prior's centre (and, for a uniform prior, inside the box): it
searches P_sample's typical set, where an in-sample trigger lies, not the far field (ob_oi.far_gain's
job). After the ascent, spread(z) = the median per-element squared distance between G(z + ε) and G(z)
over fixed offsets ε of sigma prior standard deviations says how stable G is around each end.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from scanner.generator import Generator
from scanner.search.common import sample_block
from scanner.specs import LatentSpec

NOVELTY_STREAM = 13  # latent stream of this search (others: scanner.search.*_STREAM)
_BLOCK = 1024


@dataclass
class NoveltyResult:
    starts: torch.Tensor  # (restarts, *latent.shape) where each ascent began
    z: torch.Tensor  # (restarts, *latent.shape) where each ascent ended
    outputs: torch.Tensor  # (restarts, *output.shape) G at z
    novelty: torch.Tensor  # (restarts,) novelty of G at z
    start_novelty: torch.Tensor  # (restarts,) novelty at the starts
    spread: torch.Tensor  # (restarts,) median novelty-unit distance of G within `sigma` of each end from G there
    pool_max: float  # the most novel of the random pool (a brute-force view of the same question)
    spacing: float  # the bank's median nearest-neighbour distance (per element), novelty's unit
    steps: int
    complete: bool


def _sq_distances(x: torch.Tensor, bank: torch.Tensor, bank_sq: torch.Tensor) -> torch.Tensor:
    """Per-element squared distances between the rows of x (n, D) and of bank (m, D): (n, m).
    bank_sq: bank.pow(2).sum(1), computed once per bank."""
    return (x.pow(2).sum(1, keepdim=True) - 2 * x @ bank.T + bank_sq).clamp_min(0) / x.shape[1]


def _nearest(x: torch.Tensor, bank: torch.Tensor, bank_sq: torch.Tensor, k: int) -> torch.Tensor:
    """Per-element squared distances from each row of x (n, D) to its k nearest bank rows: (n, k)."""
    return _sq_distances(x, bank, bank_sq).topk(k, dim=1, largest=False).values


def novelty_ascent(
    generator: Generator,
    *,
    n_bank: int,
    n_pool: int,
    restarts: int,
    steps: int,
    lr: float,
    k_nearest: int,
    sigma: float,
    n_spread: int,
    seed: int,
    should_stop: Callable[[], bool] = lambda: False,
) -> NoveltyResult:
    """Run the ascent on a frozen generator (eval mode, no parameter gradients); see the module doc."""
    latent, device = generator.latent, generator.device
    with torch.no_grad():
        bank = _outputs(generator, sample_block(latent, n_bank, seed, 0, device, NOVELTY_STREAM))
        bank_sq = bank.pow(2).sum(1)
        spacing = _median_spacing(bank, bank_sq)
        pool = sample_block(latent, n_pool, seed, 1, device, NOVELTY_STREAM)
        pool_novelty = (
            torch.cat([_nearest(_outputs(generator, b), bank, bank_sq, 1)[:, 0] for b in pool.split(_BLOCK)]) / spacing
        )
    starts = pool[pool_novelty.topk(min(restarts, n_pool)).indices]
    z = starts.clone().requires_grad_(True)
    # Each z keeps its start's distance from the prior's centre: P_sample's typical set is a thin shell
    # around it for a normal and for a uniform box alike (a box's corners are as atypical as a far normal
    # sample: the test zoo's WaveGAN, uniform prior, sent every ascent to a corner and drew loud clips
    # there that it never draws from P_sample).
    centre = 0.0 if latent.distribution == "normal" else (latent.low + latent.high) / 2
    norms = (starts - centre).flatten(1).norm(dim=1).reshape(-1, *[1] * (starts.dim() - 1))
    opt = torch.optim.Adam([z], lr=lr)
    done = 0
    for _ in range(steps):
        if should_stop():
            break
        mean_k = _nearest(_outputs(generator, z), bank, bank_sq, k_nearest).mean(1)
        loss = -torch.log(mean_k.clamp_min(1e-12)).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
        with torch.no_grad():
            offset = z - centre
            z.copy_(centre + offset * (norms / offset.flatten(1).norm(dim=1).clamp_min(1e-12).reshape_as(norms)))
            latent.clamp_into_support_(z)
        done += 1
    z = z.detach()
    with torch.no_grad():
        ends = _outputs(generator, z)
        novelty = _nearest(ends, bank, bank_sq, 1)[:, 0] / spacing
        start_novelty = _nearest(_outputs(generator, starts), bank, bank_sq, 1)[:, 0] / spacing
        spread = _local_spread(generator, z, sigma * latent.coordinate_std, n_spread, seed) / spacing
    return NoveltyResult(
        starts=starts.cpu(),
        z=z.cpu(),
        outputs=ends.reshape(-1, *generator.output.shape).cpu(),
        novelty=novelty.cpu(),
        start_novelty=start_novelty.cpu(),
        spread=spread.cpu(),
        pool_max=float(pool_novelty.max()),
        spacing=float(spacing),
        steps=done,
        complete=done == steps,
    )


def largest_group(outputs: torch.Tensor, spacing: float, eligible: torch.Tensor) -> list[int]:
    """Indices of the largest set of eligible rows of `outputs` (n, D) that lie within `spacing`
    (per-element squared distance) of one of them: "the same output", closer than two neighbouring
    outputs of G typically are."""
    idx = eligible.nonzero().flatten()
    if idx.numel() == 0:
        return []
    x = outputs[idx].flatten(1)
    close = (x[:, None] - x[None]).pow(2).mean(-1) < spacing
    centre = int(close.sum(1).argmax())
    return idx[close[centre]].tolist()


def _local_spread(generator: Generator, z: torch.Tensor, radius: float, n: int, seed: int) -> torch.Tensor:
    """For each row of z: the median over n fixed offsets ε ~ N(0, radius² I) of the per-element squared
    distance between G(z + ε) and G(z) (z + ε clamped into a uniform prior's box)."""
    offsets = sample_block(LatentSpec(shape=tuple(z.shape[1:])), n, seed, 2, z.device, NOVELTY_STREAM) * radius
    spreads = []
    for row in z:
        centre = _outputs(generator, row[None])
        moved = _outputs(generator, generator.latent.clamp_into_support_(row[None] + offsets))  # G lives on the box
        spreads.append((moved - centre).pow(2).mean(1).median())
    return torch.stack(spreads)


def _outputs(generator: Generator, z: torch.Tensor) -> torch.Tensor:
    return generator(z).flatten(1).float()


def _median_spacing(bank: torch.Tensor, bank_sq: torch.Tensor) -> torch.Tensor:
    """The median over the bank of each output's distance to its nearest other output."""
    nearest = []
    for start in range(0, bank.shape[0], _BLOCK):
        block = bank[start : start + _BLOCK]
        d = _sq_distances(block, bank, bank_sq)
        d[torch.arange(block.shape[0]), torch.arange(start, start + block.shape[0])] = float("inf")
        nearest.append(d.min(1).values)
    return torch.cat(nearest).median().clamp_min(1e-12)
