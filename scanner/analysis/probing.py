"""Helpers for probing a generator numerically: a float64 working copy and a latent scale."""

from __future__ import annotations

import torch

from scanner.generator import Generator


def working_copy(generator: Generator, z_probe: torch.Tensor) -> tuple[Generator, torch.dtype]:
    """An eval-mode copy, in float64 when the model runs in it (finite differences need the
    precision), else float32. The caller's model is never touched."""
    gen = generator.copy().eval()
    try:
        g64 = gen.double()
        with torch.no_grad():
            out = g64.pre_activation(z_probe.to(g64.device, torch.float64))
        if out.dtype == torch.float64:
            return g64, torch.float64
    except Exception:  # some module cannot run in float64 (e.g. an op with a float32 constant)
        pass
    return generator.copy().eval().float(), torch.float32
