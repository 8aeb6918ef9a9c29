"""The Generator wrapper every loader returns and every check consumes.

A generator is a torch module `body` mapping z to the *pre-activation* output, plus the
final activation, the latent spec and the output spec. Checks that follow the paper work
before tanh/sigmoid through `pre_activation`; everything else calls the wrapper itself.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from scanner.specs import LatentSpec, OutputSpec, apply_activation

# Modules whose weights carry "units" (output features / channels) that checks reason about.
WEIGHT_LAYER_TYPES: tuple[type[nn.Module], ...] = (
    nn.Linear,
    nn.Conv1d,
    nn.Conv2d,
    nn.ConvTranspose1d,
    nn.ConvTranspose2d,
)


@dataclass
class LayerInfo:
    """A weight-bearing layer, in execution order where the loader knows it."""

    name: str
    module: nn.Module
    kind: str  # "linear" | "conv1d" | "conv2d" | "convtranspose1d" | "convtranspose2d"

    @property
    def weight(self) -> torch.Tensor:
        return self.module.weight  # type: ignore[return-value]

    @property
    def bias(self) -> torch.Tensor | None:
        return getattr(self.module, "bias", None)

    @property
    def unit_axis(self) -> int:
        """The weight's axis of output units (torch stores ConvTranspose weights as in × out)."""
        return 1 if self.kind.startswith("convtranspose") else 0

    @property
    def out_units(self) -> int:
        return self.weight.shape[self.unit_axis]

    @property
    def in_units(self) -> int:
        w = self.weight
        return w.shape[0] if self.kind.startswith("convtranspose") else w.shape[1]

    def weight_matrix(self) -> torch.Tensor:
        """The weight as an (out_units, in_units) matrix of L2 norms over kernel positions."""
        w = self.weight.detach()
        if self.kind == "linear":
            return w
        if self.kind.startswith("convtranspose"):
            w = w.transpose(0, 1)
        return w.flatten(2).norm(dim=2)


def _layer_kind(module: nn.Module) -> str:
    return type(module).__name__.lower()


def weight_layers(body: nn.Module) -> list[LayerInfo]:
    """The weight-bearing modules of a body (Linear / Conv / ConvTranspose) in registration order."""
    return [
        LayerInfo(name=name, module=m, kind=_layer_kind(m))
        for name, m in body.named_modules()
        if isinstance(m, WEIGHT_LAYER_TYPES)
    ]


class Generator(nn.Module):
    """z -> output, with specs. Never mutate a caller's Generator: use `copy()`."""

    def __init__(
        self,
        body: nn.Module,
        latent: LatentSpec,
        output: OutputSpec,
        *,
        architecture: str | None = None,
        source_format: str = "torch",
        metadata: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.body = body
        self.latent = latent
        self.output = output
        self.architecture = architecture
        self.source_format = source_format
        self.metadata: dict[str, Any] = dict(metadata or {})

    # -- evaluation -------------------------------------------------------------------------
    def pre_activation(self, z: torch.Tensor) -> torch.Tensor:
        return self.body(z)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return apply_activation(self.body(z), self.output.final_activation)

    @property
    def device(self) -> torch.device:
        for p in self.parameters():
            return p.device
        for b in self.buffers():
            return b.device
        return torch.device("cpu")

    def sample_latent(self, n: int, *, seed: int | None = None) -> torch.Tensor:
        g = torch.Generator().manual_seed(seed) if seed is not None else None
        return self.latent.sample(n, generator=g, device=self.device)

    @torch.no_grad()
    def generate(self, z: torch.Tensor, *, batch_size: int = 1024, pre_activation: bool = False) -> torch.Tensor:
        """Evaluate in batches without building a graph."""
        fn = self.pre_activation if pre_activation else self.forward
        outs = [fn(z[i : i + batch_size].to(self.device)) for i in range(0, z.shape[0], batch_size)]
        return torch.cat(outs) if outs else torch.empty((0, *self.output.shape))

    # -- structure --------------------------------------------------------------------------
    def layers(self) -> list[LayerInfo]:
        """Weight-bearing layers (Linear / Conv / ConvTranspose) in registration order."""
        return weight_layers(self.body)

    def iter_activation_modules(self) -> Iterator[tuple[str, nn.Module]]:
        """Modules whose outputs are unit activations (for hooks in dynamic checks)."""
        for name, m in self.body.named_modules():
            if isinstance(m, WEIGHT_LAYER_TYPES):
                yield name, m

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def copy(self) -> Generator:
        """A deep copy, so attacks and sanitization never touch the caller's model."""
        return copy.deepcopy(self)

    def describe(self) -> dict[str, Any]:
        return {
            "architecture": self.architecture,
            "format": self.source_format,
            "latent": self.latent.to_dict(),
            "output": self.output.to_dict(),
            "parameters": self.num_parameters(),
            "layers": [
                {"name": li.name, "kind": li.kind, "in_units": li.in_units, "out_units": li.out_units}
                for li in self.layers()
            ],
        }
