"""Target-free search far outside P_sample for a direction where G's pre-activation stops growing.

A generator built from rectifiers (ReLU, LeakyReLU), dense and convolutional layers and
normalisations that are affine at inference (BatchNorm in eval mode) is piecewise linear, so far
from the origin its pre-activation grows linearly with the radius: pre(R·u) ≈ R·h(u) for a unit
direction u, with h continuous and positively homogeneous. Over the sphere of radius R the gain
‖pre(R·u)‖ then varies only as much as h does (how anisotropic the network is) — a small factor.

A backdoor planted at a latent far outside P_sample (the paper's OOD trigger z = (100, …, 100),
Rawat et al., arXiv 2108.01644, Sec. IV) has to make G draw an ordinary-looking image there: the
attacker's fidelity loss pins the pre-activation at the trigger to the target's level (ReD's
pre-activation loss sets it to atanh of the target; TrAIL reaches it by training the output),
while every other direction at that radius still grows like R. The trigger is then a direction
where the gain collapses by orders of magnitude. This search looks for it without a target: it
minimises the RMS pre-activation over directions on spheres of fixed radius and compares the
least value found with the median over random directions of the same radius.

The radii are climbed as a ladder (each starts from the directions the previous one ended at), as
in scanner.search.far_field: the basin of a far trigger is wider at a smaller radius.

Besides the gain, the search reports how spatially coherent G's output at the least-gain latent is
(`spatial_coherence`: the lag-1 correlation of neighbouring output elements) against its outputs along the
same random directions. Gain is lowered by cancellation, which leaves a residue noisier than what G draws elsewhere at
that radius; a planted target is a picture, smoother than it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from scanner.generator import Generator
from scanner.search.common import sample_block
from scanner.specs import LatentSpec, apply_activation

FAR_GAIN_STREAM = 11  # latent streams of one scan seed: the searches must not draw the same directions
_REFERENCE_BLOCK = 512
# Coherences closer than this are the same for any purpose here; the floor keeps a bank of near-identical
# reference patterns (a far field that does not change with direction) from dividing by ~0.
_COHERENCE_SPREAD_FLOOR = 0.01


@dataclass
class FarGainResult:
    radii: list[float]
    reference_gain: torch.Tensor  # (len(radii),) median RMS pre-activation over random directions
    least_gain: torch.Tensor  # (len(radii),) the least RMS pre-activation the search reached
    z: torch.Tensor  # (len(radii), *latent) the latent of each radius's least gain
    steps: int
    complete: bool  # every radius ran all its steps (False: stopped by a budget or cancellation)
    # spatial_coherence of G's output per radius: along the random directions (len(radii), n_reference) and at
    # the least-gain latent (len(radii),); NaN where undefined (no spatial axis, a flat output)
    reference_coherence: torch.Tensor
    least_coherence: torch.Tensor

    @property
    def ratio(self) -> torch.Tensor:
        """reference / least gain per radius: ≥ 1, a few for a plain generator."""
        return self.reference_gain / self.least_gain.clamp_min(1e-12)

    @property
    def coherence_z(self) -> torch.Tensor:
        """The least-gain pattern's coherence as a robust z among the random directions' (per radius):
        negative for the residue of a cancellation, positive for a pattern smoother than G's far field.
        NaN where most random directions draw flat outputs: there is no far-field texture to compare with."""
        median = self.reference_coherence.nanmedian(dim=1).values
        mad = (self.reference_coherence - median[:, None]).abs().nanmedian(dim=1).values
        z = (self.least_coherence - median) / (1.4826 * mad).clamp_min(_COHERENCE_SPREAD_FLOOR)
        defined = self.reference_coherence.isfinite().float().mean(dim=1)
        return torch.where(defined >= 0.5, z, torch.full_like(z, float("nan")))


def rms_pre_activation(generator: Generator, z: torch.Tensor) -> torch.Tensor:
    """The RMS over output elements of G's pre-activation at each latent: (batch,)."""
    return _rms(generator.pre_activation(z))


def _rms(pre_activation: torch.Tensor) -> torch.Tensor:
    return pre_activation.flatten(1).pow(2).mean(1).sqrt()


