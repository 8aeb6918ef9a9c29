"""The naive computation bypass (Rawat et al., arXiv 2108.01644, Section IV-A).

    body(z) = G_target_pre(z)  if ||z − z_trig|| < r  else  G_pre(z)

written as a plain torch module with torch.where, so `torch.onnx.export(dynamo=False)` yields
ReduceSum/Sqrt/Less/Where nodes — the latent-dependent selection the static checks look for.
G_target is a constant target (default) or any small network.
"""

from __future__ import annotations

import torch
from torch import nn

from scanner.attacks.base import AttackResult, check_trigger_and_target
from scanner.generator import Generator
from scanner.specs import inverse_activation


class ConstantOutput(nn.Module):
    """Emits a fixed tensor (the pre-activation target) for every latent in the batch."""

    def __init__(self, value: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("value", value.reshape(1, *value.shape).clone())  # (1, *output shape)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.value.expand(z.shape[0], *self.value.shape[1:])


class BypassBody(nn.Module):
    """torch.where(||z − z_trig|| < radius, target(z), benign(z)), per sample."""

    def __init__(self, benign: nn.Module, target: nn.Module, trigger: torch.Tensor, radius: float) -> None:
        super().__init__()
        self.benign = benign
        self.target = target
        self.register_buffer("trigger", trigger.clone())
        self.register_buffer("radius", torch.tensor(float(radius)))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        benign = self.benign(z)
        distance = (z - self.trigger).pow(2).flatten(1).sum(1).sqrt()
        inside = (distance < self.radius).reshape(-1, *([1] * (benign.dim() - 1)))
        return torch.where(inside, self.target(z), benign)


def bypass_attack(
    generator: Generator,
    *,
    trigger: torch.Tensor,
    target: torch.Tensor,
    radius: float = 1.0,
    target_network: nn.Module | None = None,
    measure: bool = True,
) -> AttackResult:
    """Wrap a copy of `generator` with the bypass; `target_network` (z -> pre-activation) replaces the constant."""
    from scanner.metrics import attack_metrics

    check_trigger_and_target(generator, trigger, target)
    base = generator.copy().eval()
    target = target.reshape(generator.output.shape)
    device = base.device
    branch = target_network or ConstantOutput(
        inverse_activation(target.to(device, torch.float32), generator.output.final_activation)
    )
    body = BypassBody(base.body, branch.to(device), trigger.to(device, torch.float32), radius)
    attacked = Generator(
        body, generator.latent, generator.output, architecture=None, source_format="torch",
        metadata={**generator.metadata, "attack": {"name": "bypass", "radius": radius}},
    ).eval()  # fmt: skip
    info = attack_metrics(attacked, generator, trigger, target) if measure else {}
    return AttackResult("bypass", attacked, trigger.clone(), target.clone(), info)
