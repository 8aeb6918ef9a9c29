"""static.bypass_topology — latent-dependent selection and parallel z → output paths (SMI).

The naive backdoor of Rawat et al. (2108.01644, §IV "computation bypass") wraps a benign
generator as `x = x_target if z ∈ trigger set else G(z)`. In a computation graph that shows up
as a comparison (or control flow / arg-selection) whose inputs depend on the latent z and whose
result decides what reaches the output, or — when the target is produced by a second network —
as two parameter-disjoint paths from z to the output. Benign generators (DCGAN, VAE decoders,
WaveGAN, StyleGAN mapping+synthesis) contain neither: their only z-dependent nonlinearities are
elementwise activations, and every z → output path passes through the first learned layer.

Verdicts:
- fail: a z-dependent comparison / boolean / selection / control-flow op reaches the output, or
  the model branches in Python on a z-dependent value (torch.export cannot trace it);
- warn: ≥ 2 z → output paths that share no learned (matmul/conv) layer, or a parameter-free
  z → output path (a second sub-network or a skip that bypasses the generator);
- error: no graph could be obtained (the verdict is then inconclusive, fail closed).

Shared state written: ``ctx.shared["static.bypass_gates"]`` = list of
``{"node": str, "op": str}`` for each gate found (empty when none).
"""

from __future__ import annotations

import math
from typing import Any

import networkx as nx

from scanner.analysis.dataflow import (
    BOOLEAN_OPS,
    COMPARISON_OPS,
    CONTROL_FLOW_OPS,
    SELECTION_OPS,
    DataflowGraph,
    analyse_generator,
)
from scanner.checks.base import Check, CheckResult, ScanContext, Timer, register_check

GATE_OPS = COMPARISON_OPS | BOOLEAN_OPS | SELECTION_OPS
MASK_SECOND_OPS = frozenset({"masked_fill", "masked_select", "masked_scatter"})


def find_latent_gates(graph: DataflowGraph) -> list[dict[str, Any]]:
    """z-dependent comparisons / selections / control flow whose result reaches an output."""
    tainted = graph.latent_dependent()
    to_output = graph.reaches_output()
    gates: list[dict[str, Any]] = []
    for node in graph.ops():
        if node.op not in GATE_OPS or node.id not in tainted or node.id not in to_output:
            continue
        # a selection is latent-driven only when its *condition* (where/if: first input,
        # masked_*: the mask, second input) depends on z
        if node.op in ("where", "if") and (not node.inputs or node.inputs[0] not in tainted):
            continue
        if node.op in MASK_SECOND_OPS and (len(node.inputs) < 2 or node.inputs[1] not in tainted):
            continue
        gates.append(
            {
                "node": node.id,
                "op": node.raw_op,
                "kind": "control_flow" if node.op in CONTROL_FLOW_OPS else "selection_or_comparison",
            }
        )
    return gates


def count_parallel_learned_paths(graph: DataflowGraph) -> tuple[float, list[str]]:
    """Max number of z → output paths that share no learned layer (vertex-disjoint at matmul/conv).

    Computed as a max-flow where learned layers have capacity 1 and other ops are free; ``inf``
    means some z → output path has no learned layer at all. Returns (count, a minimum cut of
    learned layers as node ids).
    """
    tainted = graph.latent_dependent()
    to_output = graph.reaches_output()
    relevant = tainted & to_output
    flow = nx.DiGraph()
    source, sink = "__z__", "__out__"
    for nid in relevant:
        node = graph.nodes[nid]
        if node.kind == "op" and graph.is_parametric(node, tainted):
            flow.add_edge((nid, "in"), (nid, "out"), capacity=1)
        else:
            flow.add_edge((nid, "in"), (nid, "out"))  # no capacity attribute = unbounded
        if node.kind == "input":
            flow.add_edge(source, (nid, "in"))
        if node.kind == "output":
            flow.add_edge((nid, "out"), sink)
        for succ in graph.successors(nid):
            if succ in relevant:
                flow.add_edge((nid, "out"), (succ, "in"))
    if source not in flow or sink not in flow:
        return 0.0, []
    if not any(graph.nodes[n].kind == "op" and graph.is_parametric(graph.nodes[n], tainted) for n in relevant):
        return 1.0, []  # no learned layer at all: one (trivial) path, nothing runs in parallel to it
    try:
        value, (reachable, _) = nx.minimum_cut(flow, source, sink)
    except nx.NetworkXUnbounded:
        return math.inf, []
    cut = sorted(u[0] for u in reachable if isinstance(u, tuple) and u[1] == "in" and (u[0], "out") not in reachable)
    return float(value), cut


@register_check
class BypassTopologyCheck(Check):
    name = "static.bypass_topology"
    description = "Latent-dependent selection/control flow and parallel z→output paths (computation bypass)"
    defaults = {"quick": {}, "standard": {}, "full": {}}

    def run(self, ctx: ScanContext) -> CheckResult:
        timer = Timer()
        gen = ctx.generator
        if gen is None:
            return self.skipped(f"no model loaded: {ctx.load_error or 'unknown reason'}")
        analysis = analyse_generator(gen, ctx.shared)
        if analysis.latent_control_flow is not None:
            ctx.shared["static.bypass_gates"] = [{"node": "python", "op": "if", "kind": "control_flow"}]
            return self.result(
                "fail",
                "the model branches in Python on a value computed from z (latent-dependent control flow)",
                score=1.0,
                threshold=0.0,
                evidence={"source": "torch.export", "message": analysis.latent_control_flow},
                duration_s=timer.elapsed,
            )
        if analysis.graph is None:
            return self.result("error", analysis.error or "no computation graph available", duration_s=timer.elapsed)
        graph = analysis.graph
        gates = find_latent_gates(graph)
        paths, cut = count_parallel_learned_paths(graph)
        ctx.shared["static.bypass_gates"] = gates
        evidence: dict[str, Any] = {
            "graph_source": graph.source,
            "ops": sum(1 for _ in graph.ops()),
            "latent_inputs": [graph.nodes[i].raw_op for i in graph.latent_ids],
            "latent_gates": gates[:50],
            "n_latent_gates": len(gates),
            "parallel_learned_paths": paths,
            "min_learned_cut": cut[:20],
        }
        if gates:
            ops = sorted({g["op"] for g in gates})
            status, summary = "fail", f"{len(gates)} z-dependent selection/comparison op(s) reach the output: {ops[:5]}"
        elif paths > 1:
            what = "a parameter-free path" if math.isinf(paths) else f"{int(paths)} learned-layer-disjoint paths"
            status, summary = "warn", f"z reaches the output through {what} (parallel sub-networks)"
        else:
            status, summary = "pass", "no z-dependent selection and a single learned path from z to the output"
        return self.result(
            status,
            summary,
            score=float(len(gates)),
            threshold=0.0,
            evidence=evidence,
            duration_s=timer.elapsed,
        )
