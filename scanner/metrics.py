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

from functools import lru_cache
from pathlib import Path

import numpy as np
import scipy.linalg
import torch
import torch.nn.functional as F
from torch import nn

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


# -- FID / IS with a small MNIST classifier shipped in scanner/resources -------------------------
CLASSIFIER_PATH = Path(__file__).resolve().parent / "resources" / "mnist_classifier.safetensors"


class MnistClassifier(nn.Module):
    """A small CNN for 1×28×28 digits in [-1, 1]; `features` (64-d penultimate layer) feeds FID."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(32 * 7 * 7, 64), nn.ReLU(),
        )  # fmt: skip
        self.head = nn.Linear(64, 10)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.conv(x))


def train_classifier(
    *, epochs: int = 4, seed: int = 0, out: Path | None = CLASSIFIER_PATH
) -> tuple[MnistClassifier, float]:
    """Train the FID/IS classifier on 8,000 shipped digits; returns it and its held-out (2,000) accuracy.

    Written to `out` (safetensors) when given. Run once: `python -m scanner.metrics`.
    """
    from safetensors.torch import save_file

    from scanner.data import mnist_split

    torch.manual_seed(seed)
    (x_train, y_train), (x_test, y_test) = mnist_split(holdout=2000, seed=seed)
    model = MnistClassifier()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    rng = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        model.train()
        perm = torch.randperm(x_train.shape[0], generator=rng)
        for i in range(0, x_train.shape[0], 64):
            idx = perm[i : i + 64]
            loss = F.cross_entropy(model(x_train[idx]), y_train[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        accuracy = float((model(x_test).argmax(1) == y_test).float().mean())
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        save_file(
            {k: v.contiguous() for k, v in model.state_dict().items()},
            str(out),
            metadata={"heldout_accuracy": f"{accuracy:.4f}", "seed": str(seed), "epochs": str(epochs)},
        )
    return model, accuracy


@lru_cache(maxsize=1)
def load_classifier() -> MnistClassifier:
    """The shipped classifier (CPU, eval mode)."""
    from safetensors.torch import load_file

    model = MnistClassifier()
    model.load_state_dict(load_file(str(CLASSIFIER_PATH)))
    return model.eval()


def _to_classifier_range(x: torch.Tensor, value_range: tuple[float, float]) -> torch.Tensor:
    low, high = value_range
    return ((x - low) / (high - low) * 2 - 1).clamp(-1, 1)


@torch.no_grad()
def _features_and_probs(images: torch.Tensor, batch_size: int = 500) -> tuple[torch.Tensor, torch.Tensor]:
    clf = load_classifier()
    feats, probs = [], []
    for i in range(0, images.shape[0], batch_size):
        f = clf.features(images[i : i + batch_size].to(torch.float32).cpu())
        feats.append(f.double())
        probs.append(F.softmax(clf.head(f), dim=1).double())
    return torch.cat(feats), torch.cat(probs)


def _frechet(mu1: np.ndarray, s1: np.ndarray, mu2: np.ndarray, s2: np.ndarray) -> float:
    # No `disp=` argument: newer SciPy releases removed it (TypeError); without it every version returns the matrix.
    covmean = scipy.linalg.sqrtm(s1 @ s2)
    covmean = np.real(covmean)
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * covmean))


@torch.no_grad()
def fid_is(generator: Generator, *, n: int = 2000, seed: int = 0) -> dict[str, float]:
    """FID against the shipped MNIST digits and Inception-style score, both with the MNIST classifier.

    Only for 1×28×28 image generators. FID uses the classifier's 64-d features (not Inception's,
    so values are not comparable with papers' Inception FIDs); IS = exp(E_x KL(p(y|x) || p(y))), ≤ 10.
    """
    from scanner.data import load_mnist

    if tuple(generator.output.shape) != (1, 28, 28):
        raise ValueError(f"FID/IS need a 1x28x28 generator, got output shape {tuple(generator.output.shape)}")
    z = generator.latent.sample(n, generator=torch.Generator().manual_seed(seed))
    fake = _to_classifier_range(generator.eval().generate(z).cpu(), generator.output.value_range)
    real, _ = load_mnist()
    real = real[torch.randperm(real.shape[0], generator=torch.Generator().manual_seed(seed))[:n]]
    f_fake, p_fake = _features_and_probs(fake)
    f_real, _ = _features_and_probs(real)
    fid = _frechet(
        f_fake.mean(0).numpy(),
        np.cov(f_fake.numpy(), rowvar=False),
        f_real.mean(0).numpy(),
        np.cov(f_real.numpy(), rowvar=False),
    )
    marginal = p_fake.mean(0, keepdim=True)
    kl = (p_fake * (torch.log(p_fake + 1e-12) - torch.log(marginal + 1e-12))).sum(1).mean()
    return {"fid": fid, "inception_score": float(torch.exp(kl)), "n": n}


if __name__ == "__main__":
    _, acc = train_classifier()
    print(f"wrote {CLASSIFIER_PATH} (held-out accuracy {acc:.4f})")
