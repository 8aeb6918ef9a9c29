"""Trigger search guided by suspicious units (what beats ReX; Rawat et al. arXiv 2108.01644, Sec. 5).

ReX adds units that sleep on P_sample and wake on the trigger. Static and dynamic inspection
name them ({module name: [unit indices]}, see scanner.checks.static_block_sparsity and
scanner.checks.dynamic_sleeper_units); here we search z that *maximises* their activation, with
batched Adam restarts and z kept inside a ball a few times the typical radius of P_sample. The
outputs at the maximisers are candidate targets.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from scanner.generator import Generator
from scanner.search.common import clamp_norm_, sample_block, typical_radius

GUIDED_STREAM = 5


def parse_units(*sources: object) -> dict[str, list[int]]:
    """Merge {module name: [unit indices]} maps; anything malformed is ignored (shared state is advisory)."""
    merged: dict[str, set[int]] = {}
    for src in sources:
        if not isinstance(src, dict):
            continue
        for name, units in src.items():
            if isinstance(name, str) and isinstance(units, (list, tuple, set)):
                merged.setdefault(name, set()).update(int(u) for u in units if isinstance(u, int) and u >= 0)
    return {name: sorted(units) for name, units in merged.items() if units}


def _unit_activation(output: torch.Tensor, units: list[int]) -> torch.Tensor:
    """Mean activation of the given units (dim 1), averaged over any spatial axes: (B, len(units))."""
    if output.dim() == 2 and output.shape[1] > max(units):
        return output[:, units]
    if output.dim() > 2 and output.shape[1] > max(units):
        return output[:, units].flatten(2).mean(2)
    raise ValueError(f"unit index {max(units)} out of range for an output of shape {tuple(output.shape)}")


class UnitRecorder:
    """Forward hooks that keep, per module, the activation of the watched units."""

    def __init__(self, body: nn.Module, units: dict[str, list[int]]) -> None:
        modules = dict(body.named_modules())
        self.units = {name: u for name, u in units.items() if name in modules}
        self.dropped: list[str] = []
        self.values: dict[str, torch.Tensor] = {}
        self._handles = [modules[name].register_forward_hook(self._hook(name)) for name in self.units]

    def _hook(self, name: str) -> Callable[..., None]:
        def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
            if not isinstance(output, torch.Tensor):
                return
            # A parameterless element-wise activation (ReLU...) is watched *before* it: a sleeping
            # ReLU has zero gradient everywhere on P_sample, its input does not.
            first = inputs[0] if inputs and isinstance(inputs[0], torch.Tensor) else None
            elementwise = (
                first is not None and first.shape == output.shape and not any(True for _ in module.parameters())
            )
            self.values[name] = _unit_activation(first if elementwise else output, self.units[name])

        return hook

    def calibrate(self) -> None:
        """Fix per-unit scales from the current values (a batch of P_sample): afterwards `total` sums
        (a − mean) / scale, so units that sleep on P_sample (tiny spread) weigh most, as they should."""
        self.centre = {name: v.mean(0).detach() for name, v in self.values.items()}
        spreads = {name: v.std(0).detach() for name, v in self.values.items()}
        floor = torch.cat([s.flatten() for s in spreads.values()]).mean().clamp_min(1e-6) * 0.1
        self.scale = {name: s.clamp_min(float(floor)) for name, s in spreads.items()}

    def total(self) -> torch.Tensor:
        """(B,) sum over watched units of their (normalised, once calibrated) activation."""
        parts = []
        for name, v in self.values.items():
            if hasattr(self, "scale"):
                v = (v - self.centre[name]) / self.scale[name]
            parts.append(v.sum(1) / v.shape[1])  # each module weighs the same whatever its unit count
        return torch.stack(parts).sum(0)

    def close(self) -> None:
        for h in self._handles:
            h.remove()


def control_units(
    generator: Generator, units: dict[str, list[int]], *, seed: int = 0, draws: int = 1
) -> list[dict[str, list[int]]]:
    """`draws` independent negative-control sets for a guided search: for each watched module, as many
    of its *unflagged* units (chosen at random, reproducibly) as were flagged there. Modules with no
    unflagged unit are left out; a model with none anywhere gets no set ([]); a draw equal to an earlier
    one is dropped (ReX doubles a layer: its free units are exactly as many as the flagged ones, so
    every draw is the same set). Unit counts are read off one forward pass, as UnitRecorder sees the module."""
    modules = dict(generator.body.named_modules())
    counts: dict[str, int] = {}

    def hook(name: str) -> Callable[..., None]:
        def record(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
            if isinstance(output, torch.Tensor) and output.dim() >= 2:
                counts[name] = int(output.shape[1])  # an element-wise module keeps its input's shape

        return record

    handles = [modules[name].register_forward_hook(hook(name)) for name in units if name in modules]
    try:
        with torch.no_grad():
            generator.pre_activation(sample_block(generator.latent, 2, seed, 2, generator.device, stream=GUIDED_STREAM))
    finally:
        for h in handles:
            h.remove()
    rng = torch.Generator().manual_seed(seed)
    free_by_module = {name: sorted(set(range(counts.get(name, 0))) - set(flagged)) for name, flagged in units.items()}
    sets: list[dict[str, list[int]]] = []
    for _ in range(draws):
        controls: dict[str, list[int]] = {}
        for name, flagged in units.items():
            if free := free_by_module[name]:
                pick = torch.randperm(len(free), generator=rng)[: len(flagged)]
                controls[name] = sorted(free[int(i)] for i in pick)
        if controls and controls not in sets:  # a module with no more free units than flagged has one set
            sets.append(controls)
    return sets


@dataclass
class GuidedResult:
    z: torch.Tensor  # (R, *latent) maximisers, one per restart
    outputs: torch.Tensor  # (R, *out)
    activation: torch.Tensor  # (R,) watched-unit activation at the maximisers
    baseline_max: float  # max watched-unit activation over samples of P_sample
    baseline_mean: float
    units_found: dict[str, list[int]]
    steps: int


def maximise_units(
    generator: Generator,
    units: dict[str, list[int]],
    *,
    restarts: int = 16,
    steps: int = 200,
    lr: float = 0.05,
    radius_factor: float = 2.0,
    seed: int = 0,
    n_baseline: int = 512,
    should_stop: Callable[[], bool] | None = None,
) -> GuidedResult:
    """Maximise the total activation of `units` over z (generator in eval mode, frozen)."""
    device = generator.device
    recorder = UnitRecorder(generator.body, units)
    try:
        if not recorder.units:
            raise ValueError(f"none of the flagged modules exist in the generator: {sorted(units)}")
        with torch.no_grad():
            base_z = sample_block(generator.latent, n_baseline, seed, 1, device, stream=GUIDED_STREAM)
            generator.pre_activation(base_z)
            recorder.calibrate()
            generator.pre_activation(base_z)
            baseline = recorder.total()
        z = sample_block(generator.latent, restarts, seed, 0, device, stream=GUIDED_STREAM).requires_grad_(True)
        max_norm = radius_factor * typical_radius(generator.latent)
        optimiser = torch.optim.Adam([z], lr=lr)
        done = 0
        for step in range(steps):
            if should_stop is not None and step > 0 and should_stop():
                break
            generator.pre_activation(z)
            loss = -recorder.total().sum()  # restarts are independent
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            if z.grad is not None:
                z.grad.nan_to_num_(nan=0.0, posinf=0.0, neginf=0.0)
            optimiser.step()
            clamp_norm_(z, max_norm)
            generator.latent.clamp_into_support_(z)
            done = step + 1
        with torch.no_grad():
            outputs = generator(z)
            activation = recorder.total()
        return GuidedResult(
            z=z.detach().cpu(),
            outputs=outputs.cpu(),
            activation=activation.cpu(),
            baseline_max=float(baseline.max()),
            baseline_mean=float(baseline.mean()),
            units_found=recorder.units,
            steps=done,
        )
    finally:
        recorder.close()
