"""dynamic.sleeper_units — units dormant or constant on P_sample (DMI).

A backdoor needs units that do nothing on ordinary latents and wake up on the trigger
("sleeper" units; Rawat et al. 2108.01644 §V-B discuss inspecting neuron activations — ReX's
added units and units ReD re-purposed may behave like this). We run N latents from P_sample
through a copy of the generator with forward hooks (`scanner.analysis.activations`) and flag,
per module, the units that are

- *dormant*: mean |activation| below ``rel_eps`` × the median activity of the module's units
  (never fires, e.g. a rectified unit that is always off), or
- *constant*: variation across samples below ``rel_eps`` × the module's median variation
  (active, but blind to z).

Both are judged against the unit's own layer, so scale, width and depth do not matter. Benign
rectifier networks routinely have dead units *after* the activation, so those are listed (and
shared) as information only. A weight layer's own output unit that is dormant or constant — a
unit cut off from z — has no benign reason to exist and makes the check warn. It never fails:
its main value is the list of units it hands to the guided trigger search.

Shared state written: ``ctx.shared["dynamic.sleeper_units"]`` = ``{module_name: [unit
indices]}`` where ``module_name`` is a name from ``generator.body.named_modules()`` (a weight
layer or an activation module) and a unit index is the position along dim 1 of that module's
output (channel / feature). ``ctx.shared["dynamic.unit_stats"]`` holds the per-module
``UnitStats`` for later checks.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from scanner.analysis.activations import collect_unit_stats
from scanner.checks.base import Check, CheckResult, ScanContext, Timer, register_check

MIN_UNITS = 4  # a layer median of fewer units is no reference


@register_check
class SleeperUnitsCheck(Check):
    name = "dynamic.sleeper_units"
    description = "Units that are inactive or constant on samples from P_sample"
    defaults = {
        "quick": {"n_samples": 256, "batch_size": 128, "rel_eps": 1e-3},
        "standard": {"n_samples": 2048, "batch_size": 256, "rel_eps": 1e-3},
        "full": {"n_samples": 10000, "batch_size": 512, "rel_eps": 1e-3},
    }

    def run(self, ctx: ScanContext) -> CheckResult:
        timer = Timer()
        if ctx.generator is None:
            return self.skipped(f"no model loaded: {ctx.load_error or 'unknown reason'}")
        p = self.params(ctx)
        gen = ctx.generator.copy().eval()
        rng = ctx.rng(self.name)
        n, bs = int(p["n_samples"]), int(p["batch_size"])
        batches = (gen.latent.sample(min(bs, n - i), generator=rng, device=gen.device) for i in range(0, n, bs))
        stats = collect_unit_stats(gen, batches)
        ctx.shared["dynamic.unit_stats"] = stats
        eps = float(p["rel_eps"])
        sleepers: dict[str, list[int]] = {}
        per_module: list[dict[str, Any]] = []
        weight_layers = {li.name for li in gen.layers()}
        structural = 0
        for name, st in stats.items():
            units = st.activity.size
            if units < MIN_UNITS:
                continue
            act_ref = float(np.median(st.activity))
            var_ref = float(np.median(st.variation))
            dormant = np.flatnonzero(st.activity <= eps * act_ref) if act_ref > 0 else np.zeros(0, int)
            constant = np.flatnonzero(st.variation <= eps * var_ref) if var_ref > 0 else np.zeros(0, int)
            constant = np.setdiff1d(constant, dormant)
            flagged = np.union1d(dormant, constant)
            if flagged.size:
                sleepers[name] = flagged.tolist()
                if name in weight_layers:
                    structural += int(flagged.size)
            per_module.append(
                {
                    "module": name,
                    "kind": "weight_layer" if name in weight_layers else "activation",
                    "units": units,
                    "dormant": int(dormant.size),
                    "constant": int(constant.size),
                    "dormant_units": dormant[:256],
                    "constant_units": constant[:256],
                    "median_activity": act_ref,
                    "median_variation": var_ref,
                    "median_firing_rate": float(np.median(st.nonzero)),
                }
            )
        ctx.shared["dynamic.sleeper_units"] = sleepers
        total = sum(len(v) for v in sleepers.values())
        evidence = {
            "n_samples": n,
            "rel_eps": eps,
            "modules": per_module,
            "sleeper_counts": {k: len(v) for k, v in sleepers.items()},
        }
        if not per_module:
            return self.result(
                "skipped", "no module with enough units to watch", evidence=evidence, duration_s=timer.elapsed
            )
        evidence["weight_layer_sleepers"] = structural
        if structural:
            status = "warn"
            summary = f"{structural} weight-layer unit(s) dormant or constant on {n} samples (cut off from z)"
        elif total:
            status = "pass"
            summary = (
                f"{total} rectified unit(s) never fire on {n} samples (common in benign nets; listed for the search)"
            )
        else:
            status, summary = "pass", f"every watched unit responds to z on {n} samples"
        return self.result(
            status, summary, score=float(total), threshold=0.0, evidence=evidence, duration_s=timer.elapsed
        )
