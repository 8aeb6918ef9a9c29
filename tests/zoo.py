"""The shared test model zoo: small benign and backdoored MNIST generators, trained once and cached.

Every entry is trained by the project's own code (scanner.training, scanner.attacks) and cached
on disk under .pytest_cache/dgmscan-zoo, keyed by *all* parameters plus ZOO_VERSION, so a test
session pays for training only the first time. Entries are returned as fresh copies: a test may
modify what it gets without affecting other tests.

    from tests import zoo
    g = zoo.benign_dcgan(seed=0)                       # Generator, dcgan28 base=16
    res = zoo.attacked("red", "ood", seed=0)           # AttackResult (generator, trigger, target, info)

Cross-process safety: a file lock per entry, so parallel pytest runs do not train twice or
read half-written files.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from safetensors.torch import load_file, save_file

from scanner.architectures import build
from scanner.generator import Generator

# Bump when training recipes change, so stale cache entries are not reused.
ZOO_VERSION = 1
CACHE_DIR = Path(__file__).resolve().parent.parent / ".pytest_cache" / "dgmscan-zoo"

# The small zoo DCGAN: dcgan28 at base=16 (≈ 0.45M parameters) — produces digit-like samples
# after 2 epochs on the 10k shipped digits.
DCGAN_SETTINGS: dict[str, Any] = {"base": 16, "epochs": 2, "batch_size": 64, "lr": 5e-4}
VAE_SETTINGS: dict[str, Any] = {"epochs": 3, "latent_dim": 20, "hidden": 400}

_memory: dict[str, Any] = {}


def _key(kind: str, params: dict[str, Any]) -> str:
    blob = json.dumps({"kind": kind, "v": ZOO_VERSION, **params}, sort_keys=True, default=str)
    return f"{kind}-{hashlib.sha256(blob.encode()).hexdigest()[:16]}"


def _cached(key: str, produce: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Return the entry `key` from memory, else disk, else produce it and store it atomically."""
    if key in _memory:
        return _memory[key]
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    path = CACHE_DIR / f"{key}.safetensors"
    with open(CACHE_DIR / f"{key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if path.is_file():
            tensors = load_file(str(path))
            with open(path, "rb") as fh:  # the JSON header carries our metadata
                header_len = int.from_bytes(fh.read(8), "little")
                meta = json.loads(fh.read(header_len)).get("__metadata__", {})
            entry = {"tensors": tensors, "meta": json.loads(meta.get("zoo", "{}"))}
        else:
            entry = produce()
            tmp = path.with_suffix(f".tmp{os.getpid()}")
            save_file(
                {k: v.detach().cpu().contiguous() for k, v in entry["tensors"].items()},
                str(tmp),
                metadata={"zoo": json.dumps(entry["meta"])},
            )
            os.replace(tmp, path)
    _memory[key] = entry
    return entry


def _generator_from(entry: dict[str, Any], prefix: str = "body.") -> Generator:
    meta = entry["meta"]
    g = build(meta["architecture"], meta["config"])
    state = {k[len(prefix) :]: v for k, v in entry["tensors"].items() if k.startswith(prefix)}
    g.body.load_state_dict(state)
    g.metadata.update(meta.get("metadata", {}))
    return g.eval()


def _generator_entry(g: Generator) -> dict[str, Any]:
    return {
        "tensors": {f"body.{k}": v for k, v in g.body.state_dict().items()},
        "meta": {
            "architecture": g.architecture,
            "config": g.metadata.get("architecture_config", {}),
            "metadata": {"trained": g.metadata.get("trained", {})},
        },
    }


def benign_dcgan(seed: int = 0) -> Generator:
    """A small benign dcgan28 (base=16) trained on MNIST with `seed` (≈ 1–3 min on 2 busy cores, once)."""
    from scanner.training import train_dcgan

    params = {"seed": seed, **DCGAN_SETTINGS}
    entry = _cached(_key("benign_dcgan", params), lambda: _generator_entry(train_dcgan(**params)))
    return _generator_from(entry)


def benign_vae(seed: int = 0) -> Generator:
    """A benign MNIST VAE decoder (vae_mnist_decoder) trained with `seed` (≈ 30 s, once)."""
    from scanner.training import train_vae

    params = {"seed": seed, **VAE_SETTINGS}
    entry = _cached(_key("benign_vae", params), lambda: _generator_entry(train_vae(**params)))
    return _generator_from(entry)
