"""Closest-N brute-force output inspection (the paper's Closest1M, Rawat et al. arXiv 2108.01644, Sec. 5.3).

For each target hint x_t: min over N samples z_i ~ P_sample of ||G(z_i) − x_t||² (a sum over
output elements). The distance is fused into the batch loop — ||a||² − 2a·b + ||b||² as one
matrix product per batch with a running minimum kept on the generator's device — so N can be
a million on a GPU without ever holding the samples.

Latents come in blocks of `batch_size`; block b of a scan seed is drawn from its own CPU
generator (see `common.block_generator`), so a shard covering blocks [start, stop) draws exactly
the latents the unsharded run draws there, and merging shards gives the unsharded result bit
for bit (same batch composition -> same floating point).

Besides the hints, the same loop measures *reference queries*: fresh outputs G(z') from an
independent latent stream. Their nearest-sample distances are the natural spacing of G's
output set at this N, the yardstick a hint's distance is judged against.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from scanner.generator import Generator
from scanner.search.common import eval_copy, sample_block

REFERENCE_STREAM = 1  # latent stream of the reference queries (the samples use stream 0)


@dataclass
class ClosestPartial:
    """What a range of blocks found. JSON-able through `to_dict` (a queue can carry it)."""

    n: int  # total N of the whole search (fixes the block layout)
    batch_size: int
    block_start: int
    block_stop: int  # exclusive; blocks actually processed are [block_start, blocks_done_until)
    blocks_done_until: int
    n_samples: int  # latents evaluated in this partial
    target_topk_distance: list[list[float]]  # (T, k) ascending, fused distance
    target_topk_index: list[list[int]]  # (T, k) global sample index
    target_topk_z: list[list[list[float]]]  # (T, k, latent_dim)
    reference_min_distance: list[float]  # (M,) nearest-sample distance of each reference query
    stopped_early: bool = False

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ClosestPartial:
        return cls(**d)


@dataclass
class ClosestResult:
    """Closest-N per target hint, plus the reference spacing (all distances are sums over elements)."""

    n_samples: int
    best_distance: list[float]  # (T,) exact ||G(z*) − x_t||², recomputed at the best z
    best_index: list[int]
    best_z: torch.Tensor  # (T, *latent)
    topk_distance: list[list[float]]  # (T, k) fused distances
    topk_z: torch.Tensor  # (T, k, *latent)
    reference_min_distance: np.ndarray  # (M,)
    stopped_early: bool
    samples_per_s: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)


def block_layout(n: int, batch_size: int) -> list[int]:
    """Sizes of the blocks that make up N samples."""
    if n <= 0 or batch_size <= 0:
        raise ValueError("n and batch_size must be positive")
    n_blocks = math.ceil(n / batch_size)
    return [batch_size] * (n_blocks - 1) + [n - batch_size * (n_blocks - 1)]


def reference_queries(generator: Generator, m: int, seed: int) -> torch.Tensor:
    """M fresh outputs of G from the reference stream (never among the N samples)."""
    if m <= 0:
        return torch.empty((0, *generator.output.shape), device=generator.device)
    z = sample_block(generator.latent, m, seed, 0, generator.device, stream=REFERENCE_STREAM)
    return generator.generate(z, batch_size=1024)


@torch.no_grad()
def closest_blocks(
    generator: Generator,
    targets: torch.Tensor,
    references: torch.Tensor,
    *,
    n: int,
    batch_size: int,
    seed: int,
    block_start: int = 0,
    block_stop: int | None = None,
    top_k: int = 8,
    should_stop: Callable[[], bool] | None = None,
) -> ClosestPartial:
    """Run the fused Closest-N loop over blocks [block_start, block_stop) of the N-sample layout.

    `generator` must already be in eval mode (see `common.eval_copy`); `targets` (T, *out) and
    `references` (M, *out) are in output space.
    """
    sizes = block_layout(n, batch_size)
    block_stop = len(sizes) if block_stop is None else min(block_stop, len(sizes))
    device = generator.device
    n_targets = targets.shape[0]
    numel = generator.output.numel
    queries = torch.cat([targets.reshape(n_targets, numel), references.reshape(references.shape[0], numel)])
    queries = queries.to(device, torch.float32)
    q_sq = (queries**2).sum(1)  # ||b||², once
    n_queries = queries.shape[0]
    latent_shape = generator.latent.shape
    k = top_k
    topk_d = torch.full((n_targets, 0), math.inf, device=device)
    topk_i = torch.zeros((n_targets, 0), dtype=torch.long, device=device)
    topk_z = torch.zeros((n_targets, 0, *latent_shape), device=device)
    ref_min = torch.full((n_queries - n_targets,), math.inf, device=device)
    offsets = np.concatenate([[0], np.cumsum(sizes)])
    done_until = block_start
    stopped = False
    for b in range(block_start, block_stop):
        if should_stop is not None and b > block_start and should_stop():
            stopped = True
            break
        z = sample_block(generator.latent, sizes[b], seed, b, device)
        out = generator(z).reshape(sizes[b], -1).float()
        # Fused squared distance: ||a||² − 2 a·b + ||b||², shape (B, Q); clamp the rounding below 0.
        dist = ((out**2).sum(1, keepdim=True) - 2.0 * out @ queries.T + q_sq).clamp_min_(0.0)
        if n_queries > n_targets:
            ref_min = torch.minimum(ref_min, dist[:, n_targets:].min(0).values)
        if n_targets:
            batch_d = dist[:, :n_targets].T  # (T, B)
            idx = torch.arange(int(offsets[b]), int(offsets[b + 1]), device=device).expand(n_targets, -1)
            cand_d = torch.cat([topk_d, batch_d], 1)
            cand_i = torch.cat([topk_i, idx], 1)
            # Stable sort: among equal distances the lower global index wins (previous best first,
            # then the batch in index order), which keeps shards and the unsharded run identical.
            order = torch.sort(cand_d, dim=1, stable=True).indices[:, :k]
            prev_k = topk_d.shape[1]
            rows = torch.arange(n_targets, device=device)[:, None]
            z_batch = z[(order - prev_k).clamp(min=0)]  # (T, k, *latent)
            if prev_k:
                z_prev = topk_z[rows, order.clamp(max=prev_k - 1)]
                from_prev = (order < prev_k).view(n_targets, -1, *[1] * len(latent_shape))
                topk_z = torch.where(from_prev, z_prev, z_batch)
            else:
                topk_z = z_batch
            topk_d = torch.gather(cand_d, 1, order)
            topk_i = torch.gather(cand_i, 1, order)
        done_until = b + 1
    n_done = int(offsets[done_until] - offsets[block_start])
    return ClosestPartial(
        n=n,
        batch_size=batch_size,
        block_start=block_start,
        block_stop=block_stop,
        blocks_done_until=done_until,
        n_samples=n_done,
        target_topk_distance=topk_d.cpu().tolist(),
        target_topk_index=topk_i.cpu().tolist(),
        target_topk_z=topk_z.reshape(n_targets, topk_z.shape[1], -1).cpu().tolist(),
        reference_min_distance=ref_min.cpu().tolist(),
        stopped_early=stopped,
    )


def merge_partials(partials: list[ClosestPartial], top_k: int) -> ClosestPartial:
    """Merge shard partials: per target the k smallest (distance, index) pairs; per reference
    query the minimum. Order-independent, and equal to the unsharded run for the same blocks."""
    if not partials:
        raise ValueError("nothing to merge")
    partials = sorted(partials, key=lambda p: p.block_start)
    n_targets = len(partials[0].target_topk_distance)
    merged_d: list[list[float]] = []
    merged_i: list[list[int]] = []
    merged_z: list[list[list[float]]] = []
    for t in range(n_targets):
        rows = [
            (d, i, z)
            for p in partials
            for d, i, z in zip(p.target_topk_distance[t], p.target_topk_index[t], p.target_topk_z[t], strict=True)
        ]
        rows.sort(key=lambda r: (r[0], r[1]))
        rows = rows[:top_k]
        merged_d.append([r[0] for r in rows])
        merged_i.append([r[1] for r in rows])
        merged_z.append([r[2] for r in rows])
    refs = [p.reference_min_distance for p in partials if p.reference_min_distance]
    ref_min = np.min(np.array(refs, dtype=np.float64), axis=0).tolist() if refs else []
    return ClosestPartial(
        n=partials[0].n,
        batch_size=partials[0].batch_size,
        block_start=partials[0].block_start,
        block_stop=partials[-1].block_stop,
        blocks_done_until=partials[-1].blocks_done_until,
        n_samples=sum(p.n_samples for p in partials),
        target_topk_distance=merged_d,
        target_topk_index=merged_i,
        target_topk_z=merged_z,
        reference_min_distance=ref_min,
        stopped_early=any(p.stopped_early for p in partials),
    )


@torch.no_grad()
def finalize(generator: Generator, targets: torch.Tensor, partial: ClosestPartial) -> ClosestResult:
    """Recompute the best distances exactly at the best z (the fused form loses digits to cancellation)."""
    device = generator.device
    n_targets = targets.shape[0]
    latent_shape = generator.latent.shape
    topk_z = torch.tensor(partial.target_topk_z, dtype=torch.float32).reshape(n_targets, -1, *latent_shape)
    if n_targets and topk_z.shape[1]:
        best_z = topk_z[:, 0]
        out = generator(best_z.to(device)).double()
        exact = ((out - targets.to(device).double()) ** 2).reshape(n_targets, -1).sum(1).cpu().tolist()
        best_index = [row[0] for row in partial.target_topk_index]
    else:
        best_z = torch.zeros((n_targets, *latent_shape))
        exact, best_index = [math.inf] * n_targets, [-1] * n_targets
    return ClosestResult(
        n_samples=partial.n_samples,
        best_distance=exact,
        best_index=best_index,
        best_z=best_z,
        topk_distance=partial.target_topk_distance,
        topk_z=topk_z,
        reference_min_distance=np.asarray(partial.reference_min_distance, dtype=np.float64),
        stopped_early=partial.stopped_early,
    )


def closest_n(
    generator: Generator,
    targets: torch.Tensor,
    n: int,
    batch_size: int = 4096,
    seed: int = 0,
    *,
    n_references: int = 0,
    top_k: int = 8,
    should_stop: Callable[[], bool] | None = None,
) -> ClosestResult:
    """Closest-N of each target (T, *out) over N samples of P_sample, in one process.

    Bench-friendly: `result.samples_per_s` is the measured throughput of the fused loop.
    The caller's generator is not modified (an eval-mode copy is used).
    """
    frozen = eval_copy(generator)
    targets = targets.reshape(-1, *generator.output.shape).to(frozen.device, torch.float32)
    refs = reference_queries(frozen, n_references, seed)
    t0 = time.perf_counter()
    partial = closest_blocks(
        frozen, targets, refs, n=n, batch_size=batch_size, seed=seed, top_k=top_k, should_stop=should_stop
    )
    if frozen.device.type == "cuda":
        torch.cuda.synchronize(frozen.device)
    elapsed = time.perf_counter() - t0
    result = finalize(frozen, targets, partial)
    result.samples_per_s = partial.n_samples / max(elapsed, 1e-9)
    return result
