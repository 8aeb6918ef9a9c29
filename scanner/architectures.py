"""The built-in architecture registry.

safetensors and state-dict uploads carry weights only; the architecture comes from this
registry, named in the file's `__metadata__` (key `dgmscan.architecture`) or in the scan
config. Each entry builds the *pre-activation* body; the final activation is in the spec.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from scanner.generator import Generator
from scanner.specs import LatentSpec, OutputSpec


class Reshape(nn.Module):
    def __init__(self, *shape: int) -> None:
        super().__init__()
        self.shape = shape

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(x.shape[0], *self.shape)


@dataclass(frozen=True)
class Architecture:
    name: str
    description: str
    build_body: Callable[..., nn.Module]
    latent: Callable[[dict[str, Any]], LatentSpec]
    output: Callable[[dict[str, Any]], OutputSpec]
    defaults: dict[str, Any] = field(default_factory=dict)

    def resolve(self, config: dict[str, Any] | None) -> dict[str, Any]:
        config = dict(config or {})
        unknown = set(config) - set(self.defaults)
        if unknown:
            raise ValueError(f"architecture {self.name!r} has no parameter(s) {sorted(unknown)}")
        return {**self.defaults, **config}

    def build(self, config: dict[str, Any] | None = None) -> Generator:
        cfg = self.resolve(config)
        return Generator(
            self.build_body(**cfg),
            self.latent(cfg),
            self.output(cfg),
            architecture=self.name,
            source_format="registry",
            metadata={"architecture_config": cfg},
        )


# -- DCGAN (the paper's MNIST / CIFAR generators, TensorFlow DCGAN-tutorial layout) ----------
def _dcgan_body(latent_dim: int, channels: int, base: int, start: int, upsamples: int) -> nn.Module:
    widths = [base * 2 ** (upsamples - i) for i in range(upsamples + 1)]  # e.g. 256,128,64
    layers: list[nn.Module] = [
        nn.Linear(latent_dim, start * start * widths[0], bias=False),
        nn.BatchNorm1d(start * start * widths[0]),
        nn.LeakyReLU(0.2),
        Reshape(widths[0], start, start),
        nn.ConvTranspose2d(widths[0], widths[1], 5, stride=1, padding=2, bias=False),
        nn.BatchNorm2d(widths[1]),
        nn.LeakyReLU(0.2),
    ]
    for i in range(1, upsamples):
        layers += [
            nn.ConvTranspose2d(widths[i], widths[i + 1], 5, stride=2, padding=2, output_padding=1, bias=False),
            nn.BatchNorm2d(widths[i + 1]),
            nn.LeakyReLU(0.2),
        ]
    layers.append(nn.ConvTranspose2d(widths[upsamples], channels, 5, stride=2, padding=2, output_padding=1, bias=False))
    return nn.Sequential(*layers)


def dcgan28_body(latent_dim: int = 100, channels: int = 1, base: int = 64) -> nn.Module:
    # 7x7 -> 7x7 -> 14x14 -> 28x28
    return _dcgan_body(latent_dim, channels, base, start=7, upsamples=2)


def dcgan32_body(latent_dim: int = 100, channels: int = 3, base: int = 64) -> nn.Module:
    # 4x4 -> 4x4 -> 8x8 -> 16x16 -> 32x32
    return _dcgan_body(latent_dim, channels, base, start=4, upsamples=3)


# -- MNIST VAE decoder (Kingma & Welling's MLP decoder) ---------------------------------------
def vae_mnist_decoder_body(latent_dim: int = 20, hidden: int = 400) -> nn.Module:
    return nn.Sequential(nn.Linear(latent_dim, hidden), nn.ReLU(), nn.Linear(hidden, 784), Reshape(1, 28, 28))


# -- WaveGAN-style 1-D generator (Donahue et al.), 16384 samples -----------------------------
def wavegan_body(latent_dim: int = 100, d: int = 8) -> nn.Module:
    widths = [16 * d, 8 * d, 4 * d, 2 * d, d]
    layers: list[nn.Module] = [nn.Linear(latent_dim, 16 * widths[0]), Reshape(widths[0], 16), nn.ReLU()]
    for i in range(4):
        layers += [nn.ConvTranspose1d(widths[i], widths[i + 1], 25, stride=4, padding=11, output_padding=1), nn.ReLU()]
    layers.append(nn.ConvTranspose1d(widths[4], 1, 25, stride=4, padding=11, output_padding=1))
    return nn.Sequential(*layers)


# -- StyleGAN-style mapping + synthesis (Karras et al.), small ------------------------------
class StyleBlock(nn.Module):
    """Upsample, conv, then per-channel scale and shift from the style w (AdaIN-like)."""

    def __init__(self, w_dim: int, c_in: int, c_out: int, upsample: bool) -> None:
        super().__init__()
        self.upsample = nn.Upsample(scale_factor=2, mode="nearest") if upsample else nn.Identity()
        self.conv = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.style = nn.Linear(w_dim, 2 * c_out)
        self.act = nn.LeakyReLU(0.2)

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        x = self.conv(self.upsample(x))
        x = x - x.mean(dim=(2, 3), keepdim=True)
        x = x / (x.pow(2).mean(dim=(2, 3), keepdim=True) + 1e-8).sqrt()
        scale, shift = self.style(w).chunk(2, dim=1)
        return self.act(x * (1 + scale[:, :, None, None]) + shift[:, :, None, None])


class StyleGenerator(nn.Module):
    def __init__(
        self, latent_dim: int = 64, w_dim: int = 64, channels: int = 3, width: int = 32, resolution: int = 32
    ) -> None:
        super().__init__()
        mapping: list[nn.Module] = []
        for i in range(4):
            mapping += [nn.Linear(latent_dim if i == 0 else w_dim, w_dim), nn.LeakyReLU(0.2)]
        self.mapping = nn.Sequential(*mapping)
        self.const = nn.Parameter(torch.randn(1, width, 4, 4))
        n_up = max(0, (resolution // 4).bit_length() - 1)
        self.blocks = nn.ModuleList(
            [StyleBlock(w_dim, width, width, upsample=False)]
            + [StyleBlock(w_dim, width, width, upsample=True) for _ in range(n_up)]
        )
        self.to_rgb = nn.Conv2d(width, channels, 1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        z = z / (z.pow(2).mean(dim=1, keepdim=True) + 1e-8).sqrt()
        w = self.mapping(z)
        x = self.const.expand(z.shape[0], -1, -1, -1)
        for block in self.blocks:
            x = block(x, w)
        return self.to_rgb(x)


REGISTRY: dict[str, Architecture] = {}


def register(arch: Architecture) -> Architecture:
    REGISTRY[arch.name] = arch
    return arch


register(
    Architecture(
        "dcgan28",
        "DCGAN for 28x28 images (the paper's MNIST generator)",
        dcgan28_body,
        latent=lambda c: LatentSpec((c["latent_dim"],)),
        output=lambda c: OutputSpec("image", (c["channels"], 28, 28), (-1.0, 1.0), "tanh"),
        defaults={"latent_dim": 100, "channels": 1, "base": 64},
    )
)
register(
    Architecture(
        "dcgan32",
        "DCGAN for 32x32 images (the paper's CIFAR-10 generator)",
        dcgan32_body,
        latent=lambda c: LatentSpec((c["latent_dim"],)),
        output=lambda c: OutputSpec("image", (c["channels"], 32, 32), (-1.0, 1.0), "tanh"),
        defaults={"latent_dim": 100, "channels": 3, "base": 64},
    )
)
register(
    Architecture(
        "vae_mnist_decoder",
        "MLP VAE decoder for MNIST, Bernoulli means in [0, 1]",
        vae_mnist_decoder_body,
        latent=lambda c: LatentSpec((c["latent_dim"],)),
        output=lambda c: OutputSpec("image", (1, 28, 28), (0.0, 1.0), "sigmoid"),
        defaults={"latent_dim": 20, "hidden": 400},
    )
)
register(
    Architecture(
        "wavegan",
        "WaveGAN-style 1-D transposed-conv generator, 16384 audio samples in [-1, 1]",
        wavegan_body,
        latent=lambda c: LatentSpec((c["latent_dim"],), "uniform"),
        output=lambda c: OutputSpec("audio", (1, 16384), (-1.0, 1.0), "tanh"),
        defaults={"latent_dim": 100, "d": 8},
    )
)
register(
    Architecture(
        "stylegan_small",
        "StyleGAN-style mapping network + modulated synthesis network",
        StyleGenerator,
        latent=lambda c: LatentSpec((c["latent_dim"],)),
        output=lambda c: OutputSpec("image", (c["channels"], c["resolution"], c["resolution"]), (-1.0, 1.0), "tanh"),
        defaults={"latent_dim": 64, "w_dim": 64, "channels": 3, "width": 32, "resolution": 32},
    )
)


def get_architecture(name: str) -> Architecture:
    try:
        return REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown architecture {name!r}; known: {sorted(REGISTRY)}") from None


def build(name: str, config: dict[str, Any] | None = None) -> Generator:
    return get_architecture(name).build(config)
