"""A framework-neutral dataflow graph of a generator, and latent taint analysis on it.

Static model inspection (SMI, Rawat et al. 2108.01644 §V-A) reads the *structure* of a model:
which operations depend on the latent z, whether a z-dependent comparison selects what the model
emits (the naive "computation bypass" backdoor: `if z in trigger set: x_target else G(z)`), and
whether gradient-obfuscating operations (randomness, rounding, sign) sit on the z → output path.

Two builders produce the same `DataflowGraph`:
- `from_onnx(model)`: an ONNX `ModelProto`/`GraphProto`, parsed only (nothing is executed);
  sub-graphs of If/Loop/Scan count as consumers of the outer values they reference.
- `from_torch(module, example_z)`: `torch.export` in non-strict mode. It runs the module's Python
  forward with symbolic (fake) tensors, so *every* operation is recorded, including branches a
  concrete input would not take; a Python `if` on a value computed from z cannot be traced and is
  reported as latent-dependent control flow. Only call this on modules the scanner built itself
  (registry architectures, the ONNX executor): it never loads or runs code from an upload.

Operation names are canonicalised to lower case without namespace or overload, so one vocabulary
covers both sources (ONNX `Greater` → `greater`, `aten.gt.Tensor` → `gt`).
"""

from __future__ import annotations

import contextlib
import io
import logging
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import nn

NodeKind = Literal["input", "param", "const", "op", "output"]

# -- op vocabularies (ONNX op_type and aten op names, canonical lower case) --------------------
COMPARISON_OPS = frozenset(
    {
        "greater", "less", "equal", "greaterorequal", "lessorequal", "isnan", "isinf",
        "gt", "lt", "eq", "ne", "ge", "le", "isclose", "isin", "greater_equal", "less_equal",
        "not_equal", "__gt__", "__lt__", "__ge__", "__le__", "__eq__", "__ne__",
    }
)  # fmt: skip
BOOLEAN_OPS = frozenset(
    {"and", "or", "not", "xor", "logical_and", "logical_or", "logical_not", "logical_xor", "all", "any"}
)
SELECTION_OPS = frozenset(
    {
        "where", "if", "loop", "scan", "cond", "while_loop", "map", "argmax", "argmin", "topk",
        "nonzero", "compress", "masked_fill", "masked_select", "masked_scatter", "index_put",
        "sort", "argsort", "unique", "bucketize", "searchsorted", "heaviside", "_assert_scalar",
        "item", "_local_scalar_dense",
    }
)  # fmt: skip
CONTROL_FLOW_OPS = frozenset({"if", "loop", "scan", "cond", "while_loop", "map"})
RANDOM_OPS = frozenset(
    {
        "randomnormal", "randomnormallike", "randomuniform", "randomuniformlike", "multinomial",
        "bernoulli", "randn", "rand", "randn_like", "rand_like", "randint", "randint_like", "normal",
        "uniform", "exponential", "poisson", "randperm", "native_dropout", "rrelu", "rrelu_with_noise",
        "cauchy", "geometric", "log_normal", "random",
    }
)  # fmt: skip
DROPOUT_OPS = frozenset({"dropout", "feature_dropout", "alpha_dropout", "feature_alpha_dropout", "native_dropout"})
# Ops whose derivative is zero almost everywhere (gradient masking, Athalye et al. 2018).
ZERO_GRADIENT_OPS = frozenset(
    {
        "round", "floor", "ceil", "sign", "trunc", "fix", "quantizelinear", "dynamicquantizelinear",
        "quantize_per_tensor", "quantize_per_channel", "bitshift", "mod", "fmod", "remainder",
        "floor_divide", "bitwise_and", "bitwise_or", "bitwise_xor", "bitwise_not",
    }
)  # fmt: skip
# Ops that apply learned weights to their (latent-dependent) input.
PARAMETRIC_OPS = frozenset(
    {
        "gemm", "matmul", "conv", "convtranspose", "convinteger", "matmulinteger", "qlinearconv",
        "qlinearmatmul", "linear", "conv1d", "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d",
        "conv_transpose3d", "convolution", "addmm", "mm", "bmm", "einsum", "_convolution", "baddbmm",
    }
)  # fmt: skip
# Ops whose output does not depend on the *values* of their inputs (only on shapes): they stop taint.
VALUE_INDEPENDENT_OPS = frozenset(
    {
        "shape", "size", "constantofshape", "eyelike", "randomnormallike", "randomuniformlike",
        "sym_size", "sym_numel", "sym_stride", "sym_storage_offset", "zeros_like", "ones_like",
        "empty_like", "full_like", "randn_like", "rand_like", "randint_like", "new_zeros", "new_ones",
        "new_empty", "new_full", "scalar_tensor",
    }
)  # fmt: skip
INTEGER_DTYPES_ONNX = frozenset({2, 3, 4, 5, 6, 7, 9, 12, 13})  # uint8..int64, bool, uint32/64
LOG_EXP_PAIRS = (("log", "exp"), ("exp", "log"), ("atanh", "tanh"), ("log1p", "expm1"), ("expm1", "log1p"))


