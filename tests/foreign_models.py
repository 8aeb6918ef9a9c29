"""A generator the scanner has never seen: an architecture outside the registry, trained as a GAN on
MNIST and exported with plain ``torch.onnx.export`` — no dgmscan metadata in the file, as a third
party's pipeline would ship it. Used by the tests and by the benign false-positive benchmark.

Deliberately unlike the registry's DCGAN and VAE decoder: a 64-d latent, GroupNorm instead of
BatchNorm, GELU and LeakyReLU, nearest and bilinear upsampling followed by ordinary convolutions
(ONNX: Resize, InstanceNormalization, Erf) instead of transposed convolutions.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import nn

from scanner.generator import Generator
from scanner.specs import LatentSpec, OutputSpec
from scanner.training import train_gan

LATENT = LatentSpec(shape=(64,))
OUTPUT = OutputSpec(shape=(1, 28, 28), value_range=(-1.0, 1.0), final_activation="tanh")


class UpsampleConvGenerator(nn.Module):
    """z (64) -> dense 7×7 map -> [GroupNorm, GELU, 2× nearest, conv] -> [GroupNorm, LeakyReLU,
    2× bilinear, conv] -> 1×28×28 pre-activation."""

    def __init__(self, latent_dim: int = 64, width: int = 32) -> None:
        super().__init__()
        self.width = width
        self.fc = nn.Linear(latent_dim, 2 * width * 7 * 7)
        self.net = nn.Sequential(
            nn.GroupNorm(8, 2 * width),
            nn.GELU(),
            nn.Upsample(scale_factor=2, mode="nearest"),
            nn.Conv2d(2 * width, width, 3, padding=1),
            nn.GroupNorm(8, width),
            nn.LeakyReLU(0.2),
            nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
            nn.Conv2d(width, 1, 3, padding=1),
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(self.fc(z).reshape(-1, 2 * self.width, 7, 7))


class _WithTanh(nn.Module):
    def __init__(self, body: nn.Module) -> None:
        super().__init__()
        self.body = body

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.body(z))


def foreign_generator(width: int = 32) -> Generator:
    """An untrained out-of-registry generator (`width` channels after the second upsampling)."""
    return Generator(UpsampleConvGenerator(width=width), LATENT, OUTPUT, source_format="trained")


def train_foreign_generator(seed: int = 0, *, epochs: int = 1, width: int = 32) -> Generator:
    """The out-of-registry generator trained as a GAN on the shipped MNIST digits (≈ 20 s an epoch at width 32)."""
    torch.manual_seed(seed)
    return train_gan(foreign_generator(width), epochs=epochs, seed=seed, batch_size=64, lr=5e-4)


def export_foreign_onnx(generator: Generator, path: Path) -> Path:
    """Export with torch.onnx.export only (no dgmscan specs in the file), as someone else's pipeline
    would: the scan has to infer the latent and output specs from the graph."""
    module = _WithTanh(generator.body).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notes
        torch.onnx.export(
            module,
            (torch.randn(2, *LATENT.shape),),
            str(path),
            dynamo=False,
            input_names=["noise"],
            output_names=["image"],
            dynamic_axes={"noise": {0: "n"}, "image": {0: "n"}},
            opset_version=17,
        )
    return path
