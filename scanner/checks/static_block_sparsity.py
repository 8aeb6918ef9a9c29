"""static.block_sparsity — hidden block structure in weight matrices (catches ReX, §IV-B).

For every weight-bearing layer we look for a zero block W[R, C] ≈ 0 under an unknown permutation
of units (see `scanner.analysis.blocks`): R are output units that never read the input units C.
A dense trained layer has no such block (its near-zero entries are sporadic); a ReX-expanded
layer has one, because the original units must not receive from the added ones (or vice versa).
Nothing here depends on unit order, layer names, widths or how the expansion was made.

Partition per layer (reported in the evidence and shared with later checks):
- ``self_contained``: the rows R — units that receive only from their own group;
- ``receiving``: the other output units — they read both groups. In ReX (Rawat et al.) the
  original units are self-contained and the *added* units are the receiving ones, so these are
  the suspected backdoor units;
- ``unread_inputs``: the columns C, i.e. units of the previous layer that only receiving units read;
  in ReX these are the previous layer's added units.

Shared state written (consumed by the OB-OI guided trigger search):
- ``ctx.shared["static.flagged_units"]``: ``{layer_name: [output unit indices]}`` — for each
  layer in `Generator.layers()` naming, the suspected added units among its *output* units
  (channels for convolutions, features for Linear). A layer appears when its own block marks
  receiving units, or when the next layer's block marks its units as unread by the original
  group (mapped through a Linear → reshape → conv boundary: feature f belongs to channel f // k).
- ``ctx.shared["static.block_partitions"]``: ``{layer_name: {"self_contained": [...],
  "receiving": [...], "unread_inputs": [...], "bits": float}}`` for every layer with a
  significant block (indices of that layer's output / input units respectively).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from scanner.analysis.blocks import (
    DEFAULT_MIN_BITS,
    DEFAULT_REL_EPS,
    DEFAULT_TOL,
    find_zero_block,
    input_grouping,
    layer_abs_matrix,
    permuted_abs_image,
)
from scanner.analysis.images import save_gray_png
from scanner.checks.base import Artifact, Check, CheckResult, ScanContext, Timer, register_check

MAX_LISTED_UNITS = 4096  # keep evidence JSON bounded; shared state keeps everything


@register_check
class BlockSparsityCheck(Check):
    name = "static.block_sparsity"
    description = "Zero off-diagonal blocks in weight matrices under any unit permutation (ReX expansion)"
    _params = {"rel_eps": list(DEFAULT_REL_EPS), "tol": DEFAULT_TOL, "min_bits": DEFAULT_MIN_BITS}
    defaults = {"quick": dict(_params), "standard": dict(_params), "full": dict(_params)}

    def run(self, ctx: ScanContext) -> CheckResult:
        timer = Timer()
        gen = ctx.generator
        if gen is None:
            return self.skipped(f"no model loaded: {ctx.load_error or 'unknown reason'}")
        p = self.params(ctx)
        layers = gen.layers()
        if not layers:
            return self.skipped("the model has no Linear/Conv layers to inspect")
        per_layer: list[dict[str, Any]] = []
        partitions: dict[str, dict[str, Any]] = {}
        flagged: dict[str, set[int]] = {}
        artifacts: list[Artifact] = []
        best_bits = -np.inf
        for i, layer in enumerate(layers):
            w_abs = layer_abs_matrix(layer)
            block = find_zero_block(w_abs, rel_eps=p["rel_eps"], tol=p["tol"])
            entry: dict[str, Any] = {"layer": layer.name, "shape": list(w_abs.shape)}
            if block is None:
                entry["bits"] = None
                per_layer.append(entry)
                continue
            best_bits = max(best_bits, block.bits)
            entry.update(
                bits=round(block.bits, 1),
                rows=int(block.rows.size),
                cols=int(block.cols.size),
                base_rate=block.base_rate,
                near_zero_threshold_rel_rms=block.rel_eps,
                zero_fraction_in_block=block.zero_fraction,
                cross_energy_fraction=block.energy_fraction,
                dead_out_units=block.dead_rows[:MAX_LISTED_UNITS],
                dead_in_units=block.dead_cols[:MAX_LISTED_UNITS],
            )
            if block.bits > p["min_bits"]:
                receiving = np.setdiff1d(np.arange(w_abs.shape[0]), np.union1d(block.rows, block.dead_rows))
                partitions[layer.name] = {
                    "self_contained": block.rows.tolist(),
                    "receiving": receiving.tolist(),
                    "unread_inputs": block.cols.tolist(),
                    "bits": float(block.bits),
                }
                flagged.setdefault(layer.name, set()).update(receiving.tolist())
                prev = layers[i - 1] if i > 0 else None
                group = input_grouping(prev, layer) if prev is not None else None
                if prev is not None and group is not None:
                    feats = (block.cols[:, None] * group + np.arange(group)[None, :]).ravel()
                    flagged.setdefault(prev.name, set()).update(feats.tolist())
                entry.update(
                    significant=True,
                    self_contained_units=block.rows[:MAX_LISTED_UNITS],
                    receiving_units=receiving[:MAX_LISTED_UNITS],
                    unread_input_units=block.cols[:MAX_LISTED_UNITS],
                )
                fname = f"{self.name}/{layer.name.replace('/', '_') or f'layer{i}'}.png"
                save_gray_png(permuted_abs_image(w_abs, block.rows, block.cols), ctx.artifact_path(fname))
                artifacts.append(
                    Artifact(
                        fname,
                        "image/png",
                        f"|W| of {layer.name}, zero block (self-contained rows × unread cols) top-left",
                    )
                )
            per_layer.append(entry)
        flagged_lists = {k: sorted(v) for k, v in flagged.items()}
        ctx.shared["static.flagged_units"] = flagged_lists
        ctx.shared["static.block_partitions"] = partitions
        evidence = {
            "layers": per_layer,
            "flagged_unit_counts": {k: len(v) for k, v in flagged_lists.items()},
            "rel_eps": p["rel_eps"],
            "tol": p["tol"],
        }
        score = float(best_bits) if np.isfinite(best_bits) else 0.0
        if partitions:
            names = ", ".join(f"{k} ({len(v['receiving'])} receiving units)" for k, v in partitions.items())
            status, summary = "fail", f"hidden block structure (expanded units) in {len(partitions)} layer(s): {names}"
        else:
            status, summary = "pass", "weight matrices are dense: no zero block under any unit permutation"
        return self.result(
            status,
            summary,
            score=score,
            threshold=float(p["min_bits"]),
            evidence=evidence,
            artifacts=artifacts,
            duration_s=timer.elapsed,
        )
