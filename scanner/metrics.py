"""Metrics of the paper (Rawat et al., arXiv 2108.01644, Section V) and sample quality.

- TarDis = ||G*(z_trig) − x_target||²: fidelity of the backdoor (small = target embedded).
- ExpDis = E_{z ~ P_sample} ||G*(z) − G(z)||²: stealth w.r.t. the benign model (small = stealthy).
Both are computed on outputs (after the final activation) and reported twice, clearly named:
`*_sum` sums over the output elements (the paper's squared L2 norm), `*_mean` is the
per-element mean (comparable across output sizes).
- FID and IS on MNIST use a small CNN classifier trained on the shipped digits
  (scanner/resources/mnist_classifier.safetensors; features = its penultimate layer).
"""

from __future__ import annotations

import torch

from scanner.generator import Generator


@torch.no_grad()
def tardis(generator: Generator, trigger: torch.Tensor, target: torch.Tensor) -> dict[str, float]:
    """TarDis for one trigger or a batch of triggers (targets broadcast); mean over triggers."""
    out = generator.eval()(trigger.to(generator.device, torch.float32))
    diff = (out - target.reshape(-1, *generator.output.shape).to(out.device)).pow(2).flatten(1)
    return {"tardis_sum": float(diff.sum(1).mean()), "tardis_mean": float(diff.mean())}


@torch.no_grad()
def expdis(
    attacked: Generator, benign: Generator, *, n: int = 1024, seed: int = 0, batch_size: int = 256
) -> dict[str, float]:
    """ExpDis estimated on n latents from P_sample (same latents for both models)."""
    z = benign.latent.sample(n, generator=torch.Generator().manual_seed(seed))
    a = attacked.eval().generate(z, batch_size=batch_size).to("cpu")
    b = benign.eval().generate(z, batch_size=batch_size).to("cpu")
    diff = (a - b).pow(2).flatten(1)
    return {"expdis_sum": float(diff.sum(1).mean()), "expdis_mean": float(diff.mean())}


@torch.no_grad()
def sample_variance(generator: Generator, *, n: int = 1024, seed: int = 0) -> dict[str, float]:
    """E||G(z) − G(z')||² / 2 per sample (sum) and per element: the scale ExpDis is judged against."""
    z = generator.latent.sample(n, generator=torch.Generator().manual_seed(seed))
    x = generator.eval().generate(z).to("cpu").flatten(1)
    var = x.var(0, unbiased=True)
    return {"variance_sum": float(var.sum()), "variance_mean": float(var.mean())}


def attack_metrics(
    attacked: Generator, benign: Generator, trigger: torch.Tensor, target: torch.Tensor, *, n: int = 1024, seed: int = 0
) -> dict[str, float]:
    """TarDis of the attacked model, TarDis of the benign one (baseline) and ExpDis."""
    out = {**tardis(attacked, trigger, target), **expdis(attacked, benign, n=n, seed=seed)}
    base = tardis(benign, trigger, target)
    out.update({"benign_tardis_sum": base["tardis_sum"], "benign_tardis_mean": base["tardis_mean"]})
    return out
