"""Small helpers the output-inspection checks share (target stacking, statuses, file names)."""

from __future__ import annotations

import torch

from scanner.generator import Generator

_STATUS_RANK = {"skipped": -1, "pass": 0, "warn": 1, "fail": 2}


def stack_targets(generator: Generator, hints: list, device: torch.device) -> torch.Tensor:
    """Target hints (TargetHint list) as one (T, *out) float tensor on `device`."""
    shape = generator.output.shape
    if not hints:
        return torch.empty((0, *shape), device=device)
    return torch.stack([h.tensor.reshape(shape).float() for h in hints]).to(device)


def distance_to_each_hint(generator: Generator, hints: list, output: torch.Tensor) -> dict[str, float]:
    """Per-element mean squared distance of one output (1, *out) to each target hint, by hint name."""
    stacked = stack_targets(generator, hints, torch.device("cpu"))
    flat = output.detach().cpu().reshape(1, -1)
    return {hint.name: float((flat - h.reshape(1, -1)).pow(2).mean()) for hint, h in zip(hints, stacked, strict=True)}


def status_rank(status: str) -> int:
    return _STATUS_RANK.get(status, 0)


def worst_status(statuses: list[str]) -> str:
    return max(statuses, key=status_rank, default="pass")


def artifact_stem(index: int, name: str) -> str:
    """A file-name-safe, unique stem for a user-supplied hint name."""
    cleaned = "".join(c if c.isalnum() or c in "-_" else "_" for c in name)[:48]
    return f"{index}_{cleaned or 'target'}"
