"""Forward hooks that summarise per-unit activations over samples from P_sample (DMI).

Dynamic model inspection (Rawat et al. 2108.01644 §V) watches units while the generator runs on
ordinary latents. A unit is the channel (dim 1) of a module's output: a feature of a Linear, a
channel of a convolution. For each hooked module we accumulate, per unit, over N samples:

- ``activity``: mean |x| over samples and positions;
- ``variation``: mean over positions of the standard deviation across samples — how much the
  unit responds to z at all;
- ``nonzero``: fraction of (sample, position) entries that are not (numerically) zero — the
  firing rate after a rectifier.

Accumulation is streaming (sums and sums of squares in float64), so N can be large.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from scanner.generator import WEIGHT_LAYER_TYPES, Generator

# Elementwise activation modules whose outputs are unit activations worth watching.
ACTIVATION_TYPES: tuple[type[nn.Module], ...] = (
    nn.ReLU, nn.LeakyReLU, nn.ReLU6, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.PReLU,
    nn.Softplus, nn.Tanh, nn.Sigmoid, nn.Hardtanh, nn.Mish,
)  # fmt: skip


@dataclass
class UnitStats:
    """Per-unit summaries of one module's output over N samples."""

    module: str
    n_samples: int
    activity: np.ndarray
    variation: np.ndarray
    nonzero: np.ndarray


class _Accumulator:
    def __init__(self) -> None:
        self.n = 0
        self.sum: torch.Tensor | None = None  # (C, P) sums over samples
        self.sumsq: torch.Tensor | None = None
        self.abs_sum: torch.Tensor | None = None  # (C,)
        self.nonzero: torch.Tensor | None = None  # (C,)
        self.positions = 0
        self.bad = False

    def add(self, out: torch.Tensor) -> None:
        if not isinstance(out, torch.Tensor) or out.dim() < 2 or not out.is_floating_point():
            self.bad = True
            return
        x = out.detach().double().flatten(2) if out.dim() > 2 else out.detach().double().unsqueeze(2)
        if self.sum is not None and x.shape[1:] != self.sum.shape:
            self.bad = True  # a module called with different shapes: not one set of units
            return
        self.positions = x.shape[2]
        s, sq = x.sum(0), (x * x).sum(0)
        a = x.abs().sum((0, 2))
        scale = x.abs().amax().clamp_min(1e-300)
        nz = (x.abs() > 1e-9 * scale).double().sum((0, 2))
        if self.sum is None:
            self.sum, self.sumsq, self.abs_sum, self.nonzero = s, sq, a, nz
        else:
            self.sum += s
            self.sumsq += sq
            self.abs_sum += a  # type: ignore[operator]
            self.nonzero += nz  # type: ignore[operator]
        self.n += x.shape[0]


def watched_modules(generator: Generator) -> list[tuple[str, nn.Module]]:
    """Weight layers (pre-activation units) and activation modules (post-activation units)."""
    return [
        (name, m)
        for name, m in generator.body.named_modules()
        if name and isinstance(m, WEIGHT_LAYER_TYPES + ACTIVATION_TYPES)
    ]


@torch.no_grad()
def collect_unit_stats(generator: Generator, latents: Iterable[torch.Tensor]) -> dict[str, UnitStats]:
    """Run the generator on batches of z with hooks on every watched module."""
    accs: dict[str, _Accumulator] = {}
    handles = []
    for name, module in watched_modules(generator):
        acc = accs.setdefault(name, _Accumulator())
        handles.append(module.register_forward_hook(lambda _m, _i, out, acc=acc: acc.add(out)))
    try:
        for z in latents:
            generator.pre_activation(z.to(generator.device))
    finally:
        for h in handles:
            h.remove()
    stats: dict[str, UnitStats] = {}
    for name, acc in accs.items():
        if acc.bad or acc.n < 2 or acc.sum is None:
            continue
        n = acc.n
        mean = acc.sum / n
        var = (acc.sumsq / n - mean * mean).clamp_min(0) * n / (n - 1)
        stats[name] = UnitStats(
            module=name,
            n_samples=n,
            activity=(acc.abs_sum / (n * acc.positions)).cpu().numpy(),  # type: ignore[operator]
            variation=var.sqrt().mean(1).cpu().numpy(),
            nonzero=(acc.nonzero / (n * acc.positions)).cpu().numpy(),  # type: ignore[operator]
        )
    return stats
