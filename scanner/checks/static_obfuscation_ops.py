"""static.obfuscation_ops — gradient-obfuscating operations in the graph or module tree (SMI).

Optimization-based output inspection (OB-OI, Rawat et al. 2108.01644 §V) searches z by gradient
descent; an attacker can blunt it the way adversarial-example defences were blunted (Athalye et
al. 2018): randomness in the forward pass (RandomNormal/Uniform, dropout left active),
zero-gradient steps on the latent path (Round/Floor/Ceil/Sign, quantization, casts to integers)
and numerically fragile no-op pairs (log∘exp, exp∘log, atanh∘tanh) that overflow or flatten
gradients. We read the dataflow graph (ONNX graph, or `torch.export` of the module) and the
module tree:

- fail: a random op (or active dropout) reaches the output — the generator is stochastic;
  or every z → output path crosses a zero-gradient op — ∂G/∂z is identically zero;
- warn: zero-gradient ops on some z-dependent path, quantization modules, or no-op pairs;
- pass: none of these; inactive dropout (identity in eval) is listed as information only.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from scanner.analysis.dataflow import (
    DROPOUT_OPS,
    LOG_EXP_PAIRS,
    RANDOM_OPS,
    ZERO_GRADIENT_OPS,
    DataflowGraph,
    analyse_generator,
)
from scanner.checks.base import Check, CheckResult, ScanContext, Timer, register_check

DROPOUT_MODULES = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.FeatureAlphaDropout)


def graph_findings(graph: DataflowGraph) -> dict[str, list[dict[str, Any]]]:
    """Random, zero-gradient and no-op-pair ops that can influence an output."""
    to_output = graph.reaches_output()
    tainted = graph.latent_dependent()
    found: dict[str, list[dict[str, Any]]] = {
        "random": [],
        "dropout_inactive": [],
        "zero_gradient": [],
        "noop_pair": [],
    }
    for node in graph.ops():
        if node.id not in to_output:
            continue
        entry = graph.describe(node.id)
        if node.op in DROPOUT_OPS and node.op != "native_dropout":
            (found["random"] if node.attrs.get("training") else found["dropout_inactive"]).append(entry)
        elif node.op in RANDOM_OPS:
            found["random"].append(entry)
        elif node.id in tainted and (node.op in ZERO_GRADIENT_OPS or node.attrs.get("cast_to_integer")):
            found["zero_gradient"].append(entry)
        for src in node.inputs:
            parent = graph.nodes.get(src)
            if parent is not None and (parent.op, node.op) in LOG_EXP_PAIRS:
                found["noop_pair"].append({"node": node.id, "op": f"{node.raw_op}({parent.raw_op}(·))"})
    return found


def gradient_blocked(graph: DataflowGraph, zero_grad_ids: set[str]) -> bool:
    """True when every z → output path passes through a zero-gradient op."""
    tainted = graph.latent_dependent()
    seen: set[str] = set()
    stack = [i for i in graph.latent_ids]
    while stack:
        cur = stack.pop()
        if cur in seen or cur in zero_grad_ids:
            continue
        seen.add(cur)
        if graph.nodes[cur].kind == "output":
            return False
        stack.extend(s for s in graph.successors(cur) if s in tainted or graph.nodes[s].kind == "output")
    return True


@register_check
class ObfuscationOpsCheck(Check):
    name = "static.obfuscation_ops"
    description = "Randomness, zero-gradient steps and no-op pairs that obfuscate gradients"
    defaults = {"quick": {}, "standard": {}, "full": {}}

    def run(self, ctx: ScanContext) -> CheckResult:
        timer = Timer()
        gen = ctx.generator
        if gen is None:
            return self.skipped(f"no model loaded: {ctx.load_error or 'unknown reason'}")
        modules: dict[str, list[dict[str, Any]]] = {"dropout_active": [], "dropout_inactive": [], "quantization": []}
        for name, m in gen.body.named_modules():
            if isinstance(m, DROPOUT_MODULES) and m.p > 0:
                modules["dropout_active" if m.training else "dropout_inactive"].append({"module": name, "p": m.p})
            elif "quantiz" in type(m).__module__.lower() or "quant" in type(m).__name__.lower():
                modules["quantization"].append({"module": name, "type": type(m).__name__})
        analysis = analyse_generator(gen, ctx.shared)
        evidence: dict[str, Any] = {"modules": modules}
        if analysis.graph is None:
            reason = analysis.error or f"latent-dependent control flow: {analysis.latent_control_flow}"
            evidence["graph_error"] = reason
            if modules["dropout_active"]:
                return self.result("fail", "dropout is active at inference (stochastic generator)",
                                   score=1.0, threshold=0.0, evidence=evidence, duration_s=timer.elapsed)  # fmt: skip
            return self.result("error", f"no computation graph to inspect: {reason}", evidence=evidence,
                               duration_s=timer.elapsed)  # fmt: skip
        graph = analysis.graph
        found = graph_findings(graph)
        zero_ids = {e["node"] for e in found["zero_gradient"]}
        blocked = bool(zero_ids) and gradient_blocked(graph, zero_ids)
        evidence.update({"graph_source": graph.source, "graph": {k: v[:50] for k, v in found.items()},
                         "gradient_blocked": blocked})  # fmt: skip
        n_random = len(found["random"]) + len(modules["dropout_active"])
        if n_random:
            status, summary = "fail", f"{n_random} random op(s)/active dropout reach the output (stochastic generator)"
        elif blocked:
            status, summary = "fail", "every z→output path crosses a zero-gradient op (∂G/∂z ≡ 0)"
        elif found["zero_gradient"] or found["noop_pair"] or modules["quantization"]:
            kinds = [k for k in ("zero_gradient", "noop_pair") if found[k]] + (
                ["quantization"] if modules["quantization"] else []
            )
            status, summary = "warn", f"gradient-obfuscating operations on the latent path: {', '.join(kinds)}"
        else:
            status, summary = "pass", "no random, zero-gradient or no-op-pair operations on the z→output path"
        score = float(n_random + len(found["zero_gradient"]) + len(found["noop_pair"]) + len(modules["quantization"]))
        return self.result(status, summary, score=score, threshold=0.0, evidence=evidence, duration_s=timer.elapsed)
