"""Recovered triggers: what output inspection hands to sanitization and reports.

`ctx.shared["recovered_triggers"]` is a list of dicts
    {"source": check name, "z": tensor (1, *latent), "output": tensor (1, *out),
     "target": hint name or None, "tardis_mean": float}
`tardis_mean` is TarDis = ||G(z) − x_target||² as a per-element mean when a hint is known; for a
target-free find (no hint) it is the per-element mean distance between G(z) and the output the
finding points at (cluster spread, divergence from the sanitized copy), documented per source.
"""

from __future__ import annotations

from typing import Any

import torch

from scanner.generator import Generator

SHARED_KEY = "recovered_triggers"


def record_trigger(
    shared: dict[str, Any],
    generator: Generator,
    *,
    source: str,
    z: torch.Tensor,
    output: torch.Tensor,
    target: str | None,
    tardis_mean: float | None,
) -> dict[str, Any]:
    """Append one recovered trigger (tensors detached, on CPU, with a leading batch axis of 1)."""
    record = {
        "source": source,
        "z": z.detach().reshape(1, *generator.latent.shape).cpu().clone(),
        "output": output.detach().reshape(1, *generator.output.shape).cpu().clone(),
        "target": target,
        "tardis_mean": None if tardis_mean is None else float(tardis_mean),
    }
    shared.setdefault(SHARED_KEY, []).append(record)
    return record
