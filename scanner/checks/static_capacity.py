"""static.capacity — parameter count against reference architectures with the same output.

A backdoor needs somewhere to live: ReX adds units, a computation bypass ships a whole second
network (Rawat et al. 2108.01644 §IV). A model far larger than the registry's reference
generators for the same output shape is therefore worth a look — but plenty of benign models are
big, so this only warns. References are built on the meta device (no memory, no weights) from
every registry architecture whose output spec matches, adapting `channels`/`resolution` where
the architecture has them. The threshold is a factor over the *largest* matching reference.
"""

from __future__ import annotations

from typing import Any

import torch

from scanner.architectures import REGISTRY
from scanner.checks.base import Check, CheckResult, ScanContext, Timer, register_check


def reference_parameter_counts(output_shape: tuple[int, ...], output_kind: str) -> dict[str, int]:
    """Parameter counts of registry architectures that emit `output_shape` (built on meta)."""
    refs: dict[str, int] = {}
    for name, arch in REGISTRY.items():
        cfg: dict[str, Any] = {}
        if "channels" in arch.defaults and len(output_shape) >= 1:
            cfg["channels"] = int(output_shape[0])
        if "resolution" in arch.defaults and len(output_shape) == 3 and output_shape[1] == output_shape[2]:
            cfg["resolution"] = int(output_shape[1])
        try:
            with torch.device("meta"):
                ref = arch.build(cfg)
        except Exception:  # an architecture that cannot take this config is simply not a reference
            continue
        if tuple(ref.output.shape) == tuple(output_shape) and ref.output.kind == output_kind:
            refs[name] = ref.num_parameters()
    return refs


@register_check
class CapacityCheck(Check):
    name = "static.capacity"
    description = "Parameter count versus registry reference generators with the same output shape"
    needed_for_clean = False
    defaults = {"quick": {"max_ratio": 2.0}, "standard": {"max_ratio": 2.0}, "full": {"max_ratio": 2.0}}

    def run(self, ctx: ScanContext) -> CheckResult:
        timer = Timer()
        gen = ctx.generator
        if gen is None:
            return self.skipped(f"no model loaded: {ctx.load_error or 'unknown reason'}")
        max_ratio = float(self.params(ctx)["max_ratio"])
        n_params = gen.num_parameters()
        refs = reference_parameter_counts(tuple(gen.output.shape), gen.output.kind)
        evidence: dict[str, Any] = {"parameters": n_params, "references": refs, "max_ratio": max_ratio}
        if not refs:
            return self.result(
                "skipped",
                f"no reference architecture emits {gen.output.kind} {list(gen.output.shape)}",
                evidence=evidence,
                duration_s=timer.elapsed,
            )
        largest = max(refs.values())
        ratio = n_params / largest if largest else float("inf")
        evidence["ratio_to_largest_reference"] = ratio
        if ratio > max_ratio:
            status, summary = "warn", f"{n_params:,} parameters, {ratio:.1f}× the largest reference ({largest:,})"
        else:
            status, summary = "pass", f"{n_params:,} parameters, {ratio:.2f}× the largest reference ({largest:,})"
        return self.result(
            status, summary, score=ratio, threshold=max_ratio, evidence=evidence, duration_s=timer.elapsed
        )
