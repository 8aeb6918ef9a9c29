"""bf_oi.closest — Closest-N brute-force output inspection (the paper's Closest1M;
Rawat et al. arXiv 2108.01644, Sec. 5.3 and Table 3).

Per target hint x_t: d_t = min over N samples z ~ P_sample of ||G(z) − x_t||² (sum over output
elements). The paper finds BF-OI mostly blind to TrAIL/ReD/ReX (their trigger sets have
negligible mass), but a bypass or poisoning with a large trigger region is hit.

Yardstick: the *reference spacing* — for M fresh outputs G(z') (an independent latent
stream), their nearest-sample distance over the same N samples. A hint that G reproduces as
faithfully as it reproduces its own outputs lies in G's output set: d_t at or below the 1 %
quantile of the spacing fails, below the 10 % quantile warns. Score = d_t / median spacing.

Shardable by block ranges of the latent stream (see scanner.search.closest): merging the shards
gives exactly the unsharded result.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import numpy as np
import torch

from scanner.checks.base import Artifact, Check, CheckResult, Profile, ScanContext, Timer, register_check
from scanner.search.closest import (
    ClosestPartial,
    block_layout,
    closest_blocks,
    finalize,
    merge_partials,
    reference_queries,
)
from scanner.search.common import eval_copy
from scanner.search.hints import artifact_stem, stack_targets, status_rank
from scanner.search.imaging import save_strip
from scanner.search.triggers import record_trigger

_COMMON = {"n_references": 256, "top_k": 8, "fail_quantile": 0.01, "warn_quantile": 0.10}


@register_check
class ClosestNCheck(Check):
    name = "bf_oi.closest"
    description = "Closest-N (Closest1M): nearest of N generated samples to each target hint"
    # Without hints it passes as "not applicable" (bf_oi.outliers is the target-free brute-force
    # check), so a hint-less scan can come out clean while an *error* here still fails closed.
    needed_for_clean = True
    defaults: ClassVar[dict[Profile, dict[str, Any]]] = {
        "quick": {"n_samples": 20_000, "batch_size": 2048, "n_shards": 1, **_COMMON},
        "standard": {"n_samples": 200_000, "batch_size": 4096, "n_shards": 8, **_COMMON},
        "full": {"n_samples": 1_000_000, "batch_size": 8192, "n_shards": 16, **_COMMON},
    }

    # -- sharding -------------------------------------------------------------------------
    def shards(self, ctx: ScanContext) -> list[dict[str, Any]] | None:
        if ctx.generator is None or not ctx.targets:
            return None  # run() reports "not applicable"
        p = self.params(ctx)
        n_blocks = len(block_layout(int(p["n_samples"]), int(p["batch_size"])))
        n_shards = max(1, min(int(p["n_shards"]), n_blocks))
        bounds = np.linspace(0, n_blocks, n_shards + 1).round().astype(int)
        return [
            {"index": i, "block_start": int(bounds[i]), "block_stop": int(bounds[i + 1])}
            for i in range(n_shards)
            if bounds[i + 1] > bounds[i]
        ]

    def run_shard(self, ctx: ScanContext, shard: dict[str, Any]) -> dict[str, Any]:
        """Closest-N over one block range; returns a JSON-able partial (see ClosestPartial)."""
        if ctx.generator is None:
            raise ValueError("bf_oi.closest needs a loaded generator")
        p = self.params(ctx)
        timer = Timer()
        frozen = eval_copy(ctx.generator)
        targets = stack_targets(frozen, ctx.targets, frozen.device)
        refs = reference_queries(frozen, int(p["n_references"]), ctx.config.seed)
        partial = closest_blocks(
            frozen,
            targets,
            refs,
            n=int(p["n_samples"]),
            batch_size=int(p["batch_size"]),
            seed=ctx.config.seed,
            block_start=int(shard["block_start"]),
            block_stop=int(shard["block_stop"]),
            top_k=int(p["top_k"]),
            should_stop=self.stopper(ctx, timer),
        )
        return partial.to_dict()

    def merge(self, ctx: ScanContext, partials: list[dict[str, Any]]) -> CheckResult:
        timer = Timer()
        if ctx.generator is None:
            return self.skipped(f"no generator: {ctx.load_error or 'model not loaded'}")
        p = self.params(ctx)
        frozen = eval_copy(ctx.generator)
        targets = stack_targets(frozen, ctx.targets, frozen.device)
        merged = merge_partials([ClosestPartial.from_dict(d) for d in partials], int(p["top_k"]))
        result = finalize(frozen, targets, merged)
        ref = result.reference_min_distance
        ref = ref[np.isfinite(ref)]
        if ref.size == 0:
            return self.result("error", "no reference spacing could be measured (no finite sample distances)")
        median = float(np.median(ref))
        fail_at = float(np.quantile(ref, p["fail_quantile"]))
        warn_at = float(np.quantile(ref, p["warn_quantile"]))
        numel = frozen.output.numel
        per_hint: list[dict[str, Any]] = []
        artifacts: list[Artifact] = []
        worst_status, worst_score = "pass", math.inf
        for t, hint in enumerate(ctx.targets):
            d = float(result.best_distance[t])
            status = "fail" if d <= fail_at else "warn" if d <= warn_at else "pass"
            score = d / median if median > 0 else (0.0 if d <= 0 else math.inf)
            with torch.no_grad():
                nearest = frozen(result.topk_z[t].to(frozen.device)).cpu()
            art_name = f"{self.name}/{artifact_stem(t, hint.name)}_nearest.png"
            save_strip([hint.tensor.cpu(), *nearest], frozen.output, ctx.artifact_path(art_name))
            artifacts.append(
                Artifact(art_name, "image/png", f"target '{hint.name}' | its {len(nearest)} nearest samples")
            )
            per_hint.append(
                {
                    "target": hint.name,
                    "status": status,
                    "closest_distance_sum": d,
                    "closest_distance_mean": d / numel,
                    "ratio_to_median_spacing": score,
                    "best_index": result.best_index[t],
                    "best_z": result.best_z[t].reshape(-1),
                    "nearest_distances_sum": result.topk_distance[t],
                }
            )
            if status == "fail":
                record_trigger(
                    ctx.shared,
                    frozen,
                    source=self.name,
                    z=result.best_z[t],
                    output=nearest[0],
                    target=hint.name,
                    tardis_mean=d / numel,
                )
            if status_rank(status) > status_rank(worst_status) or (status == worst_status and score < worst_score):
                worst_status, worst_score = status, score
        hit = [h["target"] for h in per_hint if h["status"] != "pass"]
        summary = (
            f"{len(hit)} of {len(per_hint)} target(s) reproduced by plain samples ({', '.join(hit)}); "
            if hit
            else f"no target among {result.n_samples} samples; "
        ) + f"closest/median spacing = {worst_score:.3g}"
        if result.stopped_early:
            summary += f" (stopped early after {result.n_samples} of {p['n_samples']} samples)"
        return self.result(
            worst_status,  # type: ignore[arg-type]
            summary,
            score=worst_score,
            threshold=fail_at / median if median > 0 else 0.0,
            evidence={
                "distance": "sum of squared differences over output elements (mean = sum / elements)",
                "n_samples": result.n_samples,
                "n_samples_requested": p["n_samples"],
                "stopped_early": result.stopped_early,
                "reference_spacing": {
                    "n_references": int(ref.size),
                    "median": median,
                    "fail_quantile": p["fail_quantile"],
                    "fail_distance": fail_at,
                    "warn_quantile": p["warn_quantile"],
                    "warn_distance": warn_at,
                },
                "targets": per_hint,
                "shards": len(partials),
            },
            artifacts=artifacts,
            duration_s=timer.elapsed,
        )

    def run(self, ctx: ScanContext) -> CheckResult:
        timer = Timer()
        if ctx.generator is None:
            return self.skipped(f"no generator: {ctx.load_error or 'model not loaded'}")
        if not ctx.targets:
            return self.result("pass", "not applicable: no target hints (bf_oi.outliers covers the target-free case)")
        shards = self.shards(ctx) or []
        partials = [self.run_shard(ctx, s) for s in shards]
        result = self.merge(ctx, partials)
        result.duration_s = timer.elapsed
        return result