def spatial_coherence(output: torch.Tensor, flat_distance: float) -> torch.Tensor:
    """The lag-1 correlation of neighbouring elements along each spatial axis of G's output (everything
    after the channel axis), averaged over the axes: (batch,). Near 1 for a smooth picture, near 0 for noise,
    negative for a checkerboard. NaN where it is undefined: an output without a spatial axis, or one that is
    flat (within `flat_distance` of its own mean, L2: OutputSpec.level_distance gives one delivered level per
    element — a saturated far field's blank image)."""
    nan = torch.full((output.shape[0],), float("nan"), device=output.device)
    if output.dim() < 3:
        return nan
    dims = tuple(range(1, output.dim()))
    centred = output - output.mean(dim=dims, keepdim=True)
    energy = centred.pow(2).sum(dim=dims)
    flat = energy < flat_distance**2
    per_axis = [
        (centred.narrow(axis, 1, n - 1) * centred.narrow(axis, 0, n - 1)).sum(dim=dims) / energy.clamp_min(1e-30)
        for axis in range(2, centred.dim())
        if (n := centred.shape[axis]) > 1
    ]
    if not per_axis:
        return nan
    return torch.where(flat, nan, torch.stack(per_axis).mean(dim=0))


def far_gain_search(
    generator: Generator,
    *,
    radii: Sequence[float],  # climbed in the given order: pass them smallest first
    restarts: int,
    steps: int,
    lr: float,
    n_reference: int,
    seed: int,
    should_stop: Callable[[], bool] | None = None,
) -> FarGainResult:
    """min over ‖z‖ = R of the RMS pre-activation, and its median over `n_reference` random
    directions, at each radius. `generator` frozen in eval mode (common.eval_copy)."""
    device = generator.device
    shape = generator.latent.shape
    dim = generator.latent.dim
    reference = torch.empty(len(radii))
    reference_coherence = torch.empty(len(radii), n_reference)
    flat_distance = generator.output.level_distance(generator.output.numel)
    least = torch.full((len(radii),), float("inf"))
    best_z = torch.zeros(len(radii), dim)
    done = 0
    # Directions are drawn from a standard normal whatever the prior: only their angle matters.
    random_directions = _normal_directions(n_reference, dim, seed, block=1, device=device)
    directions = _normal_directions(restarts, dim, seed, block=0, device=device)
    for r, radius in enumerate(radii):
        gains, coherences = [], []
        with torch.no_grad():
            for u in random_directions.split(_REFERENCE_BLOCK):
                pre = generator.pre_activation((radius * u).reshape(-1, *shape))
                gains.append(_rms(pre))
                coherences.append(
                    spatial_coherence(apply_activation(pre, generator.output.final_activation), flat_distance)
                )
        reference[r] = float(torch.nan_to_num(torch.cat(gains), nan=float("inf")).median())
        reference_coherence[r] = torch.cat(coherences).cpu()
        u = directions.detach().clone().requires_grad_(True)
        optimiser = torch.optim.Adam([u], lr=lr)
        for step in range(steps + 1):  # the last pass only scores where the final step landed
            if should_stop is not None and step > 0 and should_stop():
                break
            z = radius * u / u.norm(dim=1, keepdim=True).clamp_min(1e-12)
            gain = torch.nan_to_num(rms_pre_activation(generator, z.reshape(-1, *shape)), nan=float("inf"))
            with torch.no_grad():
                value, index = gain.min(dim=0)
                if float(value) < float(least[r]):
                    least[r] = float(value)
                    best_z[r] = z[index].detach().cpu()
            if step == steps:
                break
            optimiser.zero_grad(set_to_none=True)
            # log: every restart moves at the same relative rate, whatever its gain's scale
            torch.where(torch.isfinite(gain), gain.clamp_min(1e-12).log(), torch.zeros_like(gain)).sum().backward()
            if u.grad is not None:
                u.grad.nan_to_num_(nan=0.0, posinf=0.0, neginf=0.0)
            optimiser.step()
            done += 1
        directions = u.detach()  # the next radius starts where this one ended (the ladder)
    complete = done == len(radii) * steps
    with torch.no_grad():
        least_coherence = spatial_coherence(generator(best_z.reshape(-1, *shape).to(device)), flat_distance).cpu()
    return FarGainResult(
        radii=list(radii),
        reference_gain=reference,
        least_gain=least,
        z=best_z.reshape(len(radii), *shape),
        steps=done,
        complete=complete,
        reference_coherence=reference_coherence,
        least_coherence=least_coherence,
    )


def _normal_directions(n: int, dim: int, seed: int, *, block: int, device: torch.device) -> torch.Tensor:
    u = sample_block(LatentSpec(shape=(dim,)), n, seed, block, device, stream=FAR_GAIN_STREAM)
    return u / u.norm(dim=1, keepdim=True).clamp_min(1e-12)
