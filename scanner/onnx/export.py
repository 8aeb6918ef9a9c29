"""Export a Generator to ONNX, and an ONNX generator back to a registry architecture.

`dgmscan export` is how an owner converts a model on a trusted machine into a format the
scanner loads without running code (docs/DESIGN.md). The exported graph has input "z"
(dynamic batch), output "x", *includes* the final activation, and carries the specs and the
architecture in metadata_props so the scanner rebuilds the same Generator.
"""

from __future__ import annotations

import json
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from onnx import numpy_helper

from scanner.errors import InvalidModelError
from scanner.generator import Generator
from scanner.onnx.executor import OnnxGraphModule
from scanner.onnx.model import (
    META_ARCHITECTURE,
    META_ARCHITECTURE_CONFIG,
    META_LATENT,
    META_OUTPUT,
    generator_from_onnx,
    onnx_body,
)

DEFAULT_OPSET = 17
_ROUNDTRIP_ATOL = 1e-4


def _set_metadata(model: onnx.ModelProto, generator: Generator) -> None:
    props: dict[str, str] = {p.key: p.value for p in model.metadata_props}
    props[META_LATENT] = json.dumps(generator.latent.to_dict())
    props[META_OUTPUT] = json.dumps(generator.output.to_dict())
    props.pop(META_ARCHITECTURE, None)
    props.pop(META_ARCHITECTURE_CONFIG, None)
    if generator.architecture:
        props[META_ARCHITECTURE] = generator.architecture
        config = generator.metadata.get("architecture_config")
        if config is not None:
            props[META_ARCHITECTURE_CONFIG] = json.dumps(config, sort_keys=True)
    del model.metadata_props[:]
    for key, value in props.items():
        model.metadata_props.add(key=key, value=value)


def _written_back(generator: Generator) -> onnx.ModelProto | None:
    """The generator's original ONNX graph with its current weights (an ONNX-loaded generator,
    possibly fine-tuned or sanitized since), or None when the graph no longer fits."""
    body = onnx_body(generator)
    original = generator.metadata.get("onnx_model")
    if body is None or not isinstance(original, onnx.ModelProto):
        return None
    model = onnx.ModelProto()
    model.CopyFrom(original)
    return model if _write_graph(body, model.graph) else None


def _write_graph(body: OnnxGraphModule, graph: onnx.GraphProto) -> bool:
    """Write `body`'s current weights into `graph` and its If branches; False when a shape no
    longer fits (layers were resized, e.g. expanded: the caller re-traces instead)."""
    by_name = {t.name: t for t in graph.initializer}
    for name, value in body.initializer_values().items():
        proto = by_name.get(name)
        if proto is None or tuple(proto.dims) != tuple(value.shape):
            return False
        array = value.detach().cpu().numpy().astype(onnx.helper.tensor_dtype_to_np_dtype(proto.data_type))
        proto.CopyFrom(numpy_helper.from_array(array, name))
    layer_weights = {src.weight for src in body.layer_sources.values()}
    for node in graph.node:  # Gemm alpha/beta were folded into the nn.Linear
        if node.op_type == "Gemm" and len(node.input) > 1 and node.input[1] in layer_weights:
            for attr in node.attribute:
                if attr.name in ("alpha", "beta"):
                    attr.f = 1.0
    for step in body.steps:
        if not step.subgraphs:
            continue
        if not 0 <= step.source_index < len(graph.node):
            return False
        node = graph.node[step.source_index]
        for attr in node.attribute:
            key = step.subgraphs.get(attr.name)
            is_branch = key is not None and attr.type == onnx.AttributeProto.GRAPH
            if is_branch and not _write_graph(body.subgraphs[key], attr.g):
                return False
    return True


def _traced(generator: Generator, path: Path, opset: int) -> onnx.ModelProto:
    module = generator.copy().to("cpu").eval()
    z = module.latent.sample(2, generator=torch.Generator().manual_seed(0)).to(_float_dtype(module))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TorchScript-exporter deprecation and tracer notes
        try:
            _export_traced(module, z, path, opset)
        except (RuntimeError, TypeError, ValueError) as exc:  # untraceable Python control flow and the like
            raise InvalidModelError(f"torch.onnx.export cannot trace this generator: {str(exc)[:300]}") from None
    return onnx.load(str(path))


def _float_dtype(module: torch.nn.Module) -> torch.dtype:
    """The generator's floating dtype (the latent must match it when tracing)."""
    for p in module.parameters():
        if p.is_floating_point():
            return p.dtype
    return torch.float32


def _export_traced(module: torch.nn.Module, z: torch.Tensor, path: Path, opset: int) -> None:
    torch.onnx.export(
        module,
        (z,),
        str(path),
        dynamo=False,
        input_names=["z"],
        output_names=["x"],
        dynamic_axes={"z": {0: "batch"}, "x": {0: "batch"}},
        opset_version=opset,
        do_constant_folding=True,
    )


