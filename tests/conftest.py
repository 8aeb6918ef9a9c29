"""Shared pytest fixtures: the model zoo (tests/zoo.py) and the paper's MNIST target data."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

# The repository root on sys.path, so `import scanner` and `from tests import zoo` work without installing.
_REPO_ROOT = Path(__file__).resolve().parent.parent
if str(_REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(_REPO_ROOT))

from scanner.data import load_devil_target, load_z_trigger  # noqa: E402
from scanner.generator import Generator  # noqa: E402
from tests import zoo as _zoo  # noqa: E402


@pytest.fixture(scope="session")
def zoo():
    """The zoo module: `zoo.benign_dcgan(seed)`, `zoo.benign_vae(seed)`, `zoo.attacked(kind, trigger, seed)`."""
    return _zoo


@pytest.fixture(scope="session")
def _benign_dcgan_cached() -> Generator:
    return _zoo.benign_dcgan(seed=0)


@pytest.fixture
def benign_dcgan(_benign_dcgan_cached: Generator) -> Generator:
    """A fresh copy of the small benign zoo DCGAN (seed 0); safe to modify."""
    return _benign_dcgan_cached.copy()


@pytest.fixture(scope="session")
def _benign_vae_cached() -> Generator:
    return _zoo.benign_vae(seed=0)


@pytest.fixture
def benign_vae(_benign_vae_cached: Generator) -> Generator:
    """A fresh copy of the benign zoo VAE decoder (seed 0); safe to modify."""
    return _benign_vae_cached.copy()


@pytest.fixture(scope="session")
def devil_target() -> torch.Tensor:
    """The paper's devil-face target, (1, 28, 28) float32 in [-1, 1]."""
    return load_devil_target()


@pytest.fixture(scope="session")
def z_trigger() -> torch.Tensor:
    """The paper's (1, 100) N(0, I) trigger for the devil target."""
    return load_z_trigger()