@dataclass
class OpNode:
    """One node: a latent input, a parameter/constant, an operation or a graph output."""

    id: str
    kind: NodeKind
    op: str  # canonical op name ("" for inputs/params/outputs)
    raw_op: str  # name as written in the source graph, for evidence
    inputs: list[str] = field(default_factory=list)
    attrs: dict[str, Any] = field(default_factory=dict)


@dataclass
class DataflowGraph:
    nodes: dict[str, OpNode]
    source: str  # "onnx" | "torch.export"

    def __post_init__(self) -> None:
        self._succ: dict[str, list[str]] = {k: [] for k in self.nodes}
        for node in self.nodes.values():
            for src in node.inputs:
                if src in self._succ:
                    self._succ[src].append(node.id)

    # -- basic structure ----------------------------------------------------------------------
    @property
    def latent_ids(self) -> list[str]:
        return [k for k, n in self.nodes.items() if n.kind == "input"]

    @property
    def output_ids(self) -> list[str]:
        return [k for k, n in self.nodes.items() if n.kind == "output"]

    def successors(self, node_id: str) -> list[str]:
        return self._succ.get(node_id, [])

    def ops(self) -> Iterator[OpNode]:
        return (n for n in self.nodes.values() if n.kind == "op")

    def _reach(self, starts: Iterable[str], forward: bool, stop_ops: frozenset[str] = frozenset()) -> set[str]:
        seen: set[str] = set()
        queue = deque(starts)
        while queue:
            cur = queue.popleft()
            if cur in seen:
                continue
            seen.add(cur)
            node = self.nodes[cur]
            if forward and cur not in starts and node.op in stop_ops:
                continue  # reached, but does not propagate
            nxt = self.successors(cur) if forward else node.inputs
            queue.extend(x for x in nxt if x in self.nodes and x not in seen)
        return seen

    def latent_dependent(self) -> set[str]:
        """Nodes whose value depends on the latent (taint; shape-only ops stop it)."""
        starts = self.latent_ids
        tainted = self._reach(starts, forward=True, stop_ops=VALUE_INDEPENDENT_OPS)
        # a value-independent op is reached but its output is not tainted
        return {t for t in tainted if t in starts or self.nodes[t].op not in VALUE_INDEPENDENT_OPS}

    def reaches_output(self) -> set[str]:
        """Nodes from which some graph output is reachable."""
        return self._reach(self.output_ids, forward=False)

    def is_parametric(self, node: OpNode, tainted: set[str]) -> bool:
        """An op that applies learned weights: a matmul/conv with a latent-independent operand."""
        return node.op in PARAMETRIC_OPS and any(i not in tainted for i in node.inputs)

    def describe(self, node_id: str) -> dict[str, Any]:
        n = self.nodes[node_id]
        return {"node": n.id, "op": n.raw_op or n.kind}


# -- builders ------------------------------------------------------------------------------------
def _canonical(name: str) -> str:
    name = name.lower()
    if name.startswith("aten."):
        name = name[5:]
    name = name.split(".")[0]
    return name.rstrip("_") if not name.startswith("_") else name


