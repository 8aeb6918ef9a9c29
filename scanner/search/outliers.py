"""Unsupervised outliers among N generated samples (brute-force output inspection without a
target, in the spirit of Rawat et al. arXiv 2108.01644, Sec. 5.3).

A trigger region with non-negligible mass under P_sample shows up among plain samples as a
*group of near-identical outputs far from everything else* (the target, over and over), and a
target with more varied triggers as isolated outputs far from the rest. We look in a cheap
feature space (outputs average-pooled to at most 16×16 per channel, or 256 points for audio):

- k-NN distance with a large k (64): a sample in a small tight cluster far from the rest has
  a large k-th-neighbour distance although its first neighbours are close; robust z-scores
  (median / MAD) flag them;
- near-duplicates: samples whose m-th neighbour is far closer than usual (a large cluster);
- flagged samples are grouped (union-find at a tight radius) and each group's separation from
  the remaining samples is compared with the population's nearest-neighbour spacing.

The spacing (and the k-NN distances' spread) is floored at one delivered output level per
feature, RMS: a (nearly) mode-collapsed model has a spacing of ~0, and dividing by it made any
sub-level difference look like a far-off cluster (a separation of 7.8e9 on the bench's
collapsed poisoned DCGAN's sanitized copy).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from scanner.generator import Generator
from scanner.search.common import sample_block

OUTLIER_STREAM = 3


@dataclass
class OutlierGroup:
    members: list[int]  # sample indices
    robust_z: float  # largest robust z-score of the k-NN distance among members
    separation: float  # min distance to a non-member / the spacing (OutlierResult.spacing)
    spread: float  # mean squared output distance of members to the first member, per element
    near_duplicates: bool  # found through the near-duplicate test


@dataclass
class OutlierResult:
    n_samples: int
    k: int
    median_knn: float
    mad_knn: float
    median_nn: float  # median 1-NN feature distance: the natural spacing
    spacing: float  # max(median_nn, spacing_floor): what separations are measured in
    spacing_floor: float  # one delivered output level per feature, RMS
    max_robust_z: float
    groups: list[OutlierGroup] = field(default_factory=list)
    z: torch.Tensor | None = None  # all latents (N, *latent), for evidence
    outputs: torch.Tensor | None = None  # all outputs (N, *out)
    stopped_early: bool = False


def features(outputs: torch.Tensor, kind: str) -> torch.Tensor:
    """Average-pooled outputs, flattened (cheap and robust to pixel noise)."""
    x = outputs.float()
    if kind == "image" and x.dim() == 4:
        h, w = x.shape[-2:]
        x = F.adaptive_avg_pool2d(x, (min(h, 16), min(w, 16)))
    elif x.dim() == 3:
        x = F.adaptive_avg_pool1d(x, min(x.shape[-1], 256))
    return x.reshape(x.shape[0], -1)


def knn_distances(feats: torch.Tensor, k: int, block: int = 1024) -> torch.Tensor:
    """Sorted Euclidean distances to the k nearest other samples, (N, k), computed blockwise."""
    n = feats.shape[0]
    sq = (feats**2).sum(1)
    out = []
    for i in range(0, n, block):
        rows = feats[i : i + block]
        d2 = (sq[i : i + block, None] - 2.0 * rows @ feats.T + sq[None, :]).clamp_min_(0.0)
        d2[torch.arange(rows.shape[0]), torch.arange(i, i + rows.shape[0])] = float("inf")  # not yourself
        out.append(torch.topk(d2, k, dim=1, largest=False).values.sqrt())
    return torch.cat(out)


def _groups(flagged: np.ndarray, feats: torch.Tensor, radius: float) -> list[list[int]]:
    """Connected components of the flagged samples at the given radius (union-find)."""
    parent = list(range(len(flagged)))

    def find(a: int) -> int:
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    if len(flagged):
        sub = feats[torch.as_tensor(flagged)]
        d = torch.cdist(sub, sub)
        close = torch.nonzero(torch.triu(d <= radius, diagonal=1)).tolist()
        for a, b in close:
            parent[find(a)] = find(b)
    comps: dict[int, list[int]] = {}
    for i in range(len(flagged)):
        comps.setdefault(find(i), []).append(int(flagged[i]))
    return list(comps.values())


@torch.no_grad()
def find_outliers(
    generator: Generator,
    n: int,
    *,
    seed: int = 0,
    batch_size: int = 2048,
    k: int = 64,
    z_threshold: float = 6.0,
    duplicate_m: int = 3,
    duplicate_ratio: float = 0.1,
    max_flagged: int = 2000,
    should_stop: Callable[[], bool] | None = None,
) -> OutlierResult:
    """Sample N outputs (eval-mode generator expected) and find far-off samples and tight groups."""
    device = generator.device
    zs, outs = [], []
    stopped = False
    for b, i in enumerate(range(0, n, batch_size)):
        if should_stop is not None and b > 0 and should_stop():
            stopped = True
            break
        z = sample_block(generator.latent, min(batch_size, n - i), seed, b, device, stream=OUTLIER_STREAM)
        zs.append(z)
        outs.append(generator(z))
    z_all = torch.cat(zs)
    out_all = torch.cat(outs)
    feats = features(out_all, generator.output.kind)
    n_done = feats.shape[0]
    k = max(1, min(k, n_done - 1))
    knn = knn_distances(feats, k)
    spacing_floor = generator.output.level_distance(feats.shape[1])
    score = knn[:, k - 1]
    median = score.median()
    mad = (score - median).abs().median() * 1.4826
    robust_z = (score - median) / mad.clamp_min(spacing_floor)
    median_nn = float(knn[:, 0].median())
    spacing = max(median_nn, spacing_floor)
    m = min(duplicate_m, k)
    dup_scale = knn[:, m - 1].median()
    duplicates = knn[:, m - 1] < duplicate_ratio * dup_scale
    flagged_mask = (robust_z > z_threshold) | duplicates
    flagged = torch.nonzero(flagged_mask).flatten()
    if flagged.numel() > max_flagged:  # keep the most extreme; a flood is reported, not enumerated
        flagged = flagged[torch.topk(robust_z[flagged], max_flagged).indices]
    flagged_np = flagged.cpu().numpy()
    # Tight radius: near-identical outputs, a fraction of the natural nearest-neighbour spacing.
    groups_idx = _groups(flagged_np, feats, radius=0.5 * spacing)
    groups: list[OutlierGroup] = []
    numel = out_all[0].numel()
    for members in groups_idx:
        member_t = torch.as_tensor(members, device=feats.device)
        d = torch.cdist(feats[member_t], feats)
        d[:, member_t] = float("inf")
        separation = float(d.min()) / spacing
        spread = float(((out_all[member_t] - out_all[member_t[0]]) ** 2).sum() / (len(members) * numel))
        groups.append(
            OutlierGroup(
                members=members,
                robust_z=float(robust_z[member_t].max()),
                separation=separation,
                spread=spread,
                near_duplicates=bool(duplicates[member_t].any()),
            )
        )
    groups.sort(key=lambda g: (-len(g.members), -g.separation))
    return OutlierResult(
        n_samples=n_done,
        k=k,
        median_knn=float(median),
        mad_knn=float(mad),
        median_nn=median_nn,
        spacing=spacing,
        spacing_floor=spacing_floor,
        max_robust_z=float(robust_z.max()),
        groups=groups,
        z=z_all.cpu(),
        outputs=out_all.cpu(),
        stopped_early=stopped,
    )
