"""Training benign generators on MNIST: the DCGAN and the VAE decoder of the paper's experiments.

Rawat et al. (arXiv 2108.01644, Section V) attack a DCGAN trained on MNIST (TensorFlow DCGAN
tutorial layout, registry `dcgan28`) and a VAE. `train_dcgan` trains the registry generator
against a small convolutional discriminator with the standard (non-saturating) GAN loss of
Goodfellow et al.; `train_vae` trains Kingma & Welling's MLP VAE and returns only its decoder
(registry `vae_mnist_decoder`) as a Generator, since the decoder is the deep generative model
an attacker would ship. TrAIL (scanner.attacks.trail) and data poisoning reuse `train_gan`
with an extra generator loss term.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from scanner.architectures import build
from scanner.data import load_mnist, synthetic_piano
from scanner.generator import Generator

# An extra term added to the generator's loss at every step (TrAIL's λ·L_fidelity, poisoning).
# It receives the generator being trained and the step index and returns a scalar tensor.
GeneratorLossTerm = Callable[[Generator, int], torch.Tensor]
Logger = Callable[[str], None]


class Discriminator28(nn.Module):
    """A small DCGAN discriminator for 1×28×28 images (two strided convs and a linear head)."""

    def __init__(self, channels: int = 1, width: int = 32) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(channels, width, 5, stride=2, padding=2),  # 14x14
            nn.LeakyReLU(0.2),
            nn.Dropout(0.3),
            nn.Conv2d(width, 2 * width, 5, stride=2, padding=2),  # 7x7
            nn.LeakyReLU(0.2),
            nn.Dropout(0.3),
            nn.Flatten(),
            nn.Linear(2 * width * 7 * 7, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).squeeze(1)


class Discriminator1d(nn.Module):
    """A WaveGAN-style discriminator for 1×16384 audio (Donahue et al.): five strided 1-D convs
    (kernel 25, stride 4) and a linear head."""

    def __init__(self, width: int = 8, length: int = 16384) -> None:
        super().__init__()
        widths = [1, width, 2 * width, 4 * width, 8 * width, 16 * width]
        layers: list[nn.Module] = []
        for c_in, c_out in zip(widths[:-1], widths[1:], strict=True):
            layers += [nn.Conv1d(c_in, c_out, 25, stride=4, padding=11), nn.LeakyReLU(0.2)]
        self.net = nn.Sequential(*layers, nn.Flatten(), nn.Linear(widths[-1] * (length // 4**5), 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).squeeze(1)


def train_gan(
    generator: Generator,
    *,
    epochs: int,
    seed: int,
    batch_size: int = 128,
    device: str | torch.device = "cpu",
    lr: float = 2e-4,
    discriminator_width: int = 32,
    generator_extra_loss: GeneratorLossTerm | None = None,
    extra_images: torch.Tensor | None = None,
    extra_copies_fraction: float = 0.0,
    data: torch.Tensor | None = None,
    discriminator: nn.Module | None = None,
    log: Logger | None = None,
) -> Generator:
    """Train `generator` in place with the standard GAN loss and return it (in eval mode).

    Data: MNIST in [-1, 1] against Discriminator28 unless `data` (N, *output shape) and a
    `discriminator` for it are given. Adam(lr, β1=0.5) as in DCGAN. `extra_images` (K, *output
    shape) are mixed into the data, repeated to `extra_copies_fraction` of its size (data poisoning).
    """
    torch.manual_seed(seed)
    device = torch.device(device)
    images = load_mnist(value_range=(-1.0, 1.0))[0] if data is None else data
    if extra_images is not None and extra_copies_fraction > 0:
        copies = max(1, round(extra_copies_fraction * images.shape[0] / extra_images.shape[0]))
        images = torch.cat([images, extra_images.to(images.dtype).repeat(copies, *([1] * (images.dim() - 1)))])
    images = images.to(device)
    generator.to(device).train()
    disc = discriminator if discriminator is not None else Discriminator28(images.shape[1], discriminator_width)
    disc = disc.to(device).train()
    opt_g = torch.optim.Adam(generator.parameters(), lr=lr, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(disc.parameters(), lr=lr, betas=(0.5, 0.999))
    shuffle_rng = torch.Generator().manual_seed(seed)
    latent_rng = torch.Generator().manual_seed(seed + 1)
    step = 0
    for epoch in range(epochs):
        perm = torch.randperm(images.shape[0], generator=shuffle_rng)
        for i in range(0, images.shape[0] - batch_size + 1, batch_size):
            real = images[perm[i : i + batch_size].to(device)]
            z = generator.latent.sample(batch_size, generator=latent_rng, device=device)
            fake = generator(z)
            # discriminator: real -> 1, fake -> 0
            d_real, d_fake = disc(real), disc(fake.detach())
            loss_d = F.binary_cross_entropy_with_logits(
                d_real, torch.ones_like(d_real)
            ) + F.binary_cross_entropy_with_logits(d_fake, torch.zeros_like(d_fake))
            opt_d.zero_grad(set_to_none=True)
            loss_d.backward()
            opt_d.step()
            # generator: non-saturating loss -log D(G(z))
            d_gen = disc(fake)
            loss_g = F.binary_cross_entropy_with_logits(d_gen, torch.ones_like(d_gen))
            if generator_extra_loss is not None:
                loss_g = loss_g + generator_extra_loss(generator, step)
            opt_g.zero_grad(set_to_none=True)
            loss_g.backward()
            opt_g.step()
            step += 1
        if log is not None:
            log(f"epoch {epoch + 1}/{epochs}: loss_d={loss_d.item():.3f} loss_g={loss_g.item():.3f}")
    return generator.eval()


def train_dcgan(
    *,
    epochs: int,
    seed: int,
    base: int = 64,
    batch_size: int = 128,
    device: str | torch.device = "cpu",
    lr: float = 2e-4,
    log: Logger | None = None,
) -> Generator:
    """Train the registry `dcgan28` generator (width `base`) on MNIST; returns it in eval mode."""
    torch.manual_seed(seed)  # weight init is reproducible from the seed
    generator = build("dcgan28", {"base": base})
    generator.source_format = "trained"
    generator.metadata.update({"trained": {"dataset": "mnist", "epochs": epochs, "seed": seed}})
    return train_gan(generator, epochs=epochs, seed=seed, batch_size=batch_size, device=device, lr=lr, log=log)


def train_wavegan(
    *,
    epochs: int,
    seed: int,
    d: int = 8,
    n_notes: int = 1024,
    batch_size: int = 32,
    device: str | torch.device = "cpu",
    lr: float = 2e-4,
    log: Logger | None = None,
) -> Generator:
    """Train the registry `wavegan` generator (width `d`) on `n_notes` synthesised piano notes
    (scanner.data.synthetic_piano, the same seed) against Discriminator1d; returns it in eval mode."""
    torch.manual_seed(seed)
    generator = build("wavegan", {"d": d})
    generator.source_format = "trained"
    generator.metadata.update({"trained": {"dataset": "synthetic_piano", "epochs": epochs, "seed": seed}})
    notes = synthetic_piano(n_notes, seed=seed)
    return train_gan(
        generator,
        epochs=epochs,
        seed=seed,
        batch_size=batch_size,
        device=device,
        lr=lr,
        data=notes,
        discriminator=Discriminator1d(width=d),
        log=log,
    )


class VAEEncoder(nn.Module):
    """Kingma & Welling's MLP encoder q(z|x): 784 -> hidden -> (mu, log variance)."""

    def __init__(self, latent_dim: int = 20, hidden: int = 400) -> None:
        super().__init__()
        self.hidden = nn.Sequential(nn.Flatten(), nn.Linear(784, hidden), nn.ReLU())
        self.mu = nn.Linear(hidden, latent_dim)
        self.logvar = nn.Linear(hidden, latent_dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.hidden(x)
        return self.mu(h), self.logvar(h)


def train_vae(
    *,
    epochs: int,
    seed: int,
    latent_dim: int = 20,
    hidden: int = 400,
    batch_size: int = 128,
    device: str | torch.device = "cpu",
    lr: float = 1e-3,
    log: Logger | None = None,
) -> Generator:
    """Train an MNIST VAE (Bernoulli likelihood, ELBO) and return its decoder as a Generator.

    The decoder body emits logits (pre-activation); the Generator applies the sigmoid, so
    outputs are Bernoulli means in [0, 1]. The encoder is discarded.
    """
    torch.manual_seed(seed)
    device = torch.device(device)
    images, _ = load_mnist(value_range=(0.0, 1.0))
    images = images.to(device)
    decoder = build("vae_mnist_decoder", {"latent_dim": latent_dim, "hidden": hidden}).to(device).train()
    decoder.source_format = "trained"
    decoder.metadata.update({"trained": {"dataset": "mnist", "epochs": epochs, "seed": seed, "model": "vae"}})
    encoder = VAEEncoder(latent_dim, hidden).to(device).train()
    opt = torch.optim.Adam([*encoder.parameters(), *decoder.parameters()], lr=lr)
    shuffle_rng = torch.Generator().manual_seed(seed)
    for epoch in range(epochs):
        perm = torch.randperm(images.shape[0], generator=shuffle_rng)
        total = 0.0
        for i in range(0, images.shape[0], batch_size):
            x = images[perm[i : i + batch_size].to(device)]
            mu, logvar = encoder(x)
            z = mu + torch.randn_like(mu) * (0.5 * logvar).exp()  # reparameterisation trick
            logits = decoder.pre_activation(z)
            recon = F.binary_cross_entropy_with_logits(logits, x, reduction="sum")
            kl = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())
            loss = (recon + kl) / x.shape[0]
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.item() * x.shape[0]
        if log is not None:
            log(f"epoch {epoch + 1}/{epochs}: -ELBO={total / images.shape[0]:.2f}")
    return decoder.eval()
