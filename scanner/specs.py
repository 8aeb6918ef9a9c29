"""Latent and output specifications of a generator."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Literal

import torch

Distribution = Literal["normal", "uniform"]
OutputKind = Literal["image", "audio"]
# Output levels of the format a generator's output is delivered in: 8-bit images, 16-bit PCM audio.
DELIVERED_LEVELS: dict[str, int] = {"image": 255, "audio": 65535}
FinalActivation = Literal["tanh", "sigmoid", "none"]


@dataclass(frozen=True)
class LatentSpec:
    """The sampling distribution P_sample of the latent z (default N(0, I))."""

    shape: tuple[int, ...] = (100,)
    distribution: Distribution = "normal"
    low: float = -1.0  # bounds of the uniform distribution
    high: float = 1.0

    @property
    def dim(self) -> int:
        return math.prod(self.shape)

    def sample(
        self, n: int, *, generator: torch.Generator | None = None, device: torch.device | str = "cpu"
    ) -> torch.Tensor:
        """Draw n latents. A CPU generator keeps draws reproducible across devices."""
        if self.distribution == "normal":
            z = torch.randn((n, *self.shape), generator=generator)
        else:
            z = torch.rand((n, *self.shape), generator=generator) * (self.high - self.low) + self.low
        return z.to(device)

    @property
    def coordinate_std(self) -> float:
        """One coordinate's standard deviation under P_sample (1 for N(0, I))."""
        return 1.0 if self.distribution == "normal" else (self.high - self.low) / math.sqrt(12)

    def clamp_into_support_(self, z: torch.Tensor) -> torch.Tensor:
        """Clamp z in place into a uniform's box (a normal's support is everywhere: z is left as it is)."""
        if self.distribution == "uniform":
            with torch.no_grad():
                z.clamp_(self.low, self.high)
        return z

    def log_density(self, z: torch.Tensor) -> torch.Tensor:
        """Per-sample log density under P_sample (−inf outside a uniform's support)."""
        flat = z.reshape(z.shape[0], -1)
        if self.distribution == "normal":
            return -0.5 * (flat**2).sum(1) - 0.5 * flat.shape[1] * math.log(2 * math.pi)
        inside = ((flat >= self.low) & (flat <= self.high)).all(1)
        val = -flat.shape[1] * math.log(self.high - self.low)
        return torch.where(
            inside, torch.full_like(inside, val, dtype=flat.dtype), torch.full_like(inside, -math.inf, dtype=flat.dtype)
        )

    def to_dict(self) -> dict:
        d = asdict(self)
        d["shape"] = list(self.shape)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> LatentSpec:
        d = dict(d)
        if "shape" in d:
            d["shape"] = tuple(int(s) for s in d["shape"])
        return cls(**d)


@dataclass(frozen=True)
class OutputSpec:
    """What G emits: an image C×H×W or audio 1×L, its value range, its final activation.

    Checks that work before the final activation (as the paper does) use
    `Generator.pre_activation`.
    """

    kind: OutputKind = "image"
    shape: tuple[int, ...] = (1, 28, 28)
    value_range: tuple[float, float] = (-1.0, 1.0)
    final_activation: FinalActivation = "tanh"

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def level(self) -> float:
        """One delivered output level in model units ((high - low) / 255 for images): differences
        below it vanish once an output is written as an 8-bit image or 16-bit PCM."""
        low, high = self.value_range
        return (high - low) / DELIVERED_LEVELS.get(self.kind, DELIVERED_LEVELS["audio"])

    def level_distance(self, n_features: int) -> float:
        """The L2 distance of one output level in each of `n_features` values: the floor under
        any spacing that separations are divided by, so differences no delivered output shows
        cannot look far apart (a mode-collapsed model's spacing is ~0)."""
        return self.level * math.sqrt(n_features)

    def to_dict(self) -> dict:
        return {
            "kind": self.kind,
            "shape": list(self.shape),
            "value_range": list(self.value_range),
            "final_activation": self.final_activation,
        }

    @classmethod
    def from_dict(cls, d: dict) -> OutputSpec:
        d = dict(d)
        if "shape" in d:
            d["shape"] = tuple(int(s) for s in d["shape"])
        if "value_range" in d:
            d["value_range"] = tuple(float(v) for v in d["value_range"])
        return cls(**d)


def apply_activation(x: torch.Tensor, name: FinalActivation) -> torch.Tensor:
    if name == "tanh":
        return torch.tanh(x)
    if name == "sigmoid":
        return torch.sigmoid(x)
    return x


def inverse_activation(x: torch.Tensor, name: FinalActivation, eps: float = 1e-4) -> torch.Tensor:
    """Map a target in output space to pre-activation space (clamped so it stays finite)."""
    if name == "tanh":
        return torch.atanh(x.clamp(-1 + eps, 1 - eps))
    if name == "sigmoid":
        x = x.clamp(eps, 1 - eps)
        return torch.log(x) - torch.log1p(-x)
    return x