def from_onnx(model: Any) -> DataflowGraph:
    """Build the graph of an ONNX ModelProto or GraphProto (parsing only)."""
    import onnx

    graph = model.graph if isinstance(model, onnx.ModelProto) else model
    nodes: dict[str, OpNode] = {}
    producer: dict[str, str] = {}
    init_names = {t.name for t in graph.initializer} | {t.values.name for t in graph.sparse_initializer}
    for name in sorted(init_names):
        nid = f"param:{name}"
        nodes[nid] = OpNode(nid, "param", "", name)
        producer[name] = nid
    for vi in graph.input:
        if vi.name in init_names:
            continue
        nid = f"input:{vi.name}"
        nodes[nid] = OpNode(nid, "input", "", vi.name)
        producer[vi.name] = nid

    def outer_refs(g: onnx.GraphProto) -> set[str]:
        """Names a sub-graph reads from the enclosing scope."""
        local = {t.name for t in g.initializer} | {vi.name for vi in g.input}
        refs: set[str] = set()
        for nd in g.node:
            refs.update(i for i in nd.input if i and i not in local)
            for attr in nd.attribute:
                for sub in [attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs):
                    refs.update(r for r in outer_refs(sub) if r not in local)
            local.update(nd.output)
        return refs

    for idx, nd in enumerate(graph.node):
        op = _canonical(nd.op_type)
        kind: NodeKind = "const" if nd.op_type == "Constant" and nd.domain in ("", "ai.onnx") else "op"
        nid = f"{idx}:{nd.op_type}:{nd.name}" if nd.name else f"{idx}:{nd.op_type}"
        input_names = [i for i in nd.input if i]
        attrs: dict[str, Any] = {"domain": nd.domain or "ai.onnx"}
        for attr in nd.attribute:
            if attr.type == onnx.AttributeProto.GRAPH or attr.type == onnx.AttributeProto.GRAPHS:
                subs = [attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)
                for sub in subs:
                    input_names.extend(sorted(outer_refs(sub)))
                attrs["subgraph_ops"] = sorted({n.op_type for s in subs for n in s.node})
            elif attr.name == "to" and nd.op_type == "Cast":
                attrs["cast_to_integer"] = int(attr.i) in INTEGER_DTYPES_ONNX
        if nd.op_type == "Dropout":
            # inference unless a training_mode input is given (then it may be random)
            attrs["training"] = len(nd.input) >= 3 and bool(nd.input[2])
        inputs = [producer[i] for i in input_names if i in producer]
        nodes[nid] = OpNode(nid, kind, op, nd.op_type if nd.domain in ("", "ai.onnx") else f"{nd.domain}:{nd.op_type}",
                            inputs, attrs)  # fmt: skip
        for o in nd.output:
            if o:
                producer[o] = nid
    for vi in graph.output:
        nid = f"output:{vi.name}"
        nodes[nid] = OpNode(nid, "output", "", vi.name, [producer[vi.name]] if vi.name in producer else [])
    return DataflowGraph(nodes, "onnx")


class LatentControlFlowError(Exception):
    """The module branches in Python on a value computed from z (cannot be traced symbolically)."""


@contextlib.contextmanager
def _quiet_torch_logs() -> Iterator[None]:
    """torch.export logs tracebacks of expected failures at WARNING; keep scan logs readable."""
    names = [n for n in logging.root.manager.loggerDict if n == "torch" or n.startswith("torch.")]
    loggers = [logging.getLogger(n) for n in {"torch", "torch.fx.experimental.symbolic_shapes", *names}]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.CRITICAL)
    try:
        # the exporter also prints the partial graph of a failed trace straight to stderr
        with contextlib.redirect_stderr(io.StringIO()):
            yield
    finally:
        for lg, lv in zip(loggers, levels, strict=True):
            lg.setLevel(lv)


def _is_data_dependent_error(exc: BaseException) -> bool:
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        text = f"{type(cur).__name__}: {cur}"
        if "GuardOnDataDependentSymNode" in text or "data-dependent" in text or "data dependent" in text:
            return True
        cur = cur.__cause__ or cur.__context__
    return False


