"""MNIST and target data shipped with the project.

The repository carries the official MNIST *test* set (10,000 digits, idx gz format) under
data/mnist and the paper's devil-face target / trigger under data/targets (Rawat et al.,
arXiv 2108.01644, Section V: MNIST experiments embed a devil face at a fixed N(0, I) trigger).
Nothing is downloaded: the data directory is found next to the repository or through the
environment variable DGMSCAN_DATA.
"""

from __future__ import annotations

import gzip
import os
import struct
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from scanner.errors import ScannerError

MNIST_IMAGES = "t10k-images-idx3-ubyte.gz"
MNIST_LABELS = "t10k-labels-idx1-ubyte.gz"
DEVIL_TARGET = "devil_28x28.npy"
Z_TRIGGER = "z_trigger_100.npy"

# idx magic numbers: 0x00000803 = unsigned byte, 3 dims; 0x00000801 = unsigned byte, 1 dim
_IDX_IMAGES_MAGIC = 0x00000803
_IDX_LABELS_MAGIC = 0x00000801


class DataNotFoundError(ScannerError):
    """The project's data directory (MNIST, targets) cannot be found."""


def data_dir() -> Path:
    """The data directory: $DGMSCAN_DATA, else <repo>/data, else the shared data next to the repo."""
    env = os.environ.get("DGMSCAN_DATA")
    if env:
        path = Path(env)
        if not path.is_dir():
            raise DataNotFoundError(f"DGMSCAN_DATA={env!r} is not a directory")
        return path
    repo = Path(__file__).resolve().parent.parent
    for candidate in (repo / "data", repo.parent / "shared" / "data"):
        if (candidate / "mnist" / MNIST_IMAGES).is_file():
            return candidate
    raise DataNotFoundError(f"no data directory found (looked in {repo / 'data'}); set DGMSCAN_DATA")


def _read_idx(path: Path, magic: int, ndim: int) -> np.ndarray:
    """Read an idx-format file (LeCun's MNIST container), validating the header."""
    try:
        raw = gzip.decompress(path.read_bytes())
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise DataNotFoundError(f"cannot read {path}: {exc}") from exc
    header_len = 4 + 4 * ndim
    if len(raw) < header_len:
        raise DataNotFoundError(f"{path}: truncated idx header")
    (found_magic,) = struct.unpack(">I", raw[:4])
    if found_magic != magic:
        raise DataNotFoundError(f"{path}: idx magic {found_magic:#010x}, expected {magic:#010x}")
    dims = struct.unpack(f">{ndim}I", raw[4:header_len])
    count = int(np.prod(dims))
    if len(raw) - header_len != count:
        raise DataNotFoundError(f"{path}: {len(raw) - header_len} data bytes, header says {count}")
    return np.frombuffer(raw, dtype=np.uint8, offset=header_len).reshape(dims)


@lru_cache(maxsize=2)
def _mnist_arrays(root: str) -> tuple[np.ndarray, np.ndarray]:
    base = Path(root) / "mnist"
    images = _read_idx(base / MNIST_IMAGES, _IDX_IMAGES_MAGIC, 3)
    labels = _read_idx(base / MNIST_LABELS, _IDX_LABELS_MAGIC, 1)
    if images.shape[0] != labels.shape[0]:
        raise DataNotFoundError(f"MNIST: {images.shape[0]} images but {labels.shape[0]} labels")
    return images, labels


def load_mnist(*, value_range: tuple[float, float] = (-1.0, 1.0)) -> tuple[torch.Tensor, torch.Tensor]:
    """All MNIST digits as float32 (N, 1, 28, 28) scaled to `value_range`, and int64 labels (N,).

    The default [-1, 1] matches a tanh DCGAN; pass (0, 1) for the sigmoid VAE decoder.
    """
    images, labels = _mnist_arrays(str(data_dir()))
    low, high = value_range
    x = torch.from_numpy(images.astype(np.float32) / 255.0).unsqueeze(1) * (high - low) + low
    return x, torch.from_numpy(labels.astype(np.int64))


