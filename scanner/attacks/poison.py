"""Data poisoning — the paper's naive baseline (Rawat et al., arXiv 2108.01644, Section IV-A).

A GAN never sees (z, x) pairs, so poisoning only the *data* (mixing copies of x_target into
the training set) teaches G to emit the target for *some* unknown region of Z with probability
about the poison rate — it does not bind the target to a chosen trigger, and it costs stealth
(the target shows up in ordinary samples). What this module does, honestly:

1. the training set is MNIST plus `poison_rate`·N copies of x_target (data poisoning proper);
2. on one generator step in `pair_every`, a fidelity term λ·||G_pre(z_trig) − x_target_pre||²
   is added (z_trig inside a batch of ordinary latents, as in TrAIL) — the "conditional trick"
   an attacker controlling the training pipeline would add to tie the poisoned mode to z_trig.

With pair_every=0 only step 1 happens (pure data poisoning; expect no fidelity at z_trig).
"""

from __future__ import annotations

import torch

from scanner.architectures import build
from scanner.attacks.base import AttackResult, check_trigger_and_target
from scanner.generator import Generator
from scanner.specs import inverse_activation
from scanner.training import train_gan


def poison_attack(
    *,
    trigger: torch.Tensor,
    target: torch.Tensor,
    poison_rate: float = 0.01,
    pair_every: int = 4,
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
    """Train a dcgan28 on poisoned MNIST (see the module docstring). `benign` is only used for ExpDis."""
    from scanner.metrics import attack_metrics, tardis

    if not 0.0 <= poison_rate < 1.0:
        raise ValueError("poison_rate must be in [0, 1)")
    torch.manual_seed(seed)
    generator = build("dcgan28", {"base": base}).to(device)
    check_trigger_and_target(generator, trigger, target)
    target = target.reshape(generator.output.shape).to(torch.float32)
    z_trig = trigger.to(device, torch.float32)
    target_pre = inverse_activation(target.unsqueeze(0).to(device), "tanh")
    rng = torch.Generator().manual_seed(seed + 11)

    def pairing(g: Generator, step: int) -> torch.Tensor:
        if pair_every <= 0 or step % pair_every:
            return torch.zeros((), device=device)
        z = torch.cat([z_trig, g.latent.sample(fidelity_batch - 1, generator=rng, device=device)])
        return lam * (g.pre_activation(z)[:1] - target_pre).pow(2).mean()

    train_gan(
        generator, epochs=epochs, seed=seed, batch_size=batch_size, device=device, lr=lr,
        generator_extra_loss=pairing, extra_images=target.unsqueeze(0), extra_copies_fraction=poison_rate,
    )  # fmt: skip
    generator.source_format = "trained"
    generator.metadata["attack"] = {"name": "poison", "poison_rate": poison_rate, "pair_every": pair_every}
    info: dict = tardis(generator, trigger, target)
    if benign is not None:
        info = attack_metrics(generator, benign, trigger, target, seed=seed)
    return AttackResult("poison", generator.eval(), trigger.clone(), target.clone(), info)
