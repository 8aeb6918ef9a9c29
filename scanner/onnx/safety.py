"""Safety analysis of an untrusted ONNX file, before anything executes it.

Policy (docs/DESIGN.md, "Model formats and the safety policy"):
- the protobuf is parsed with `onnx` *without* letting it resolve external data (onnx's own
  loader follows any path a file names, the root of several path-traversal CVEs);
- external data may only name files inside the upload's directory: no absolute paths, no
  `..`, no symlink that leaves the directory; we read it ourselves, bounded by size;
- every operator must be in the executor's allowlist (default domain only): custom domains and
  other ops are reported by name (UnsupportedOpError carries the findings);
- declared shapes and initializers over the element limits are refused before allocation;
- truncated or corrupt protobufs raise InvalidModelError with a message a person can act on.
Ops that obfuscate gradients or randomise outputs (dropout, random, rounding, sign) are allowed
but returned as low-severity findings: static model inspection flags them (Rawat et al.,
arXiv 2108.01644, §5.1).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from pathlib import Path, PurePosixPath, PureWindowsPath

import onnx

from scanner.errors import Finding, InvalidModelError, RejectedModelError, UnsupportedOpError
from scanner.onnx.ops import DEFAULT_DOMAINS, RECORDED_OPS, is_allowed

DEFAULT_MAX_BYTES = 2 * 1024**3
DEFAULT_MAX_TENSOR_ELEMENTS = 256 * 1024 * 1024
DEFAULT_MAX_TOTAL_ELEMENTS = 512 * 1024 * 1024
DEFAULT_MAX_NODES = 200_000
DEFAULT_MAX_GRAPH_DEPTH = 16  # If inside If inside ...

# bytes per element of the element types the executor runs
_ITEM_SIZE: dict[int, int] = {
    onnx.TensorProto.FLOAT: 4,
    onnx.TensorProto.DOUBLE: 8,
    onnx.TensorProto.FLOAT16: 2,
    onnx.TensorProto.BFLOAT16: 2,
    onnx.TensorProto.INT8: 1,
    onnx.TensorProto.INT16: 2,
    onnx.TensorProto.INT32: 4,
    onnx.TensorProto.INT64: 8,
    onnx.TensorProto.UINT8: 1,
    onnx.TensorProto.UINT16: 2,
    onnx.TensorProto.UINT32: 4,
    onnx.TensorProto.UINT64: 8,
    onnx.TensorProto.BOOL: 1,
}
# the repeated field typed (non-raw) data lives in, per element type
_TYPED_FIELD: dict[int, str] = {
    onnx.TensorProto.FLOAT: "float_data",
    onnx.TensorProto.DOUBLE: "double_data",
    onnx.TensorProto.INT64: "int64_data",
    onnx.TensorProto.UINT64: "uint64_data",
    onnx.TensorProto.UINT32: "uint64_data",
    **{
        t: "int32_data"
        for t in (
            onnx.TensorProto.INT32,
            onnx.TensorProto.INT16,
            onnx.TensorProto.INT8,
            onnx.TensorProto.UINT16,
            onnx.TensorProto.UINT8,
            onnx.TensorProto.BOOL,
            onnx.TensorProto.FLOAT16,
            onnx.TensorProto.BFLOAT16,
        )
    },
}


def _graphs(graph: onnx.GraphProto, depth: int, max_depth: int) -> Iterator[tuple[onnx.GraphProto, int]]:
    """The graph and every subgraph (If branches, ...), depth-bounded."""
    if depth > max_depth:
        raise InvalidModelError(f"subgraphs nested deeper than {max_depth} levels")
    yield graph, depth
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from _graphs(attr.g, depth + 1, max_depth)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for sub in attr.graphs:
                    yield from _graphs(sub, depth + 1, max_depth)


def _tensors(graph: onnx.GraphProto) -> Iterator[tuple[str, onnx.TensorProto]]:
    """(where, tensor) for initializers and tensor-valued node attributes of one graph."""
    for t in graph.initializer:
        yield f"initializer {t.name!r}", t
    for node in graph.node:
        for attr in node.attribute:
            where = f"attribute {attr.name!r} of node {node.name or node.op_type!r}"
            if attr.type == onnx.AttributeProto.TENSOR:
                yield where, attr.t
            elif attr.type == onnx.AttributeProto.TENSORS:
                for t in attr.tensors:
                    yield where, t


def _numel(dims: list[int], where: str, max_elements: int) -> int:
    if any(d < 0 for d in dims):
        raise InvalidModelError(f"{where}: negative dimension in {dims}")
    n = math.prod(dims)
    if n > max_elements:
        raise InvalidModelError(f"{where}: {n} elements, over the limit of {max_elements} (max_tensor_elements)")
    return n


def _check_inline_data(t: onnx.TensorProto, where: str, numel: int) -> None:
    """Inline data must hold exactly the declared number of elements (a truncated file fails here)."""
    if t.data_type == onnx.TensorProto.STRING:
        if len(t.string_data) != numel:
            raise InvalidModelError(f"{where}: {len(t.string_data)} strings for {numel} elements")
        return
    size = _ITEM_SIZE.get(t.data_type)
    if size is None:
        raise InvalidModelError(f"{where}: element type {t.data_type} is not supported")
    if t.HasField("raw_data"):
        if len(t.raw_data) != numel * size:
            raise InvalidModelError(
                f"{where}: {len(t.raw_data)} bytes of data for {numel} elements of {size} bytes (truncated or corrupt)"
            )
        return
    typed = len(getattr(t, _TYPED_FIELD[t.data_type]))
    if typed != numel:
        raise InvalidModelError(f"{where}: {typed} values for {numel} elements (truncated or corrupt)")


def _location_findings(location: str, where: str) -> list[Finding]:
    """Policy findings for an external-data location string (before touching the file system)."""
    detail = {"location": location[:300], "tensor": where}
    if not location or "\x00" in location:
        return [
            Finding(
                "onnx.external_data_invalid", f"{where}: empty or NUL-containing external data location", detail=detail
            )
        ]
    if (
        PurePosixPath(location).is_absolute()
        or PureWindowsPath(location).is_absolute()
        or PureWindowsPath(location).drive
        or location.startswith(("/", "\\", "~"))
    ):
        return [
            Finding(
                "onnx.external_data_absolute",
                f"{where}: external data at absolute path {location[:200]!r}",
                detail=detail,
            )
        ]
    if ".." in re.split(r"[\\/]+", location):
        return [
            Finding(
                "onnx.external_data_traversal",
                f"{where}: external data path {location[:200]!r} leaves the upload (`..`)",
                detail=detail,
            )
        ]
    return []


def _load_external(
    t: onnx.TensorProto, where: str, base_dir: Path, numel: int, budget: list[int], findings: list[Finding]
) -> None:
    """Validate one tensor's external data and inline it (bounded). Policy violations go to
    `findings`; a missing/short file is InvalidModelError."""
    entries: dict[str, str] = {}
    for entry in t.external_data:
        if entry.key in entries:
            raise InvalidModelError(f"{where}: external data key {entry.key!r} given twice")
        entries[entry.key] = entry.value
    location = entries.get("location", "")
    problems = _location_findings(location, where)
    if problems:
        findings.extend(problems)
        return
    base = base_dir.resolve()
    target = (base / location).resolve()
    if not target.is_relative_to(base):
        findings.append(
            Finding(
                "onnx.external_data_escape",
                f"{where}: external data {location[:200]!r} resolves outside the upload (symlink?)",
                detail={"location": location[:300], "tensor": where},
            )
        )
        return
    if not target.is_file():
        raise InvalidModelError(f"{where}: external data file {location[:200]!r} is missing or not a regular file")
    size = _ITEM_SIZE.get(t.data_type)
    if size is None:
        raise InvalidModelError(f"{where}: element type {t.data_type} cannot be stored externally here")
    try:
        offset = int(entries.get("offset", "0"))
        expected = numel * size
        length = int(entries.get("length", str(expected)))
    except ValueError:
        raise InvalidModelError(f"{where}: external data offset/length are not integers") from None
    if offset < 0 or length != expected:
        raise InvalidModelError(f"{where}: external data length {length} at offset {offset}, expected {expected} bytes")
    file_size = target.stat().st_size
    if offset + length > file_size:
        raise InvalidModelError(f"{where}: external data file {location[:200]!r} is {file_size} bytes, too short")
    budget[0] -= length
    if budget[0] < 0:
        raise InvalidModelError("external data over the size limit (max_bytes)")
    with target.open("rb") as fh:
        fh.seek(offset)
        data = fh.read(length)
    if len(data) != length:
        raise InvalidModelError(f"{where}: external data file {location[:200]!r} changed while reading")
    t.raw_data = data
    del t.external_data[:]
    t.data_location = onnx.TensorProto.DEFAULT


def _check_declared_shapes(graph: onnx.GraphProto, max_elements: int) -> None:
    for info in [*graph.input, *graph.output, *graph.value_info]:
        if not info.type.HasField("tensor_type") or not info.type.tensor_type.HasField("shape"):
            continue
        dims = [d.dim_value for d in info.type.tensor_type.shape.dim if d.HasField("dim_value")]
        # a symbolic batch dimension is not counted: the limit applies to one sample's worth
        _numel(dims, f"declared shape of {info.name!r}", max_elements)


def op_findings(
    model: onnx.ModelProto, *, max_depth: int = DEFAULT_MAX_GRAPH_DEPTH
) -> tuple[list[Finding], list[Finding]]:
    """(blocking, informational) findings about the operators of every (sub)graph."""
    blocking: list[Finding] = []
    info: list[Finding] = []
    seen: set[tuple[str, str]] = set()
    for graph, _depth in _graphs(model.graph, 0, max_depth):
        for node in graph.node:
            key = (node.domain, node.op_type)
            detail = {"op_type": node.op_type, "domain": node.domain or "ai.onnx", "node": node.name}
            if not is_allowed(node.domain, node.op_type):
                if key in seen:
                    continue
                seen.add(key)
                if node.domain not in DEFAULT_DOMAINS:
                    blocking.append(
                        Finding(
                            "onnx.custom_domain",
                            f"operator {node.op_type!r} of custom domain {node.domain!r}: custom ops are not run",
                            detail=detail,
                        )
                    )
                else:
                    blocking.append(
                        Finding(
                            "onnx.unsupported_op",
                            f"operator {node.op_type!r} is outside the executor's allowlist",
                            detail=detail,
                        )
                    )
            elif node.op_type in RECORDED_OPS:
                info.append(
                    Finding(
                        f"onnx.{RECORDED_OPS[node.op_type]}_op",
                        f"{node.op_type} node {node.name!r}: {RECORDED_OPS[node.op_type]} (flagged by static checks)",
                        severity="low",
                        detail=detail,
                    )
                )
    for fn in model.functions:
        blocking.append(
            Finding(
                "onnx.local_function",
                f"model-local function {fn.domain}:{fn.name} (custom op definitions are not executed)",
                detail={"op_type": fn.name, "domain": fn.domain},
            )
        )
    return blocking, info


def parse_onnx_bytes(data: bytes) -> onnx.ModelProto:
    """Parse a serialized ModelProto; InvalidModelError when it is not one (truncated, corrupt)."""
    model = onnx.ModelProto()
    try:
        model.ParseFromString(data)
    except Exception as exc:  # DecodeError, RecursionError, ... on hostile bytes
        raise InvalidModelError(f"not a valid ONNX protobuf (truncated or corrupt): {str(exc)[:200]}") from None
    if not model.HasField("graph") or not model.graph.node:
        raise InvalidModelError("not a valid ONNX model: no graph nodes (truncated or empty file)")
    if not model.graph.output:
        raise InvalidModelError("not a valid ONNX model: the graph declares no outputs (truncated?)")
    if not any(o.domain in DEFAULT_DOMAINS for o in model.opset_import):
        raise InvalidModelError("not a valid ONNX model: no default-domain opset import (truncated?)")
    return model


def inspect_onnx(
    path: Path,
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_tensor_elements: int = DEFAULT_MAX_TENSOR_ELEMENTS,
    max_total_elements: int = DEFAULT_MAX_TOTAL_ELEMENTS,
    max_nodes: int = DEFAULT_MAX_NODES,
    max_graph_depth: int = DEFAULT_MAX_GRAPH_DEPTH,
) -> tuple[onnx.ModelProto, list[Finding]]:
    """Parse and vet an untrusted ONNX file; return the model (external data inlined) and the
    non-blocking (low-severity) findings.

    Raises InvalidModelError (unreadable, truncated, corrupt, over a limit),
    RejectedModelError (external data outside the upload; `.findings`), or
    UnsupportedOpError (custom domains / ops outside the allowlist, named in `.findings`).
    """
    path = Path(path)
    try:
        if not path.is_file():
            raise InvalidModelError(f"{path}: not a regular file")
        size = path.stat().st_size
        if size > max_bytes:
            raise InvalidModelError(f"{path.name}: {size} bytes, over the limit of {max_bytes} (max_bytes)")
        with path.open("rb") as fh:
            data = fh.read(min(size, max_bytes) + 1)  # read(n) allocates n bytes up front
    except OSError as exc:
        raise InvalidModelError(f"{path}: cannot read: {exc.strerror or exc}") from None
    if len(data) > max_bytes:
        raise InvalidModelError(f"{path.name}: over the limit of {max_bytes} bytes (max_bytes)")
    model = parse_onnx_bytes(data)

    blocking, info = op_findings(model, max_depth=max_graph_depth)
    external: list[Finding] = []
    total_elements = 0
    node_count = 0
    external_budget = [max_bytes - len(data)]
    for graph, _depth in _graphs(model.graph, 0, max_graph_depth):
        node_count += len(graph.node)
        if node_count > max_nodes:
            raise InvalidModelError(f"more than {max_nodes} nodes (max_nodes)")
        if graph.sparse_initializer:
            blocking.append(Finding("onnx.sparse_initializer", "sparse initializers are not supported by the executor"))
        _check_declared_shapes(graph, max_tensor_elements)
        for where, tensor in _tensors(graph):
            numel = _numel(list(tensor.dims), where, max_tensor_elements)
            total_elements += numel
            if total_elements > max_total_elements:
                raise InvalidModelError(f"tensors hold more than {max_total_elements} elements (max_total_elements)")
            if tensor.data_location == onnx.TensorProto.EXTERNAL:
                _load_external(tensor, where, path.parent, numel, external_budget, external)
            elif tensor.external_data:
                raise InvalidModelError(f"{where}: external_data entries without data_location EXTERNAL")
            else:
                _check_inline_data(tensor, where, numel)
    if external:
        raise RejectedModelError(
            f"{path.name}: external data outside the upload's directory: " + "; ".join(f.message for f in external[:5]),
            findings=external + blocking,
            advice="store external data files next to the .onnx file and reference them by relative name",
        )
    if blocking:
        names = sorted({f.detail.get("op_type", f.code) for f in blocking})
        raise UnsupportedOpError(
            f"{path.name}: the graph uses operators the scanner does not execute: {names}",
            findings=blocking,
            advice="export the generator with standard ONNX operators only (`dgmscan export`, torch.onnx.export)",
        )
    try:
        onnx.checker.check_model(model)
    except Exception as exc:  # ValidationError and friends: malformed graph
        raise InvalidModelError(f"{path.name}: malformed ONNX graph: {str(exc).splitlines()[0][:300]}") from None
    return model, info
