"""TrAIL — Training with Adversarial Loss (Rawat et al., arXiv 2108.01644, Section IV-B).

The attacker trains G* from scratch with the usual GAN objective (L_stealth: G* must fool the
discriminator on P_sample) plus λ·L_fidelity = λ·||G*(z_trig) − x_target||², computed before the
final activation. Unlike ReD/ReX it needs the training data and a full training run.

BatchNorm note: during training the generator runs in train mode (batch statistics). The
fidelity term evaluates z_trig inside a batch of P_sample latents, with every BatchNorm layer
normalising by the statistics of the P_sample rows only and leaving its running statistics alone
(`_trigger_outside_batch_statistics`). Letting the trigger into the statistics broke the model in
eval mode: the fidelity pass updated the running statistics with batches holding an OOD trigger
(norm 1000), so plain latents were normalised to almost nothing and the eval-mode generator's
per-pixel sample variance collapsed to 0.0004–0.009 at λ ≥ 0.3 or past 2 epochs (benign 0.16);
with the trigger kept out, 0.13 at λ = 0.3 (2 epochs) and 0.13–0.28 after 6 epochs. The returned
model is in eval mode, and its TarDis is measured there.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import nn

from scanner.architectures import build
from scanner.attacks.base import AttackResult, check_trigger_and_target
from scanner.generator import Generator
from scanner.specs import inverse_activation
from scanner.training import train_gan


@contextmanager
def _trigger_outside_batch_statistics(module: nn.Module) -> Iterator[None]:
    """Within the block, every BatchNorm of `module` normalises its batch by the mean and variance of
    rows 1: (the P_sample latents), so row 0 (the trigger) is transformed as the deployed model will
    transform it, and running statistics are not updated. Gradients flow through the statistics."""
    norms = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]

    def forward_for(norm: nn.modules.batchnorm._BatchNorm) -> Callable[[torch.Tensor], torch.Tensor]:
        def forward(x: torch.Tensor) -> torch.Tensor:
            dims = [0, *range(2, x.dim())]
            shape = [1, -1, *[1] * (x.dim() - 2)]
            reference = x[1:]
            mean = reference.mean(dims).reshape(shape)
            var = reference.var(dims, unbiased=False).reshape(shape)
            y = (x - mean) / torch.sqrt(var + norm.eps)
            if norm.affine:
                y = y * norm.weight.reshape(shape) + norm.bias.reshape(shape)
            return y

        return forward

    for norm in norms:
        norm.forward = forward_for(norm)  # type: ignore[method-assign]
    try:
        yield
    finally:
        for norm in norms:
            del norm.forward  # back to the class's forward


def trail_attack(
    *,
    trigger: torch.Tensor,
    target: torch.Tensor,
    lam: float = 0.1,
    epochs: int = 2,
    seed: int = 0,
    base: int = 64,
    batch_size: int = 64,
    lr: float = 5e-4,
    fidelity_batch: int = 16,
    device: str | torch.device = "cpu",
    benign: Generator | None = None,
) -> AttackResult:
    """Train a backdoored dcgan28 from scratch on MNIST. `benign` (optional) is only used to measure ExpDis."""
    from scanner.metrics import attack_metrics, tardis

    torch.manual_seed(seed)
    generator = build("dcgan28", {"base": base}).to(device)
    check_trigger_and_target(generator, trigger, target)
    z_trig = trigger.to(device, torch.float32)
    target_pre = inverse_activation(target.reshape(1, *generator.output.shape).to(device), "tanh")
    rng = torch.Generator().manual_seed(seed + 7)

    def fidelity(g: Generator, _step: int) -> torch.Tensor:
        # the trigger rides in a batch of ordinary latents, normalised by their statistics only
        z = torch.cat([z_trig, g.latent.sample(fidelity_batch - 1, generator=rng, device=device)])
        with _trigger_outside_batch_statistics(g):
            pre = g.pre_activation(z)[:1]
        return lam * (pre - target_pre).pow(2).mean()

    train_gan(
        generator, epochs=epochs, seed=seed, batch_size=batch_size, device=device, lr=lr, generator_extra_loss=fidelity
    )
    generator.source_format = "trained"
    generator.metadata["attack"] = {"name": "trail", "lam": lam, "epochs": epochs}
    target = target.reshape(generator.output.shape)
    info: dict = tardis(generator, trigger, target)
    if benign is not None:
        info = attack_metrics(generator, benign, trigger, target, seed=seed)
    return AttackResult("trail", generator.eval(), trigger.clone(), target.clone(), info)
