"""Models the service tests build: a small benign DCGAN and a ReD-backdoored copy of it.

ReD (Rawat et al. arXiv 2108.01644, Section IV-B): retrain a copy G* of a pre-trained G with
distillation on P_sample plus the fidelity term on the trigger,
    min E_z ||G*(z) - G(z)||^2 + lambda * ||G*(z_trigger) - x_target||^2,
so G* behaves like G on N(0, I) and emits the target (the paper's devil face) for z_trigger.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[2]
TARGET_PNG = REPO / "data/targets/devil_28x28.png"
TARGET_NPY = REPO / "data/targets/devil_28x28.npy"
Z_TRIGGER = REPO / "data/targets/z_trigger_100.npy"
ARCH_CONFIG = {"base": 16}


def make_benign(path: Path, seed: int = 0) -> Path:
    from scanner import architectures
    from scanner.loading import save_safetensors

    torch.manual_seed(seed)
    save_safetensors(architectures.build("dcgan28", ARCH_CONFIG), path)
    return path


def make_red_backdoor(benign: Path, path: Path, steps: int = 150, lam: float = 1.0, seed: int = 1) -> Path:
    """ReD on a copy of `benign`; returns the path of the backdoored safetensors file."""
    from scanner.loading import load_generator, save_safetensors

    torch.manual_seed(seed)
    teacher = load_generator(benign).eval()
    # BatchNorm statistics stay frozen (eval mode): the distillation fits weights only
    student = teacher.copy().eval()
    target = torch.from_numpy(np.load(TARGET_NPY)).float().permute(2, 0, 1).unsqueeze(0)  # (1, 1, 28, 28)
    z_trig = torch.from_numpy(np.load(Z_TRIGGER)).float()
    opt = torch.optim.Adam(student.parameters(), lr=2e-3)
    for _ in range(steps):
        z = torch.randn(32, 100)
        with torch.no_grad():
            ref = teacher(z)
        out = student(torch.cat([z, z_trig]))
        loss = ((out[:-1] - ref) ** 2).mean() + lam * ((out[-1:] - target) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    save_safetensors(student, path)
    return path


def tardis(model: Path) -> float:
    """TarDis = ||G(z_trigger) - x_target||^2 as a per-element mean (how well the backdoor is embedded)."""
    from scanner.loading import load_generator

    g = load_generator(model).eval()
    target = torch.from_numpy(np.load(TARGET_NPY)).float().permute(2, 0, 1).unsqueeze(0)
    with torch.no_grad():
        return float(((g(torch.from_numpy(np.load(Z_TRIGGER)).float()) - target) ** 2).mean())


class _RunsCode:
    """A pickle that would run a shell command when loaded (the scanner must never load it)."""

    def __reduce__(self):  # noqa: ANN204
        import os

        return (os.system, ("echo pwned > /tmp/dgmscan-pwned",))


def make_malicious_pickle(path: Path) -> Path:
    path.write_bytes(pickle.dumps({"generator": _RunsCode()}))
    return path