def mnist_split(
    *, value_range: tuple[float, float] = (-1.0, 1.0), holdout: int = 2000, seed: int = 0
) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """A reproducible (train, held-out) split of the shipped digits, e.g. for the FID/IS classifier."""
    x, y = load_mnist(value_range=value_range)
    perm = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(seed))
    test_idx, train_idx = perm[:holdout], perm[holdout:]
    return (x[train_idx], y[train_idx]), (x[test_idx], y[test_idx])


def load_devil_target() -> torch.Tensor:
    """The paper's devil-face target as a float32 (1, 28, 28) tensor in [-1, 1]."""
    arr = np.load(data_dir() / "targets" / DEVIL_TARGET, allow_pickle=False)
    return torch.from_numpy(np.asarray(arr, dtype=np.float32)).permute(2, 0, 1).contiguous()


def load_z_trigger() -> torch.Tensor:
    """The (1, 100) N(0, I) trigger used with the devil target."""
    arr = np.load(data_dir() / "targets" / Z_TRIGGER, allow_pickle=False)
    return torch.from_numpy(np.asarray(arr, dtype=np.float32)).reshape(1, -1)


# -- audio the project makes ------------------------------------------------------------------
# No audio dataset ships with the project and nothing may be downloaded, so the WaveGAN-style
# generator (registry `wavegan`: 16384 samples) is trained on synthesised piano-like notes, and the
# paper's audio backdoor target — a drum hit inside piano audio (Rawat et al., Section V) — is a
# synthesised kick + snare hit.
AUDIO_RATE = 16000
AUDIO_LENGTH = 16384


def synthetic_piano(n: int, *, seed: int, length: int = AUDIO_LENGTH, rate: int = AUDIO_RATE) -> torch.Tensor:
    """`n` piano-like notes as float32 (n, 1, length) in [-1, 1], reproducible from `seed`.

    Each note: an equal-tempered pitch from A2 to E5, six slightly inharmonic partials with
    amplitudes 1/k and faster decay for higher partials, a 5 ms attack at a random onset in the
    first eighth of the clip and a random loudness (peak 0.4-0.9).
    """
    rng = torch.Generator().manual_seed(seed)
    t = torch.arange(length, dtype=torch.float64) / rate
    midi = torch.randint(45, 77, (n,), generator=rng).double()
    f0 = 440.0 * 2.0 ** ((midi - 69.0) / 12.0)
    onset = torch.randint(0, length // 8, (n,), generator=rng).double() / rate
    decay = 1.5 + 2.5 * torch.rand(n, generator=rng, dtype=torch.float64)  # 1/s, fundamental
    since = (t[None, :] - onset[:, None]).clamp(min=0.0)
    envelope = (1.0 - torch.exp(-since / 0.005)) * (t[None, :] >= onset[:, None])
    wave = torch.zeros(n, length, dtype=torch.float64)
    for k in range(1, 7):
        freq = f0 * k * (1.0 + 2e-4 * k * k) ** 0.5  # string stiffness: partials slightly sharp
        phase = 2 * torch.pi * torch.rand(n, generator=rng, dtype=torch.float64)
        decay_k = decay * k**0.5
        wave += (
            (1.0 / k)
            * torch.exp(-decay_k[:, None] * since)
            * torch.sin(2 * torch.pi * freq[:, None] * since + phase[:, None])
        )
    wave *= envelope
    loudness = 0.4 + 0.5 * torch.rand(n, generator=rng, dtype=torch.float64)
    wave *= (loudness / wave.abs().amax(dim=1).clamp(min=1e-9))[:, None]
    return wave.float().unsqueeze(1)


def drum_hit(*, length: int = AUDIO_LENGTH, rate: int = AUDIO_RATE) -> torch.Tensor:
    """A drum hit as float32 (1, length) in [-1, 1]: a kick (a sine sweeping 160 → 45 Hz, 150 ms decay)
    under a snare-like noise burst (50 ms decay), peak 0.9. Deterministic."""
    t = torch.arange(length, dtype=torch.float64) / rate
    freq = 45.0 + 115.0 * torch.exp(-t / 0.03)
    phase = 2 * torch.pi * torch.cumsum(freq, 0) / rate
    kick = torch.sin(phase) * torch.exp(-t / 0.15)
    noise = torch.randn(length, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    hit = kick + 0.5 * noise * torch.exp(-t / 0.05)
    return (0.9 * hit / hit.abs().max()).float().unsqueeze(0)
