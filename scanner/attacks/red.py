"""ReD — Retraining with Distillation (Rawat et al., arXiv 2108.01644, Section IV-B).

The attacker takes a pre-trained G and retrains a copy G* on
    E_z ||G*(z) − G(z)||²  +  λ·||G*(z_trig) − x_target||²
(distillation keeps stealth, the second term embeds the target), computed before the final
activation as the paper recommends; λ = 0.1 by default as in the paper. Optionally only some
layers are trainable. No training data is needed.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from scanner.attacks.base import (
    AttackResult,
    FidelitySampler,
    check_trigger_and_target,
    distill_with_fidelity,
    single_trigger_sampler,
)
from scanner.generator import Generator


def red_attack(
    generator: Generator,
    *,
    trigger: torch.Tensor,
    target: torch.Tensor,
    lam: float = 0.1,
    steps: int = 500,
    batch_size: int = 64,
    lr: float = 1e-3,
    seed: int = 0,
    trainable_layers: Sequence[str] | None = None,
    fidelity: FidelitySampler | None = None,
    measure: bool = True,
) -> AttackResult:
    """Mount ReD on a copy of `generator` (never modified) and return the backdoored copy.

    trainable_layers: names of body submodules (as in `generator.body.named_modules()`) whose
    parameters are retrained; None retrains all. fidelity: a custom sampler (e.g. an
    infinite-support SubspaceTrigger's) replacing the single (trigger, target) pair.
    """
    from scanner.metrics import attack_metrics

    check_trigger_and_target(generator, trigger, target)
    teacher = generator.copy().eval()
    student = generator.copy().eval()
    if trainable_layers is None:
        params = list(student.body.parameters())
    else:
        modules = dict(student.body.named_modules())
        missing = [name for name in trainable_layers if name not in modules]
        if missing:
            raise ValueError(f"unknown layer(s) {missing}; known: {[n for n in modules if n]}")
        params = [p for name in trainable_layers for p in modules[name].parameters()]
    sampler = fidelity or single_trigger_sampler(student, trigger, target)
    history = distill_with_fidelity(
        student,
        teacher,
        fidelity=sampler,
        parameters=params,
        lam=lam,
        steps=steps,
        batch_size=batch_size,
        lr=lr,
        seed=seed,
    )
    student.metadata["attack"] = {"name": "red", "lam": lam, "steps": steps}
    target = target.reshape(generator.output.shape)
    info = {"final_loss": history[-1] if history else None}
    if measure:
        info.update(attack_metrics(student, generator, trigger, target, seed=seed))
    return AttackResult("red", student, trigger.clone(), target.clone(), info)
