"""The project's own allowlisted ONNX → torch executor.

An uploaded ONNX generator must be *differentiable* for the paper's defenses: optimization-based
output inspection minimises ||G(z) − x_target||² over z, dynamic inspection hooks unit
activations, sanitization fine-tunes weights (Rawat et al., arXiv 2108.01644, §5). onnxruntime
gives outputs but no gradients, and onnx2torch cannot be installed here, so this module maps
each allowed ONNX operator to torch.

Contract with the rest of the scanner: initializers used as the weights of Gemm,
MatMul-with-constant, Conv and ConvTranspose become real `nn.Linear` / `nn.Conv1d/2d` /
`nn.ConvTranspose1d/2d` modules registered in graph (execution) order, so `Generator.layers()`,
the static/dynamic checks and sanitization treat an ONNX model exactly like a registry model.
Every other float initializer is an `nn.Parameter`, non-float ones are buffers.

No file I/O happens here: external data must already be loaded and validated by
`scanner.onnx.safety`.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from onnx import numpy_helper
from torch import nn

from scanner.errors import Finding, InvalidModelError, UnsupportedOpError
from scanner.onnx.ops import DEFAULT_DOMAINS, RECORDED_OPS, is_allowed

DEFAULT_MAX_TENSOR_ELEMENTS = 256 * 1024 * 1024
# what torch and our attribute parsing raise on inconsistent graphs (mapped to InvalidModelError)
_TORCH_ERRORS = (RuntimeError, ValueError, IndexError, TypeError, KeyError, ZeroDivisionError, OverflowError)

_ONNX_TO_TORCH_DTYPE: dict[int, torch.dtype] = {
    onnx.TensorProto.FLOAT: torch.float32,
    onnx.TensorProto.DOUBLE: torch.float64,
    onnx.TensorProto.FLOAT16: torch.float16,
    onnx.TensorProto.BFLOAT16: torch.bfloat16,
    onnx.TensorProto.INT8: torch.int8,
    onnx.TensorProto.INT16: torch.int16,
    onnx.TensorProto.INT32: torch.int32,
    onnx.TensorProto.INT64: torch.int64,
    onnx.TensorProto.UINT8: torch.uint8,
    onnx.TensorProto.BOOL: torch.bool,
}


def torch_dtype(onnx_type: int) -> torch.dtype:
    """The torch dtype of an ONNX element type (InvalidModelError for types we do not run)."""
    try:
        return _ONNX_TO_TORCH_DTYPE[onnx_type]
    except KeyError:
        known = onnx_type in onnx.TensorProto.DataType.values()
        name = onnx.TensorProto.DataType.Name(onnx_type) if known else onnx_type
        raise InvalidModelError(f"ONNX element type {name} is not supported by the executor") from None


def tensor_from_proto(proto: onnx.TensorProto) -> torch.Tensor:
    """A TensorProto (data already in the proto) as a torch tensor."""
    if proto.data_location == onnx.TensorProto.EXTERNAL:
        # numpy_helper would read the file itself, unchecked: the safety layer must inline it first
        raise InvalidModelError(f"tensor {proto.name!r} still refers to external data; load it with inspect_onnx")
    dtype = torch_dtype(proto.data_type)
    try:
        array = numpy_helper.to_array(proto)
    except Exception as exc:  # corrupt raw_data length and similar
        raise InvalidModelError(f"tensor {proto.name!r} cannot be decoded: {exc}") from exc
    if array.dtype == object:
        raise InvalidModelError(f"tensor {proto.name!r} holds non-numeric data")
    # np.array(copy) keeps 0-d scalars 0-d (ascontiguousarray would make them 1-d)
    return torch.from_numpy(np.array(array, copy=True, order="C")).to(dtype)


def _attributes(node: onnx.NodeProto) -> dict[str, Any]:
    """Plain Python values of a node's attributes (tensors as torch, graphs kept as protos)."""
    out: dict[str, Any] = {}
    for attr in node.attribute:
        if attr.type == onnx.AttributeProto.TENSOR:
            out[attr.name] = tensor_from_proto(attr.t)
        elif attr.type == onnx.AttributeProto.GRAPH:
            out[attr.name] = attr.g
        elif attr.type in (onnx.AttributeProto.FLOAT, onnx.AttributeProto.INT, onnx.AttributeProto.STRING):
            value = onnx.helper.get_attribute_value(attr)
            out[attr.name] = value.decode("utf-8", "replace") if isinstance(value, bytes) else value
        elif attr.type in (onnx.AttributeProto.FLOATS, onnx.AttributeProto.INTS):
            out[attr.name] = list(onnx.helper.get_attribute_value(attr))
        elif attr.type == onnx.AttributeProto.STRINGS:
            out[attr.name] = [s.decode("utf-8", "replace") for s in attr.strings]
        else:
            # sparse tensors, type protos, graph lists: nothing in the allowlist takes them
            where = node.name or node.op_type
            raise InvalidModelError(f"node {where!r}: attribute {attr.name!r} has an unsupported type")
    return out


def _sanitize(name: str) -> str:
    """A torch attribute name (no dots) derived from an ONNX tensor/node name."""
    cleaned = re.sub(r"\W+", "_", name).strip("_")
    return cleaned or "t"


@dataclass
class NodeStep:
    """One compiled node. Plain data only, so `copy.deepcopy` of the module stays correct
    (a closure would keep pointing at the original module's weights)."""

    op_type: str
    name: str
    inputs: list[str]
    outputs: list[str]
    attrs: dict[str, Any]
    module: str | None = None  # key in `OnnxGraphModule.layers` for weight-bearing nodes
    source_index: int = -1  # position of the node in `graph.node` (to write weights back)
    subgraphs: dict[str, str] = field(default_factory=dict)  # attribute name -> key in `.subgraphs`


@dataclass
class LayerSource:
    """Where a torch layer's weight and bias live in the ONNX graph (for writing them back)."""

    op_type: str  # Gemm | MatMul | Conv | ConvTranspose
    weight: str  # initializer name
    bias: str | None  # initializer name (the Gemm C, the Conv B, or a fused Add's constant)
    transposed: bool  # whether the ONNX weight is the transpose of the torch weight (MatMul, Gemm transB=0)


@dataclass
class RecordedOp:
    """An allowed op that static checks care about (stochastic, dropout, rounding)."""

    op_type: str
    node: str
    category: str

    def to_dict(self) -> dict[str, str]:
        return {"op_type": self.op_type, "node": self.node, "category": self.category}


class _Holder(nn.Module):
    """Holds the graph's non-layer initializers and Constant values as parameters/buffers."""