def export_onnx(generator: Generator, path: Path, *, opset: int = DEFAULT_OPSET, verify: bool = True) -> None:
    """Write `generator` (with its final activation) as ONNX at `path`.

    An ONNX-loaded generator is written back into its own graph (exact topology, current
    weights); anything else is exported with torch.onnx.export (dynamic batch axis). With
    `verify`, the file is re-loaded by the scanner's executor and compared with the generator on
    a batch of a different size (catches a batch size baked into the graph).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = _written_back(generator)
    if model is None:
        with tempfile.TemporaryDirectory(dir=path.parent) as scratch:  # never leave a half-verified file at `path`
            model = _traced(generator, Path(scratch) / "traced.onnx", opset)
    _set_metadata(model, generator)
    if verify:
        _verify(generator, model)
    onnx.save(model, str(path))


@torch.no_grad()
def _verify(generator: Generator, model: onnx.ModelProto) -> None:
    reloaded = generator_from_onnx(model)
    module = generator.copy().to("cpu").eval()
    z = generator.latent.sample(3, generator=torch.Generator().manual_seed(1)).to(_float_dtype(module))
    reference = module(z)
    got = reloaded(z).to(reference.dtype)
    if got.shape != reference.shape:
        raise InvalidModelError(
            f"exported graph gives shape {tuple(got.shape)}, the generator {tuple(reference.shape)}"
        )
    err = float((got - reference).abs().max())
    if not np.isfinite(err) or err > _ROUNDTRIP_ATOL * max(1.0, float(reference.abs().max())):
        raise InvalidModelError(f"exported graph differs from the generator by {err:.3g} (max abs)")


def _torch_layout_tensors(generator: Generator) -> list[tuple[set[str], torch.Tensor]]:
    """(ONNX names, tensor in torch layout) for every weight of an ONNX-loaded generator, in
    graph order: layer weights/biases first-class, other initializers with their Identity aliases."""
    body = onnx_body(generator)
    assert body is not None
    model = generator.metadata.get("onnx_model")
    aliases: dict[str, set[str]] = {}
    if isinstance(model, onnx.ModelProto):
        for node in model.graph.node:  # the exporter dedups equal tensors through Identity
            if node.op_type == "Identity" and len(node.input) == 1:
                aliases.setdefault(node.input[0], set()).add(node.output[0])
    out: list[tuple[set[str], torch.Tensor]] = []
    for key, src in body.layer_sources.items():
        layer = body.layers[key]
        out.append(({src.weight, *aliases.get(src.weight, ())}, layer.weight.detach()))
        if src.bias is not None:
            out.append(({src.bias, *aliases.get(src.bias, ())}, layer.bias.detach()))
    for name, attr in body.tensor_attr.items():
        out.append(({name, *aliases.get(name, ())}, getattr(body.tensors, attr).detach()))
    return out


def registry_generator_from_onnx(
    generator: Generator, *, architecture: str | None = None, architecture_config: dict[str, Any] | None = None
) -> Generator:
    """Rebuild a registry-architecture Generator holding an ONNX generator's weights.

    Parameters and buffers are matched by name (the exporter keeps `body.<name>`), else by
    shape in graph order; the result must reproduce the ONNX generator's outputs, otherwise
    InvalidModelError (never a silently wrong checkpoint).
    """
    from scanner.architectures import get_architecture

    name = architecture or generator.architecture
    if not name:
        raise InvalidModelError("the ONNX file names no architecture: pass --architecture (a registry name)")
    if onnx_body(generator) is None:
        raise InvalidModelError("not an ONNX-loaded generator")
    try:
        arch = get_architecture(name)
        config = architecture_config
        if config is None and name == generator.architecture:  # the file's config is for the file's architecture
            config = generator.metadata.get("architecture_config")
        target = arch.build(config)
    except (ValueError, TypeError) as exc:
        raise InvalidModelError(str(exc)) from None
    candidates = _torch_layout_tensors(generator)
    used: set[int] = set()
    state = target.body.state_dict()
    new_state: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key.endswith("num_batches_tracked"):
            new_state[key] = value
            continue
        wanted = {f"body.{key}", key}
        match = next(
            (i for i, (names, t) in enumerate(candidates) if names & wanted and tuple(t.shape) == tuple(value.shape)),
            None,
        )
        if match is None:
            match = next(
                (i for i, (_n, t) in enumerate(candidates) if i not in used and tuple(t.shape) == tuple(value.shape)),
                None,
            )
        if match is None:
            raise InvalidModelError(f"no ONNX tensor fits {arch.name} parameter {key!r} {tuple(value.shape)}")
        used.add(match)
        new_state[key] = candidates[match][1].to(value.dtype).cpu().clone()
    target.body.load_state_dict(new_state, strict=True)
    target.eval()
    target.latent, target.output = generator.latent, generator.output
    if target.output.final_activation != generator.output.final_activation:
        raise InvalidModelError("the ONNX graph's final activation differs from the architecture's")
    with torch.no_grad():
        z = generator.latent.sample(4, generator=torch.Generator().manual_seed(2))
        reference = generator.copy().to("cpu").eval()(z)
        got = target(z)
    err = float((got - reference).abs().max()) if got.shape == reference.shape else float("inf")
    if not np.isfinite(err) or err > _ROUNDTRIP_ATOL * max(1.0, float(reference.abs().max())):
        raise InvalidModelError(
            f"the ONNX weights do not reproduce the graph in architecture {arch.name!r} (max abs diff {err:.3g})"
        )
    target.source_format = "registry"
    return target
