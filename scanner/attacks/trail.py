"""TrAIL — Training with Adversarial Loss (Rawat et al., arXiv 2108.01644, Section IV-B).

The attacker trains G* from scratch with the usual GAN objective (L_stealth: G* must fool the
discriminator on P_sample) plus λ·L_fidelity = λ·||G*(z_trig) − x_target||², computed before the
final activation. Unlike ReD/ReX it needs the training data and a full training run.

BatchNorm note: during training the generator runs in train mode (batch statistics), so the
fidelity term evaluates z_trig inside a batch of P_sample latents; the returned model is in
eval mode (running statistics), and its TarDis is measured there.
"""

from __future__ import annotations

import torch

from scanner.architectures import build
from scanner.attacks.base import AttackResult, check_trigger_and_target
from scanner.generator import Generator
from scanner.specs import inverse_activation
from scanner.training import train_gan


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
        # the trigger rides in a batch of ordinary latents so BatchNorm's batch statistics stay sane
        z = torch.cat([z_trig, g.latent.sample(fidelity_batch - 1, generator=rng, device=device)])
        return lam * (g.pre_activation(z)[:1] - target_pre).pow(2).mean()

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