class OnnxGraphModule(nn.Module):
    """An ONNX graph as a torch module. `forward(*inputs)` takes the graph's inputs in order.

    `outputs` overrides the graph outputs (used to stop before a final Tanh/Sigmoid); nodes that
    do not contribute to the requested outputs are not executed.
    """

    def __init__(
        self,
        graph: onnx.GraphProto,
        *,
        opset: int,
        outputs: Sequence[str] | None = None,
        max_tensor_elements: int = DEFAULT_MAX_TENSOR_ELEMENTS,
    ) -> None:
        super().__init__()
        self.opset = int(opset)
        self.max_tensor_elements = int(max_tensor_elements)
        self.graph_name = graph.name
        self.layers = nn.ModuleDict()
        self.subgraphs = nn.ModuleDict()
        self.tensors = _Holder()
        self.layer_sources: dict[str, LayerSource] = {}
        self.tensor_attr: dict[str, str] = {}  # ONNX name -> attribute of `self.tensors`
        self.recorded_ops: list[RecordedOp] = []
        # an empty buffer that follows `.to(device)`, so created tensors land on the right device
        self.register_buffer("_device_probe", torch.zeros(0), persistent=False)

        _check_ops(graph)
        initializers = {t.name: t for t in graph.initializer}
        if graph.sparse_initializer:
            raise InvalidModelError("sparse initializers are not supported")
        graph_inputs = [i for i in graph.input if i.name not in initializers]
        self.input_names = [i.name for i in graph_inputs]
        # declared float types of the inputs: a float32 latent is cast to a float64/float16 graph's type
        self.input_dtypes: list[torch.dtype | None] = [
            _ONNX_TO_TORCH_DTYPE.get(i.type.tensor_type.elem_type) if i.type.HasField("tensor_type") else None
            for i in graph_inputs
        ]
        self.output_names = list(outputs) if outputs is not None else [o.name for o in graph.output]
        if not self.output_names:
            raise InvalidModelError(f"graph {graph.name!r} has no outputs")

        nodes = list(graph.node)
        index_in_graph = {id(node): i for i, node in enumerate(nodes)}
        for node in nodes:
            if node.op_type in RECORDED_OPS:
                self.recorded_ops.append(RecordedOp(node.op_type, node.name, RECORDED_OPS[node.op_type]))
        nodes = _live_nodes(nodes, self.output_names)
        use_counts = _use_counts(graph)
        for name in self.output_names:
            use_counts[name] += 1
        consumed_as_layer: set[str] = set()

        self.steps: list[NodeStep] = []
        skip: set[int] = set()
        for index, node in enumerate(nodes):
            if index in skip:
                continue
            attrs = _attributes(node)
            name = node.name or f"{node.op_type}_{index}"
            step = NodeStep(node.op_type, name, list(node.input), list(node.output), {})
            step.source_index = index_in_graph[id(node)]
            layer = self._try_layer(node, attrs, initializers, use_counts, nodes, index)
            if layer is not None:
                module, source, fused_add_index = layer
                key = self._unique_key(self.layers, _layer_key(source.weight, node, index))
                self.layers[key] = module
                self.layer_sources[key] = source
                consumed_as_layer.update(n for n in (source.weight, source.bias) if n)
                step.module = key
                if fused_add_index is not None:  # MatMul + bias Add became one nn.Linear
                    step.outputs = list(nodes[fused_add_index].output)
                    skip.add(fused_add_index)
            for attr_name, value in attrs.items():
                if isinstance(value, onnx.GraphProto):
                    sub_key = self._unique_key(self.subgraphs, _sanitize(f"{step.name}_{attr_name}"))
                    self.subgraphs[sub_key] = OnnxGraphModule(
                        value, opset=self.opset, max_tensor_elements=self.max_tensor_elements
                    )
                    self.recorded_ops.extend(self.subgraphs[sub_key].recorded_ops)
                    step.subgraphs[attr_name] = sub_key
                elif isinstance(value, torch.Tensor):
                    buf = self._unique_attr(_sanitize(f"{step.name}_{attr_name}"))
                    self.tensors.register_buffer(buf, value)
                    step.attrs[attr_name] = _TensorRef(buf)
                else:
                    step.attrs[attr_name] = value
            self.steps.append(step)

        # BatchNorm running statistics are buffers, as in torch: fine-tuning must not train them
        statistic_uses: Counter[str] = Counter(
            name for node in graph.node if node.op_type == "BatchNormalization" for name in node.input[3:5] if name
        )
        for name, proto in initializers.items():
            if name in consumed_as_layer:
                continue
            value = tensor_from_proto(proto)
            attr = self._unique_attr(_sanitize(name))
            if value.is_floating_point() and statistic_uses[name] < use_counts[name]:
                self.tensors.register_parameter(attr, nn.Parameter(value))
            else:
                self.tensors.register_buffer(attr, value)
            self.tensor_attr[name] = attr

    # -- construction helpers ---------------------------------------------------------------
    def _unique_attr(self, base: str) -> str:
        name, i = base, 1
        while hasattr(self.tensors, name) or name in ("training", "forward"):
            i += 1
            name = f"{base}_{i}"
        return name

    @staticmethod
    def _unique_key(container: nn.ModuleDict, base: str) -> str:
        key, i = base, 1
        while key in container or hasattr(container, key):
            i += 1
            key = f"{base}_{i}"
        return key

    def _try_layer(
        self,
        node: onnx.NodeProto,
        attrs: dict[str, Any],
        initializers: dict[str, onnx.TensorProto],
        use_counts: Counter[str],
        nodes: list[onnx.NodeProto],
        index: int,
    ) -> tuple[nn.Module, LayerSource, int | None] | None:
        """Turn a Gemm/MatMul/Conv/ConvTranspose whose weight is an initializer used nowhere else
        into a torch layer. Returns None to fall back to the functional op (e.g. tied weights)."""

        def own_initializer(name: str) -> torch.Tensor | None:
            if name in initializers and use_counts[name] == 1:
                value = tensor_from_proto(initializers[name])
                return value if value.is_floating_point() else None
            return None

        op = node.op_type
        inputs = list(node.input)
        if op == "Gemm" and len(inputs) >= 2:
            if attrs.get("transA", 0):
                return None
            weight = own_initializer(inputs[1])
            if weight is None or weight.dim() != 2:
                return None
            transposed = not attrs.get("transB", 0)
            w = weight.t() if transposed else weight  # torch layout (out, in)
            bias = None
            bias_name = inputs[2] if len(inputs) > 2 and inputs[2] else None
            if bias_name is not None:
                bias = own_initializer(bias_name)
                if bias is None or bias.numel() != w.shape[0] or (bias.dim() == 2 and bias.shape[0] != 1):
                    return None
            alpha, beta = float(attrs.get("alpha", 1.0)), float(attrs.get("beta", 1.0))
            linear = nn.Linear(w.shape[1], w.shape[0], bias=bias is not None, dtype=w.dtype)
            with torch.no_grad():
                linear.weight.copy_(w * alpha)  # alpha and beta are folded in (written back as 1.0)
                if bias is not None:
                    linear.bias.copy_(bias.reshape(-1) * beta)
            return linear, LayerSource(op, inputs[1], bias_name, transposed), None
        if op == "MatMul" and len(inputs) == 2:
            weight = own_initializer(inputs[1])
            if weight is None or weight.dim() != 2:
                return None
            w = weight.t()
            bias, bias_name, fused = None, None, None
            out = node.output[0]
            consumers = [j for j in range(index + 1, len(nodes)) if out in nodes[j].input]
            if use_counts[out] == 1 and len(consumers) == 1 and nodes[consumers[0]].op_type == "Add":
                add = nodes[consumers[0]]
                other = add.input[1] if add.input[0] == out else add.input[0]
                candidate = own_initializer(other)
                if candidate is not None and candidate.dim() == 1 and candidate.numel() == w.shape[0]:
                    bias, bias_name, fused = candidate, other, consumers[0]
            linear = nn.Linear(w.shape[1], w.shape[0], bias=bias is not None, dtype=w.dtype)
            with torch.no_grad():
                linear.weight.copy_(w)
                if bias is not None:
                    linear.bias.copy_(bias)
            return linear, LayerSource(op, inputs[1], bias_name, True), fused
        if op in ("Conv", "ConvTranspose") and len(inputs) >= 2:
            weight = own_initializer(inputs[1])
            if weight is None or weight.dim() not in (3, 4):
                return None
            bias_name = inputs[2] if len(inputs) > 2 and inputs[2] else None
            bias = own_initializer(bias_name) if bias_name else None
            if bias_name and bias is None:
                return None
            spatial = weight.dim() - 2
            group = int(attrs.get("group", 1))
            stride = _ints(attrs.get("strides"), spatial, 1)
            dilation = _ints(attrs.get("dilations"), spatial, 1)
            kernel = tuple(weight.shape[2:])
            native_padding = _symmetric_padding(attrs, spatial)
            if op == "Conv":
                cls = nn.Conv1d if spatial == 1 else nn.Conv2d
                layer = cls(
                    weight.shape[1] * group,
                    weight.shape[0],
                    kernel,
                    stride=stride,
                    padding=native_padding or 0,
                    dilation=dilation,
                    groups=group,
                    bias=bias is not None,
                    dtype=weight.dtype,
                )
            else:
                output_padding = _ints(attrs.get("output_padding"), spatial, 0)
                valid_op = all(p < max(s, d) for p, s, d in zip(output_padding, stride, dilation, strict=True))
                if native_padding is None or "output_shape" in attrs or not valid_op:
                    native_padding, output_padding = None, (0,) * spatial
                cls = nn.ConvTranspose1d if spatial == 1 else nn.ConvTranspose2d
                layer = cls(
                    weight.shape[0],
                    weight.shape[1] * group,
                    kernel,
                    stride=stride,
                    padding=native_padding or 0,
                    output_padding=output_padding,
                    groups=group,
                    dilation=dilation,
                    bias=bias is not None,
                    dtype=weight.dtype,
                )
            if layer.weight.shape != weight.shape:
                raise InvalidModelError(
                    f"node {node.name or op!r}: weight shape {tuple(weight.shape)} does not fit the layer"
                )
            with torch.no_grad():
                layer.weight.copy_(weight)
                if bias is not None:
                    if bias.shape != layer.bias.shape:
                        raise InvalidModelError(f"node {node.name or op!r}: bias shape {tuple(bias.shape)} is wrong")
                    layer.bias.copy_(bias)
            # remember whether the module pads natively; otherwise the step pads/crops around it
            layer._onnx_native_padding = native_padding is not None  # type: ignore[attr-defined]
            return layer, LayerSource(op, inputs[1], bias_name, False), None
        return None

    # -- execution ----------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return self._device_probe.device

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        if len(inputs) != len(self.input_names):
            raise ValueError(f"the graph takes {len(self.input_names)} input(s) {self.input_names}, got {len(inputs)}")
        inputs = tuple(
            x.to(dtype) if dtype is not None and dtype.is_floating_point and x.is_floating_point() else x
            for x, dtype in zip(inputs, self.input_dtypes, strict=True)
        )
        env = dict(zip(self.input_names, inputs, strict=True))
        outs = self.run_graph(env)
        return outs[0] if len(outs) == 1 else tuple(outs)

    def run_graph(self, env: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        """Run the graph on `env` (inputs, plus outer-scope values for an If branch)."""
        env = dict(env)
        for name, attr in self.tensor_attr.items():
            env[name] = getattr(self.tensors, attr)
        for step in self.steps:
            try:
                # a layer step reads only its data input: weight and bias live in the module
                names = step.inputs[:1] if step.module is not None else step.inputs
                args = [env[name] if name else None for name in names]
            except KeyError as exc:
                raise InvalidModelError(f"node {step.name!r} reads {exc.args[0]!r}, which nothing produces") from None
            try:
                results = _OPS[step.op_type](self, step, args, env)
            except torch.OutOfMemoryError:
                raise
            except InvalidModelError as exc:
                if step.name in str(exc):
                    raise
                raise InvalidModelError(f"{step.op_type} node {step.name!r}: {exc}") from None
            except _TORCH_ERRORS as exc:  # a hostile graph must end in a clear error, not a crash
                raise InvalidModelError(f"{step.op_type} node {step.name!r} failed: {str(exc)[:300]}") from None
            for name, value in zip(step.outputs, results, strict=False):
                if name:
                    env[name] = value
        try:
            return [env[name] for name in self.output_names]
        except KeyError as exc:
            raise InvalidModelError(f"graph output {exc.args[0]!r} is never produced") from None

    # -- introspection ------------------------------------------------------------------------
    def initializer_values(self) -> dict[str, torch.Tensor]:
        """Current values of every initializer in ONNX layout (layers' weights transposed back),
        for writing trained/sanitized weights into the original graph."""
        values: dict[str, torch.Tensor] = {}
        for key, src in self.layer_sources.items():
            layer = self.layers[key]
            w = layer.weight.detach()
            values[src.weight] = w.t().contiguous() if src.transposed else w.clone()
            if src.bias is not None:
                values[src.bias] = layer.bias.detach().clone()
        for name, attr in self.tensor_attr.items():
            values[name] = getattr(self.tensors, attr).detach().clone()
        return values

    def op_counts(self) -> dict[str, int]:
        counts: Counter[str] = Counter(step.op_type for step in self.steps)
        for sub in self.subgraphs.values():
            counts.update(sub.op_counts())  # type: ignore[operator]
        return dict(counts)

    def check_elements(self, numel: int, what: str) -> None:
        """Runtime guard: shape-computing ops must not allocate past the tensor limit."""
        if numel > self.max_tensor_elements:
            raise InvalidModelError(
                f"{what} would create a tensor of {numel} elements (limit {self.max_tensor_elements})"
            )


@dataclass(frozen=True)
class _TensorRef:
    """A tensor attribute stored as a buffer of `OnnxGraphModule.tensors`."""

    attr: str


def _check_ops(graph: onnx.GraphProto) -> None:
    findings: list[Finding] = []
    for node in graph.node:
        if not is_allowed(node.domain, node.op_type):
            if node.domain not in DEFAULT_DOMAINS:
                findings.append(
                    Finding(
                        "onnx.custom_domain",
                        f"operator {node.op_type!r} from custom domain {node.domain!r} is not supported",
                        detail={"op_type": node.op_type, "domain": node.domain, "node": node.name},
                    )
                )
            else:
                findings.append(
                    Finding(
                        "onnx.unsupported_op",
                        f"operator {node.op_type!r} is not in the executor's allowlist",
                        detail={"op_type": node.op_type, "domain": node.domain, "node": node.name},
                    )
                )
    if findings:
        names = sorted({f.detail["op_type"] for f in findings})
        raise UnsupportedOpError(f"the graph uses operators the scanner does not execute: {names}", findings)


def _live_nodes(nodes: list[onnx.NodeProto], outputs: Sequence[str]) -> list[onnx.NodeProto]:
    """Nodes that contribute to `outputs`, in graph order (dead code is not executed)."""
    needed: set[str] = set(outputs)
    live: set[int] = set()
    for i in range(len(nodes) - 1, -1, -1):
        node = nodes[i]
        if any(out in needed for out in node.output):
            live.add(i)
            needed.update(n for n in node.input if n)
            for attr in node.attribute:  # an If branch may read outer-scope values
                if attr.type == onnx.AttributeProto.GRAPH:
                    needed.update(_outer_references(attr.g))
    return [node for i, node in enumerate(nodes) if i in live]


def _outer_references(graph: onnx.GraphProto) -> set[str]:
    names: set[str] = set()
    for node in graph.node:
        names.update(n for n in node.input if n)
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                names.update(_outer_references(attr.g))
    names.update(o.name for o in graph.output)
    return names


def _use_counts(graph: onnx.GraphProto) -> Counter[str]:
    """How many node inputs (including in subgraphs) and graph outputs read each name."""
    counts: Counter[str] = Counter()
    for node in graph.node:
        counts.update(n for n in node.input if n)
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                counts.update(_outer_references(attr.g))
    counts.update(o.name for o in graph.output)
    return counts


def _layer_key(weight_name: str, node: onnx.NodeProto, index: int) -> str:
    if weight_name.endswith(".weight"):
        return _sanitize(weight_name[: -len(".weight")])
    if node.name:
        return _sanitize(node.name)
    return f"{node.op_type}_{index}"


def _ints(value: Any, n: int, default: int) -> tuple[int, ...]:
    if value is None or len(value) == 0:
        return (default,) * n
    if len(value) != n:
        raise InvalidModelError(f"attribute has {len(value)} values, expected {n}")
    return tuple(int(v) for v in value)


def _symmetric_padding(attrs: dict[str, Any], spatial: int) -> tuple[int, ...] | None:
    """Torch-style symmetric padding when the ONNX pads allow it, else None (pad/crop at run time)."""
    if attrs.get("auto_pad", "NOTSET") not in ("NOTSET", ""):
        return None if attrs["auto_pad"] != "VALID" else (0,) * spatial
    pads = _ints(attrs.get("pads"), 2 * spatial, 0)
    begin, end = pads[:spatial], pads[spatial:]
    if begin != end or any(p < 0 for p in pads):
        return None
    return begin


# ---------------------------------------------------------------------------------------------
# operator implementations: fn(module, step, inputs, env) -> list of outputs
# ---------------------------------------------------------------------------------------------
OpFn = Callable[[OnnxGraphModule, NodeStep, list[Any], dict[str, Any]], list[Any]]
_OPS: dict[str, OpFn] = {}


def _op(*names: str) -> Callable[[OpFn], OpFn]:
    def register(fn: OpFn) -> OpFn:
        for name in names:
            _OPS[name] = fn
        return fn

    return register


def _attr_tensor(m: OnnxGraphModule, value: Any) -> Any:
    return getattr(m.tensors, value.attr) if isinstance(value, _TensorRef) else value


def _int_list(t: Any) -> list[int]:
    if t is None:
        return []
    if isinstance(t, torch.Tensor):
        return [int(v) for v in t.detach().reshape(-1).tolist()]
    return [int(v) for v in t]


def _float_list(t: Any) -> list[float]:
    if isinstance(t, torch.Tensor):
        return [float(v) for v in t.detach().reshape(-1).tolist()]
    return [float(v) for v in t]


def _axes(step: NodeStep, args: list[Any], index: int) -> list[int] | None:
    """Axes from the attribute (older opsets) or the input at `index` (newer opsets)."""
    if "axes" in step.attrs:
        return [int(a) for a in step.attrs["axes"]]
    if len(args) > index and args[index] is not None:
        return _int_list(args[index])
    return None


def _norm_axis(axis: int, rank: int) -> int:
    if not -rank <= axis < max(rank, 1):
        raise InvalidModelError(f"axis {axis} is out of range for rank {rank}")
    return axis + rank if axis < 0 else axis


# -- weight-bearing layers ---------------------------------------------------------------------
@_op("Gemm")
def _gemm(m: OnnxGraphModule, s: NodeStep, a: list[Any], env: dict[str, Any]) -> list[Any]:
    if s.module is not None:
        return [m.layers[s.module](a[0])]
    x, w = a[0], a[1]
    if s.attrs.get("transA", 0):
        x = x.t()
    if s.attrs.get("transB", 0):
        w = w.t()
    _guard_meta(m, s, torch.matmul, x, w)
    y = float(s.attrs.get("alpha", 1.0)) * (x @ w)
    if len(a) > 2 and a[2] is not None:
        y = y + float(s.attrs.get("beta", 1.0)) * a[2]
    return [y]


@_op("MatMul")
def _matmul(m: OnnxGraphModule, s: NodeStep, a: list[Any], env: dict[str, Any]) -> list[Any]:
    if s.module is not None:
        return [m.layers[s.module](a[0])]
    _guard_meta(m, s, torch.matmul, a[0], a[1])
    return [torch.matmul(a[0], a[1])]


def _conv_pads(s: NodeStep, x: torch.Tensor, kernel: Sequence[int], transpose: bool) -> list[int]:
    """ONNX pads [b1..bn, e1..en] for this input, resolving auto_pad (SAME_UPPER/LOWER, VALID)."""
    spatial = len(kernel)
    stride = _ints(s.attrs.get("strides"), spatial, 1)
    dilation = _ints(s.attrs.get("dilations"), spatial, 1)
    auto_pad = s.attrs.get("auto_pad", "NOTSET")
    sizes = x.shape[2:]
    if transpose and "output_shape" in s.attrs:
        out_pad = _ints(s.attrs.get("output_padding"), spatial, 0)
        target = _ints(s.attrs["output_shape"][-spatial:], spatial, 0)
        total = [
            stride[i] * (sizes[i] - 1) + out_pad[i] + (kernel[i] - 1) * dilation[i] + 1 - target[i]
            for i in range(spatial)
        ]
        auto_pad = "SAME_UPPER" if auto_pad in ("NOTSET", "") else auto_pad
    elif auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        if transpose:
            out_pad = _ints(s.attrs.get("output_padding"), spatial, 0)
            total = [
                stride[i] * (sizes[i] - 1) + out_pad[i] + (kernel[i] - 1) * dilation[i] + 1 - sizes[i] * stride[i]
                for i in range(spatial)
            ]
        else:
            total = [
                max(0, (math.ceil(sizes[i] / stride[i]) - 1) * stride[i] + (kernel[i] - 1) * dilation[i] + 1 - sizes[i])
                for i in range(spatial)
            ]
    elif auto_pad == "VALID":
        return [0] * (2 * spatial)
    else:
        return list(_ints(s.attrs.get("pads"), 2 * spatial, 0))
    total = [max(0, t) for t in total]
    begin = [t // 2 for t in total] if auto_pad == "SAME_UPPER" else [t - t // 2 for t in total]
    end = [t - b for t, b in zip(total, begin, strict=True)]
    return begin + end


def _torch_pad_order(pads: list[int]) -> list[int]:
    """ONNX [b1..bn, e1..en] → F.pad's (bn, en, ..., b1, e1)."""
    n = len(pads) // 2
    out: list[int] = []
    for i in range(n - 1, -1, -1):
        out += [pads[i], pads[i + n]]
    return out


@_op("Conv")
def _conv(m: OnnxGraphModule, s: NodeStep, a: list[Any], env: dict[str, Any]) -> list[Any]:
    x = a[0]
    if s.module is not None:
        layer = m.layers[s.module]
        if not layer._onnx_native_padding:
            x = F.pad(x, _torch_pad_order(_conv_pads(s, x, layer.kernel_size, False)))
        return [layer(x)]
    w = a[1]
    b = a[2] if len(a) > 2 else None
    spatial = w.dim() - 2
    if spatial not in (1, 2, 3):
        raise InvalidModelError(f"Conv {s.name!r}: {spatial}-D convolution is not supported")
    x = F.pad(x, _torch_pad_order(_conv_pads(s, x, w.shape[2:], False)))
    fn = (F.conv1d, F.conv2d, F.conv3d)[spatial - 1]
    return [
        fn(
            x,
            w,
            b,
            stride=_ints(s.attrs.get("strides"), spatial, 1),
            dilation=_ints(s.attrs.get("dilations"), spatial, 1),
            groups=int(s.attrs.get("group", 1)),
        )
    ]


def _crop_transposed(y: torch.Tensor, pads: list[int], output_padding: Sequence[int], bias: torch.Tensor | None):
    """Cut the full transposed convolution (padding 0) to the ONNX output window."""
    spatial = len(output_padding)
    b = bias.reshape(1, -1, *([1] * spatial)) if bias is not None else None
    if b is not None:
        y = y - b  # so regions added by output_padding past the end hold exactly the bias
    for i in range(spatial):
        full = y.shape[2 + i]
        start, stop = pads[i], full - pads[i + spatial] + output_padding[i]
        y = y.narrow(2 + i, start, max(0, min(stop, full) - start))
        if stop > full:
            pad = [0, 0] * (spatial - 1 - i) + [0, stop - full]
            y = F.pad(y, pad)
    return y + b if b is not None else y


@_op("ConvTranspose")
def _conv_transpose(m: OnnxGraphModule, s: NodeStep, a: list[Any], env: dict[str, Any]) -> list[Any]:
    x = a[0]
    if s.module is not None:
        layer = m.layers[s.module]
        y = layer(x)
        if layer._onnx_native_padding:
            return [y]
        spatial = len(layer.kernel_size)
        pads = _conv_pads(s, x, layer.kernel_size, True)
        return [_crop_transposed(y, pads, _ints(s.attrs.get("output_padding"), spatial, 0), layer.bias)]
    w = a[1]
    b = a[2] if len(a) > 2 else None
    spatial = w.dim() - 2
    if spatial not in (1, 2, 3):
        raise InvalidModelError(f"ConvTranspose {s.name!r}: {spatial}-D convolution is not supported")
    fn = (F.conv_transpose1d, F.conv_transpose2d, F.conv_transpose3d)[spatial - 1]
    y = fn(
        x,
        w,
        b,
        stride=_ints(s.attrs.get("strides"), spatial, 1),
        dilation=_ints(s.attrs.get("dilations"), spatial, 1),
        groups=int(s.attrs.get("group", 1)),
    )
    pads = _conv_pads(s, x, w.shape[2:], True)
    return [_crop_transposed(y, pads, _ints(s.attrs.get("output_padding"), spatial, 0), b)]


# -- normalisation -----------------------------------------------------------------------------
@_op("BatchNormalization")
def _batch_norm(m: OnnxGraphModule, s: NodeStep, a: list[Any], env: dict[str, Any]) -> list[Any]:
    x, scale, bias, mean, var = a[:5]
    eps = float(s.attrs.get("epsilon", 1e-5))
    if s.attrs.get("training_mode", 0):
        # training-mode graphs normalise with batch statistics
        return [F.batch_norm(x, None, None, scale, bias, training=True, eps=eps), mean, var]
    if not (mean.requires_grad or var.requires_grad) and x.dim() >= 2:
        return [F.batch_norm(x, mean, var, scale, bias, training=False, eps=eps)]  # fused: the common case
    # written out when the statistics are trainable (F.batch_norm refuses gradients to them)
    shape = [1, -1] + [1] * (x.dim() - 2)
    inv_std = torch.rsqrt(var.reshape(shape) + eps)
    return [(x - mean.reshape(shape)) * inv_std * scale.reshape(shape) + bias.reshape(shape)]


@_op("InstanceNormalization")
def _instance_norm(m: OnnxGraphModule, s: NodeStep, a: list[Any], env: dict[str, Any]) -> list[Any]:
    return [F.instance_norm(a[0], weight=a[1], bias=a[2], eps=float(s.attrs.get("epsilon", 1e-5)))]


@_op("LayerNormalization")
def _layer_norm(m: OnnxGraphModule, s: NodeStep, a: list[Any], env: dict[str, Any]) -> list[Any]:
    x = a[0]
    axis = _norm_axis(int(s.attrs.get("axis", -1)), x.dim())
    dims = tuple(range(axis, x.dim()))
    mean = x.mean(dim=dims, keepdim=True)
    var = (x - mean).pow(2).mean(dim=dims, keepdim=True)
    inv_std = torch.rsqrt(var + float(s.attrs.get("epsilon", 1e-5)))
    y = (x - mean) * inv_std * a[1]
    if len(a) > 2 and a[2] is not None:
        y = y + a[2]
    return [y, mean, inv_std]


# -- activations -------------------------------------------------------------------------------
def _unary(name: str, fn: Callable[[torch.Tensor, dict[str, Any]], torch.Tensor]) -> None:
    _OPS[name] = lambda m, s, a, env: [fn(a[0], s.attrs)]


_unary("Relu", lambda x, at: torch.relu(x))
_unary("LeakyRelu", lambda x, at: F.leaky_relu(x, float(at.get("alpha", 0.01))))
_unary("Elu", lambda x, at: F.elu(x, float(at.get("alpha", 1.0))))
_unary(
    "Selu",
    lambda x, at: (
        float(at.get("gamma", 1.0507009873554805))
        * torch.where(x > 0, x, float(at.get("alpha", 1.6732632423543772)) * (torch.exp(x) - 1))
    ),
)
_unary("Sigmoid", lambda x, at: torch.sigmoid(x))
_unary("HardSigmoid", lambda x, at: torch.clamp(float(at.get("alpha", 0.2)) * x + float(at.get("beta", 0.5)), 0, 1))
_unary("Tanh", lambda x, at: torch.tanh(x))
_unary("Softplus", lambda x, at: F.softplus(x))
_unary("Gelu", lambda x, at: F.gelu(x, approximate="tanh" if at.get("approximate", "none") == "tanh" else "none"))
_unary("Erf", lambda x, at: torch.erf(x))
_unary("Sqrt", lambda x, at: torch.sqrt(x))
_unary("Neg", lambda x, at: torch.neg(x))
_unary("Abs", lambda x, at: torch.abs(x))
_unary("Exp", lambda x, at: torch.exp(x))
_unary("Log", lambda x, at: torch.log(x))
_unary("Reciprocal", lambda x, at: torch.reciprocal(x))
_unary("Not", lambda x, at: torch.logical_not(x))
_unary("Identity", lambda x, at: x)
_unary("Round", lambda x, at: torch.round(x))  # half to even, as ONNX
_unary("Floor", lambda x, at: torch.floor(x))
_unary("Ceil", lambda x, at: torch.ceil(x))
_unary("Sign", lambda x, at: torch.sign(x))


@_op("PRelu")
def _prelu(m: OnnxGraphModule, s: NodeStep, a: list[Any], env: dict[str, Any]) -> list[Any]:
    return [torch.where(a[0] < 0, a[0] * a[1], a[0])]


@_op("Softmax", "LogSoftmax")
def _softmax(m: OnnxGraphModule, s: NodeStep, a: list[Any], env: dict[str, Any]) -> list[Any]:
    x = a[0]
    fn = torch.softmax if s.op_type == "Softmax" else torch.log_softmax
    if m.opset >= 13:
        return [fn(x, dim=_norm_axis(int(s.attrs.get("axis", -1)), x.dim()))]
    axis = _norm_axis(int(s.attrs.get("axis", 1)), x.dim())  # older opsets coerce to 2-D
    flat = x.reshape(math.prod(x.shape[:axis]), -1)
    return [fn(flat, dim=1).reshape(x.shape)]


# -- elementwise arithmetic, logic, selection --------------------------------------------------
def _div(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    if not x.is_floating_point() and not y.is_floating_point():
        return torch.div(x, y, rounding_mode="trunc")  # integer Div truncates in ONNX
    return x / y


def _pow(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    out = torch.pow(x, y)
    return out.to(x.dtype) if out.dtype != x.dtype else out  # ONNX keeps the base's type


_BINARY: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "Add": torch.add,
    "Sub": torch.sub,
    "Mul": torch.mul,
    "Div": _div,
    "Pow": _pow,
    "Less": torch.lt,
    "Greater": torch.gt,
    "Equal": torch.eq,
    "LessOrEqual": torch.le,
    "GreaterOrEqual": torch.ge,
    "And": torch.logical_and,
    "Or": torch.logical_or,
    "Xor": torch.logical_xor,
}


def _guard_broadcast(m: OnnxGraphModule, s: NodeStep, tensors: Sequence[torch.Tensor]) -> None:
    """Broadcasting (N,1) with (1,N) allocates N² elements: refuse past the tensor limit first."""
    try:
        shape = torch.broadcast_shapes(*(tuple(t.shape) for t in tensors))
    except RuntimeError as exc:
        raise InvalidModelError(f"{s.op_type} {s.name!r}: shapes do not broadcast: {exc}") from None
    m.check_elements(math.prod(shape), f"{s.op_type} {s.name!r}")


def _guard_meta(m: OnnxGraphModule, s: NodeStep, fn: Callable[..., torch.Tensor], *args: Any) -> None:
    """Size an op's output on the meta device (no memory, no compute) before running it."""
    try:
        out = fn(
            *(torch.empty(t.shape, dtype=t.dtype, device="meta") if isinstance(t, torch.Tensor) else t for t in args)
        )
    except (RuntimeError, ValueError) as exc:
        raise InvalidModelError(f"{s.op_type} {s.name!r}: {str(exc)[:200]}") from None
    m.check_elements(out.numel(), f"{s.op_type} {s.name!r}")


def _binary_op(fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> OpFn:
    def run(m: OnnxGraphModule, s: NodeStep, a: list[Any], env: dict[str, Any]) -> list[Any]:
        _guard_broadcast(m, s, a[:2])
        return [fn(a[0], a[1])]

    return run


for _name, _fn in _BINARY.items():
    _OPS[_name] = _binary_op(_fn)


@_op("Mod")
def _mod(m: OnnxGraphModule, s: NodeStep, a: list[Any], env: dict[str, Any]) -> list[Any]:
    _guard_broadcast(m, s, a[:2])
    return [torch.fmod(a[0], a[1]) if s.attrs.get("fmod", 0) else torch.remainder(a[0], a[1])]


@_op("Min", "Max", "Sum", "Mean")
def _variadic(m: OnnxGraphModule, s: NodeStep, a: list[Any], env: dict[str, Any]) -> list[Any]:
    fn = {"Min": torch.minimum, "Max": torch.maximum, "Sum": torch.add, "Mean": torch.add}[s.op_type]
    _guard_broadcast(m, s, a)
    out = a[0]
    for t in a[1:]:
        out = fn(out, t)
    return [out / len(a) if s.op_type == "Mean" else out]


@_op("Clip")
def _clip(m: OnnxGraphModule, s: NodeStep, a: list[Any], env: dict[str, Any]) -> list[Any]:
    lo = a[1] if len(a) > 1 else s.attrs.get("min")
    hi = a[2] if len(a) > 2 else s.attrs.get("max")
    x = a[0]
    if lo is not None:
        x = torch.maximum(x, torch.as_tensor(lo, dtype=x.dtype, device=x.device))
    if hi is not None:
        x = torch.minimum(x, torch.as_tensor(hi, dtype=x.dtype, device=x.device))
    return [x]


@_op("Where")
def _where(m: OnnxGraphModule, s: NodeStep, a: list[Any], env: dict[str, Any]) -> list[Any]:
    _guard_broadcast(m, s, a[:3])
    return [torch.where(a[0].bool(), a[1], a[2])]


@_op("If")
def _if(m: OnnxGraphModule, s: NodeStep, a: list[Any], env: dict[str, Any]) -> list[Any]:
    cond = a[0]
    if cond.numel() != 1:
        raise InvalidModelError(f"If {s.name!r}: condition has {cond.numel()} elements, expected 1")
    branch = "then_branch" if bool(cond.reshape(()).item()) else "else_branch"
    return m.subgraphs[s.subgraphs[branch]].run_graph(env)


@_op("Einsum")
def _einsum(m: OnnxGraphModule, s: NodeStep, a: list[Any], env: dict[str, Any]) -> list[Any]:
    equation = str(s.attrs["equation"])
    _guard_meta(m, s, lambda *t: torch.einsum(equation, *t), *a)
    return [torch.einsum(equation, *a)]


# -- reductions --------------------------------------------------------------------------------
@_op("ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceL2", "ReduceSumSquare")
def _reduce(m: OnnxGraphModule, s: NodeStep, a: list[Any], env: dict[str, Any]) -> list[Any]:
    x = a[0]
    axes = _axes(s, a, 1)
    keep = bool(s.attrs.get("keepdims", 1))
    if not axes:
        if s.attrs.get("noop_with_empty_axes", 0):
            return [x]
        axes = list(range(x.dim()))
    dims = tuple(_norm_axis(ax, x.dim()) for ax in axes)
    op = s.op_type
    if op == "ReduceMean":
        return [x.mean(dim=dims, keepdim=keep)]
    if op == "ReduceSum":
        return [x.sum(dim=dims, keepdim=keep)]
    if op == "ReduceMax":
        return [x.amax(dim=dims, keepdim=keep)]
    if op == "ReduceMin":
        return [x.amin(dim=dims, keepdim=keep)]
    if op == "ReduceL2":
        return [x.pow(2).sum(dim=dims, keepdim=keep).sqrt()]
    return [x.pow(2).sum(dim=dims, keepdim=keep)]


# -- shapes ------------------------------------------------------------------------------------
@_op("Constant")
def _constant(m: OnnxGraphModule, s: NodeStep, a: list[Any], env: dict[str, Any]) -> list[Any]:
    dev = m.device
    if "value" in s.attrs:
        return [_attr_tensor(m, s.attrs["value"])]
    if "value_float" in s.attrs:
        return [torch.tensor(float(s.attrs["value_float"]), dtype=torch.float32, device=dev)]
    if "value_floats" in s.attrs:
        return [torch.tensor(_float_list(s.attrs["value_floats"]), dtype=torch.float32, device=dev)]
    if "value_int" in s.attrs:
        return [torch.tensor(int(s.attrs["value_int"]), dtype=torch.int64, device=dev)]
    if "value_ints" in s.attrs:
        return [torch.tensor(_int_list(s.attrs["value_ints"]), dtype=torch.int64, device=dev)]
    raise InvalidModelError(f"Constant {s.name!r} has no supported value attribute")


@_op("ConstantOfShape")
def _constant_of_shape(m: OnnxGraphModule, s: NodeStep, a: list[Any], env: dict[str, Any]) -> list[Any]:
    shape = _int_list(a[0])
    if any(d < 0 for d in shape):
        raise InvalidModelError(f"ConstantOfShape {s.name!r}: negative dimension in {shape}")
    m.check_elements(math.prod(shape), f"ConstantOfShape {s.name!r}")
    value = _attr_tensor(m, s.attrs.get("value"))
    if value is None:
        return [torch.zeros(shape, dtype=torch.float32, device=m.device)]
    return [torch.full(shape, value.reshape(-1)[0].item(), dtype=value.dtype, device=m.device)]


@_op("Shape")
def _shape(m: OnnxGraphModule, s: NodeStep, a: list[Any], env: dict[str, Any]) -> list[Any]:
    dims = list(a[0].shape)
    rank = len(dims)
    start = int(s.attrs.get("start", 0))
    end = s.attrs.get("end")
    start = max(0, min(rank, start + rank if start < 0 else start))
    stop = rank if end is None else max(0, min(rank, int(end) + rank if int(end) < 0 else int(end)))
    return [torch.tensor(dims[start:stop], dtype=torch.int64, device=m.device)]


@_op("Size")
def _size(m: OnnxGraphModule, s: NodeStep, a: list[Any], env: dict[str, Any]) -> list[Any]:
    return [torch.tensor(a[0].numel(), dtype=torch.int64, device=m.device)]


@_op("Reshape")
def _reshape(m: OnnxGraphModule, s: NodeStep, a: list[Any], env: dict[str, Any]) -> list[Any]:
    x = a[0]
    shape = _int_list(a[1]) if len(a) > 1 and a[1] is not None else _int_list(s.attrs.get("shape"))
    if not s.attrs.get("allowzero", 0):
        shape = [x.shape[i] if d == 0 and i < x.dim() else d for i, d in enumerate(shape)]
    try:
        return [x.reshape(shape)]
    except RuntimeError as exc:
        raise InvalidModelError(f"Reshape {s.name!r}: cannot reshape {tuple(x.shape)} to {shape}") from exc


@_op("Flatten")
def _flatten(m: OnnxGraphModule, s: NodeStep, a: list[Any], env: dict[str, Any]) -> list[Any]:
    x = a[0]
    axis = int(s.attrs.get("axis", 1))
    axis = axis + x.dim() if axis < 0 else axis
    return [x.reshape(math.prod(x.shape[:axis]), math.prod(x.shape[axis:]))]


@_op("Squeeze")
def _squeeze(m: OnnxGraphModule, s: NodeStep, a: list[Any], env: dict[str, Any]) -> list[Any]:
    x = a[0]
    axes = _axes(s, a, 1)
    if axes is None:
        return [x.squeeze()]
    dims = sorted((_norm_axis(ax, x.dim()) for ax in axes), reverse=True)
    for d in dims:
        x = x.squeeze(d)
    return [x]


@_op("Unsqueeze")
def _unsqueeze(m: OnnxGraphModule, s: NodeStep, a: list[Any], env: dict[str, Any]) -> list[Any]:
    x = a[0]
    axes = _axes(s, a, 1) or []
    rank = x.dim() + len(axes)
    for d in sorted(_norm_axis(ax, rank) for ax in axes):
        x = x.unsqueeze(d)
    return [x]


@_op("Transpose")
def _transpose(m: OnnxGraphModule, s: NodeStep, a: list[Any], env: dict[str, Any]) -> list[Any]:
    x = a[0]
    perm = s.attrs.get("perm") or list(range(x.dim() - 1, -1, -1))
    return [x.permute(*[int(p) for p in perm])]


@_op("Concat")
def _concat(m: OnnxGraphModule, s: NodeStep, a: list[Any], env: dict[str, Any]) -> list[Any]:
    tensors = [t for t in a if t is not None]
    m.check_elements(sum(t.numel() for t in tensors), f"Concat {s.name!r}")
    return [torch.cat(tensors, dim=_norm_axis(int(s.attrs["axis"]), tensors[0].dim()))]


@_op("Split")
def _split(m: OnnxGraphModule, s: NodeStep, a: list[Any], env: dict[str, Any]) -> list[Any]:
    x = a[0]
    axis = _norm_axis(int(s.attrs.get("axis", 0)), x.dim())
    if "split" in s.attrs:
        sizes = _int_list(s.attrs["split"])
    elif len(a) > 1 and a[1] is not None:
        sizes = _int_list(a[1])
    else:
        n = int(s.attrs.get("num_outputs", len(s.outputs)))
        chunk = math.ceil(x.shape[axis] / n)
        sizes = [min(chunk, x.shape[axis] - i * chunk) for i in range(n)]
    return list(torch.split(x, sizes, dim=axis))


@_op("Slice")
def _slice(m: OnnxGraphModule, s: NodeStep, a: list[Any], env: dict[str, Any]) -> list[Any]:
    x = a[0]
    if "starts" in s.attrs:  # opset < 10
        starts, ends = _int_list(s.attrs["starts"]), _int_list(s.attrs["ends"])
        axes, steps = s.attrs.get("axes"), None
    else:
        starts, ends = _int_list(a[1]), _int_list(a[2])
        axes = _int_list(a[3]) if len(a) > 3 and a[3] is not None else None
        steps = _int_list(a[4]) if len(a) > 4 and a[4] is not None else None
    axes = [int(ax) for ax in axes] if axes else list(range(len(starts)))
    steps = steps or [1] * len(starts)
    for start, end, axis, step in zip(starts, ends, axes, steps, strict=True):
        dim = _norm_axis(axis, x.dim())
        n = x.shape[dim]
        if step == 0:
            raise InvalidModelError(f"Slice {s.name!r}: step 0")
        start = start + n if start < 0 else start
        end = end + n if end < 0 else end
        if step > 0:
            start, end = max(0, min(n, start)), max(0, min(n, end))
            if step == 1:
                x = x.narrow(dim, start, max(0, end - start))
            else:
                idx = torch.arange(start, end, step, device=x.device)
                x = x.index_select(dim, idx)
        else:
            start, end = max(-1, min(n - 1, start)), max(-1, min(n - 1, end))
            idx = torch.arange(start, end, step, device=x.device)
            x = x.index_select(dim, idx)
    return [x]


@_op("Gather")
def _gather(m: OnnxGraphModule, s: NodeStep, a: list[Any], env: dict[str, Any]) -> list[Any]:
    x, idx = a[0], a[1].long()
    axis = _norm_axis(int(s.attrs.get("axis", 0)), x.dim())
    n = x.shape[axis]
    idx = torch.where(idx < 0, idx + n, idx)
    if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= n):
        raise InvalidModelError(f"Gather {s.name!r}: index out of range for a dimension of {n}")
    out = x.index_select(axis, idx.reshape(-1))
    return [out.reshape((*x.shape[:axis], *idx.shape, *x.shape[axis + 1 :]))]


@_op("Expand")
def _expand(m: OnnxGraphModule, s: NodeStep, a: list[Any], env: dict[str, Any]) -> list[Any]:
    x = a[0]
    shape = _int_list(a[1])
    try:
        target = torch.broadcast_shapes(tuple(x.shape), tuple(shape))
    except RuntimeError as exc:
        raise InvalidModelError(f"Expand {s.name!r}: cannot broadcast {tuple(x.shape)} to {shape}") from exc
    m.check_elements(math.prod(target), f"Expand {s.name!r}")
    return [x.expand(target)]


@_op("Tile")
def _tile(m: OnnxGraphModule, s: NodeStep, a: list[Any], env: dict[str, Any]) -> list[Any]:
    repeats = _int_list(a[1])
    if any(r < 0 for r in repeats):
        raise InvalidModelError(f"Tile {s.name!r}: negative repeats")
    m.check_elements(a[0].numel() * math.prod(repeats), f"Tile {s.name!r}")
    return [a[0].repeat(*repeats)]


@_op("Range")
def _range(m: OnnxGraphModule, s: NodeStep, a: list[Any], env: dict[str, Any]) -> list[Any]:
    start, limit, delta = (t.reshape(()) for t in a[:3])
    lo, hi, step = (float(t.detach()) for t in (start, limit, delta))
    if step == 0:
        raise InvalidModelError(f"Range {s.name!r}: delta 0")
    count = max(0, math.ceil((hi - lo) / step))
    m.check_elements(count, f"Range {s.name!r}")
    return [start + torch.arange(count, device=m.device, dtype=start.dtype) * delta]


@_op("Pad")
def _pad(m: OnnxGraphModule, s: NodeStep, a: list[Any], env: dict[str, Any]) -> list[Any]:
    x = a[0]
    if "pads" in s.attrs:  # opset < 11
        pads, value = _int_list(s.attrs["pads"]), float(s.attrs.get("value", 0.0))
        axes = None
    else:
        pads = _int_list(a[1])
        value = float(a[2].reshape(-1)[0]) if len(a) > 2 and a[2] is not None and a[2].numel() else 0.0
        axes = _int_list(a[3]) if len(a) > 3 and a[3] is not None else None
    rank = x.dim()
    axes = [_norm_axis(ax, rank) for ax in axes] if axes else list(range(rank))
    full = [0] * (2 * rank)
    k = len(axes)
    for i, ax in enumerate(axes):
        full[ax], full[ax + rank] = pads[i], pads[i + k]
    mode = s.attrs.get("mode", "constant")
    torch_pads = _torch_pad_order(full)
    m.check_elements(math.prod(x.shape[d] + full[d] + full[d + rank] for d in range(rank)), f"Pad {s.name!r}")
    if mode == "constant":
        return [F.pad(x, torch_pads, value=value)]
    torch_mode = {"reflect": "reflect", "edge": "replicate", "wrap": "circular"}.get(mode)
    padded_dims = [d for d in range(rank) if full[d] or full[d + rank]]
    if torch_mode is None or (padded_dims and min(padded_dims) < 2) or rank - 2 > 3:
        raise InvalidModelError(f"Pad {s.name!r}: mode {mode!r} on these axes is not supported")
    return [F.pad(x, torch_pads[: 2 * (rank - 2)], mode=torch_mode)]


@_op("Cast")
def _cast(m: OnnxGraphModule, s: NodeStep, a: list[Any], env: dict[str, Any]) -> list[Any]:
    return [a[0].to(torch_dtype(int(s.attrs["to"])))]


@_op("CastLike")
def _cast_like(m: OnnxGraphModule, s: NodeStep, a: list[Any], env: dict[str, Any]) -> list[Any]:
    return [a[0].to(a[1].dtype)]


# -- resampling --------------------------------------------------------------------------------
def _source_coords(mode: str, out_len: int, in_len: int, scale: float, device: torch.device, name: str) -> torch.Tensor:
    """ONNX Resize's coordinate transformation: output index -> fractional input coordinate."""
    x = torch.arange(out_len, dtype=torch.float64, device=device)
    if mode == "half_pixel":
        return (x + 0.5) / scale - 0.5
    if mode == "pytorch_half_pixel":
        return (x + 0.5) / scale - 0.5 if out_len > 1 else torch.zeros_like(x)
    if mode == "align_corners":
        return x * (in_len - 1) / (out_len - 1) if out_len > 1 else torch.zeros_like(x)
    if mode == "asymmetric":
        return x / scale
    if mode == "tf_half_pixel_for_nn":
        return (x + 0.5) / scale
    raise InvalidModelError(f"Resize {name!r}: coordinate_transformation_mode {mode!r} is not supported")


def _nearest_index(coords: torch.Tensor, nearest_mode: str, in_len: int) -> torch.Tensor:
    if nearest_mode == "floor":
        idx = torch.floor(coords)
    elif nearest_mode == "ceil":
        idx = torch.ceil(coords)
    elif nearest_mode == "round_prefer_ceil":
        idx = torch.floor(coords + 0.5)
    else:  # round_prefer_floor (the default): ties go down
        idx = torch.ceil(coords - 0.5)
    return idx.clamp(0, in_len - 1).long()


def _resize_impl(
    m: OnnxGraphModule,
    s: NodeStep,
    x: torch.Tensor,
    scales: list[float] | None,
    sizes: list[int] | None,
    coord_mode: str,
) -> torch.Tensor:
    rank = x.dim()
    axes = [_norm_axis(ax, rank) for ax in s.attrs["axes"]] if "axes" in s.attrs else list(range(rank))
    if sizes:
        if s.attrs.get("keep_aspect_ratio_policy", "stretch") != "stretch":
            raise InvalidModelError(f"Resize {s.name!r}: keep_aspect_ratio_policy is not supported")
        out = list(x.shape)
        for ax, size in zip(axes, sizes, strict=True):
            out[ax] = int(size)
        factors = [out[d] / x.shape[d] if x.shape[d] else 1.0 for d in range(rank)]
    elif scales:
        factors = [1.0] * rank
        for ax, sc in zip(axes, scales, strict=True):
            factors[ax] = float(sc)
        if any(f <= 0 for f in factors):
            raise InvalidModelError(f"Resize {s.name!r}: non-positive scale")
        out = [int(math.floor(x.shape[d] * factors[d])) for d in range(rank)]
    else:
        raise InvalidModelError(f"Resize {s.name!r}: neither scales nor sizes given")
    m.check_elements(math.prod(out), f"Resize {s.name!r}")
    mode = s.attrs.get("mode", "nearest")
    if s.attrs.get("antialias", 0) and any(out[d] < x.shape[d] for d in range(rank)):
        raise InvalidModelError(f"Resize {s.name!r}: antialiased downsampling is not supported")
    if mode == "cubic":
        if rank != 4 or coord_mode not in ("half_pixel", "pytorch_half_pixel", "align_corners"):
            raise InvalidModelError(f"Resize {s.name!r}: cubic mode is supported for 4-D half_pixel/align_corners only")
        if abs(float(s.attrs.get("cubic_coeff_a", -0.75)) + 0.75) > 1e-6 or s.attrs.get("exclude_outside", 0):
            raise InvalidModelError(f"Resize {s.name!r}: only cubic_coeff_a=-0.75 without exclude_outside")
        return F.interpolate(x, size=out[2:], mode="bicubic", align_corners=coord_mode == "align_corners")
    nearest_mode = s.attrs.get("nearest_mode", "round_prefer_floor")
    fast = _resize_fast(x, out, factors, mode, coord_mode, nearest_mode, sizes_given=bool(sizes), name=s.name)
    return fast if fast is not None else _resize_by_index(x, out, factors, mode, coord_mode, nearest_mode, s.name)


def _resize_by_index(
    x: torch.Tensor, out: list[int], factors: list[float], mode: str, coord_mode: str, nearest_mode: str, name: str
) -> torch.Tensor:
    """Resize by gathering along each axis: every mode and coordinate transformation the executor
    supports, exactly as the ONNX reference computes it (coordinates in float64)."""
    y = x
    for d in range(x.dim()):
        if out[d] == x.shape[d] and factors[d] == 1.0:
            continue
        coords = _source_coords(coord_mode, out[d], x.shape[d], factors[d], x.device, name)
        if mode == "nearest":
            y = y.index_select(d, _nearest_index(coords, nearest_mode, x.shape[d]))
        elif mode == "linear":
            coords = coords.clamp(0, x.shape[d] - 1)
            lo = torch.floor(coords).long()
            hi = (lo + 1).clamp(max=x.shape[d] - 1)
            w = (coords - lo).to(y.dtype).reshape([-1 if i == d else 1 for i in range(x.dim())])
            y = y.index_select(d, lo) * (1 - w) + y.index_select(d, hi) * w
        else:
            raise InvalidModelError(f"Resize {name!r}: mode {mode!r} is not supported")
    return y


_TORCH_LINEAR = {3: "linear", 4: "bilinear", 5: "trilinear"}


def _resize_fast(
    x: torch.Tensor,
    out: list[int],
    factors: list[float],
    mode: str,
    coord_mode: str,
    nearest_mode: str,
    *,
    sizes_given: bool,
    name: str,
) -> torch.Tensor | None:
    """The common upsampling layers without per-axis gathers (2-3× faster on a CPU; a generator's
    Resize can be most of its forward time), or None where `_resize_by_index` must do it.

    Nearest: when every resized axis repeats each input element k times (an integer upscale under
    any coordinate mode that maps output i·k + r to input i), one broadcast copy does it, exactly.
    Linear: half_pixel / pytorch_half_pixel (outputs longer than 1) and align_corners are torch's
    interpolate with align_corners False / True on the spatial axes (batch and channels unchanged);
    torch computes the coordinates in float32, a difference of ~1e-7 relative."""
    rank = x.dim()
    resized = [d for d in range(rank) if out[d] != x.shape[d] or factors[d] != 1.0]
    if not resized or any(x.shape[d] == 0 for d in resized):
        return None
    if mode == "nearest":
        repeats = [1] * rank
        for d in resized:
            k, rem = divmod(out[d], x.shape[d])
            coords = _source_coords(coord_mode, out[d], x.shape[d], factors[d], x.device, name)
            expected = torch.arange(x.shape[d], device=x.device).repeat_interleave(k) if k and not rem else None
            if expected is None or not torch.equal(_nearest_index(coords, nearest_mode, x.shape[d]), expected):
                return None
            repeats[d] = k
        view = [v for n in x.shape for v in (n, 1)]
        expanded = [n for pair in zip(x.shape, repeats, strict=True) for n in pair]
        return x.reshape(view).expand(expanded).reshape(out)
    half_pixel = coord_mode == "half_pixel" or (coord_mode == "pytorch_half_pixel" and min(out[2:]) > 1)
    if (
        mode != "linear"
        or rank not in _TORCH_LINEAR
        or min(resized) < 2
        or not x.is_floating_point()
        or not (half_pixel or coord_mode == "align_corners")
    ):
        return None
    align = coord_mode == "align_corners"
    if sizes_given or align:
        y = F.interpolate(x, size=out[2:], mode=_TORCH_LINEAR[rank], align_corners=align)
    else:  # torch then maps coordinates with the given scales, as ONNX does, not with out / in
        y = F.interpolate(
            x, scale_factor=factors[2:], mode=_TORCH_LINEAR[rank], align_corners=False, recompute_scale_factor=False
        )
    return y if list(y.shape) == out else None


@_op("Resize")
def _resize(m: OnnxGraphModule, s: NodeStep, a: list[Any], env: dict[str, Any]) -> list[Any]:
    x = a[0]
    if m.opset < 11:  # Resize-10: (X, scales), asymmetric coordinates, nearest rounds down (as Upsample)
        step = NodeStep(s.op_type, s.name, s.inputs, s.outputs, {**s.attrs, "nearest_mode": "floor"})
        return [_resize_impl(m, step, x, _float_list(a[1]), None, "asymmetric")]
    scales = _float_list(a[2]) if len(a) > 2 and a[2] is not None and a[2].numel() else None
    sizes = _int_list(a[3]) if len(a) > 3 and a[3] is not None and a[3].numel() else None
    coord_mode = s.attrs.get("coordinate_transformation_mode", "half_pixel")
    return [_resize_impl(m, s, x, scales, sizes, coord_mode)]


@_op("Upsample")
def _upsample(m: OnnxGraphModule, s: NodeStep, a: list[Any], env: dict[str, Any]) -> list[Any]:
    scales = _float_list(s.attrs["scales"]) if "scales" in s.attrs else _float_list(a[1])
    step = NodeStep(s.op_type, s.name, s.inputs, s.outputs, {**s.attrs, "nearest_mode": "floor"})
    return [_resize_impl(m, step, a[0], scales, None, "asymmetric")]


# -- recorded ops: dropout and randomness ------------------------------------------------------
@_op("Dropout")
def _dropout(m: OnnxGraphModule, s: NodeStep, a: list[Any], env: dict[str, Any]) -> list[Any]:
    # inference semantics (identity); the op is recorded so static checks can flag it
    return [a[0], torch.ones_like(a[0], dtype=torch.bool)]


def _random(shape: list[int], s: NodeStep, m: OnnxGraphModule, dtype: torch.dtype) -> torch.Tensor:
    m.check_elements(math.prod(shape), f"{s.op_type} {s.name!r}")
    gen = torch.Generator().manual_seed(int(s.attrs["seed"])) if "seed" in s.attrs else None
    if s.op_type.startswith("RandomNormal"):
        t = torch.randn(shape, generator=gen, dtype=torch.float32)
        t = t * float(s.attrs.get("scale", 1.0)) + float(s.attrs.get("mean", 0.0))
    else:
        low, high = float(s.attrs.get("low", 0.0)), float(s.attrs.get("high", 1.0))
        t = torch.rand(shape, generator=gen, dtype=torch.float32) * (high - low) + low
    return t.to(device=m.device, dtype=dtype)


@_op("RandomNormal", "RandomUniform")
def _random_op(m: OnnxGraphModule, s: NodeStep, a: list[Any], env: dict[str, Any]) -> list[Any]:
    dtype = torch_dtype(int(s.attrs.get("dtype", onnx.TensorProto.FLOAT)))
    return [_random(_int_list(s.attrs["shape"]), s, m, dtype)]


@_op("RandomNormalLike", "RandomUniformLike")
def _random_like(m: OnnxGraphModule, s: NodeStep, a: list[Any], env: dict[str, Any]) -> list[Any]:
    dtype = torch_dtype(int(s.attrs["dtype"])) if "dtype" in s.attrs else a[0].dtype
    return [_random(list(a[0].shape), s, m, dtype)]


def default_opset(model: onnx.ModelProto) -> int:
    """The model's default-domain opset version (InvalidModelError when it has none)."""
    for entry in model.opset_import:
        if entry.domain in DEFAULT_DOMAINS:
            return int(entry.version)
    raise InvalidModelError("the model imports no default-domain opset")


def build_executor(
    model: onnx.ModelProto,
    *,
    outputs: Sequence[str] | None = None,
    max_tensor_elements: int = DEFAULT_MAX_TENSOR_ELEMENTS,
) -> OnnxGraphModule:
    """The torch module executing `model.graph` (external data must already be inlined)."""
    missing = sorted(set(_all_op_types(model.graph)) - set(_OPS))
    if missing:  # the allowlist and the implementation table must agree
        raise UnsupportedOpError(f"no implementation for {missing}")
    try:
        return OnnxGraphModule(
            model.graph, opset=default_opset(model), outputs=outputs, max_tensor_elements=max_tensor_elements
        )
    except _TORCH_ERRORS as exc:  # e.g. a Conv whose group does not divide its channels
        raise InvalidModelError(f"the ONNX graph cannot be built: {str(exc)[:300]}") from None


def _all_op_types(graph: onnx.GraphProto) -> list[str]:
    ops: list[str] = []
    for node in graph.node:
        if is_allowed(node.domain, node.op_type):
            ops.append(node.op_type)
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                ops.extend(_all_op_types(attr.g))
    return ops