def from_torch(module: nn.Module, example_z: torch.Tensor) -> DataflowGraph:
    """Record the module's computation with `torch.export` (symbolic tracing, all branches).

    Raises LatentControlFlowError when the forward branches on a z-dependent value, and
    RuntimeError (with the exporter's message) when the module cannot be exported for another
    reason. The module is deep-copied first so export's bookkeeping never touches the caller's.
    """
    import copy

    import torch.export
    from torch.export.graph_signature import InputKind

    mod = copy.deepcopy(module)
    try:
        with _quiet_torch_logs():
            ep = torch.export.export(mod, (example_z,), strict=False)
    except Exception as exc:  # the exporter raises many types; classify by content
        if _is_data_dependent_error(exc):
            first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise LatentControlFlowError(first_line[:300]) from exc
        raise RuntimeError(f"torch.export could not trace the model: {type(exc).__name__}: {str(exc)[:300]}") from exc

    kind_of: dict[str, NodeKind] = {}
    for spec in ep.graph_signature.input_specs:
        name = getattr(spec.arg, "name", None)
        if name is not None:
            kind_of[name] = "input" if spec.kind == InputKind.USER_INPUT else "param"

    nodes: dict[str, OpNode] = {}
    for n in ep.graph.nodes:
        deps: list[str] = []
        torch.fx.node.map_arg((n.args, n.kwargs), lambda a, deps=deps: deps.append(a.name))
        if n.op == "placeholder":
            nodes[n.name] = OpNode(n.name, kind_of.get(n.name, "param"), "", n.name)
        elif n.op == "get_attr":
            nodes[n.name] = OpNode(n.name, "const", "", n.name)
        elif n.op == "output":
            nodes["output"] = OpNode("output", "output", "", "output", deps)
        else:
            raw = str(n.target) if n.op == "call_function" else f"{n.op}:{n.target}"
            target_name = getattr(n.target, "__name__", str(n.target))
            op = _canonical(raw if raw.startswith("aten.") else target_name)
            attrs: dict[str, Any] = {}
            if op in DROPOUT_OPS:
                train = n.args[2] if len(n.args) > 2 else n.kwargs.get("train", True)
                attrs["training"] = bool(train)
            dtype = n.kwargs.get("dtype")
            if isinstance(dtype, torch.dtype):
                attrs["cast_to_integer"] = not (dtype.is_floating_point or dtype.is_complex)
            nodes[n.name] = OpNode(n.name, "op", op, raw, deps, attrs)
    return DataflowGraph(nodes, "torch.export")


ONNX_METADATA_KEYS = ("onnx_graph", "onnx_model", "onnx")


def onnx_model_of(generator: Any) -> Any | None:
    """The ONNX ModelProto a loader stored on the generator, if any (bytes are parsed)."""
    import onnx

    meta = getattr(generator, "metadata", {}) or {}
    for key in ONNX_METADATA_KEYS:
        obj = meta.get(key)
        if isinstance(obj, (onnx.ModelProto, onnx.GraphProto)):
            return obj
        if isinstance(obj, (bytes, bytearray)):
            try:
                return onnx.load_from_string(bytes(obj))
            except Exception:  # a corrupt copy: fall back to tracing the executor module
                continue
    for attr in ("onnx_model", "model_proto", "proto"):
        obj = getattr(getattr(generator, "body", None), attr, None)
        if isinstance(obj, (onnx.ModelProto, onnx.GraphProto)):
            return obj
    return None


@dataclass
class GraphAnalysis:
    """What the static checks share: the graph, or why there is none."""

    graph: DataflowGraph | None
    latent_control_flow: str | None = None  # message when export hit a z-dependent Python branch
    error: str | None = None


SHARED_KEY = "analysis.dataflow"


def analyse_generator(generator: Any, shared: dict[str, Any] | None = None) -> GraphAnalysis:
    """Graph of a generator: its ONNX graph if it came from one, else `torch.export` of its body.

    Cached in `shared` (a ScanContext.shared) so several checks build it once.
    """
    if shared is not None and isinstance(shared.get(SHARED_KEY), GraphAnalysis):
        return shared[SHARED_KEY]
    proto = onnx_model_of(generator)
    if proto is not None:
        try:
            result = GraphAnalysis(from_onnx(proto))
        except Exception as exc:  # malformed graph: say so rather than crash the scan
            result = GraphAnalysis(None, error=f"could not read the ONNX graph: {exc}")
    else:
        z = generator.sample_latent(2, seed=0)
        try:
            result = GraphAnalysis(from_torch(generator.body, z))
        except LatentControlFlowError as exc:
            result = GraphAnalysis(None, latent_control_flow=str(exc))
        except RuntimeError as exc:
            result = GraphAnalysis(None, error=str(exc))
    if shared is not None:
        shared[SHARED_KEY] = result
    return result
