"""An ONNX ModelProto as a scanner `Generator`.

The paper's defenses work before the final tanh/sigmoid (ReconD is measured in pre-activation
space; Rawat et al., arXiv 2108.01644, §5.2), so when the node producing the graph output is a
Tanh or Sigmoid it is split off: the body runs the graph up to that node's input and the
activation lives in the OutputSpec. The ModelProto stays on the generator
(`generator.metadata["onnx_model"]`) so static checks can walk the graph topology
(latent-dependent If/Where/comparisons, parallel input→output paths).
"""

from __future__ import annotations

import json
import math
from typing import Any

import onnx
import torch

from scanner.errors import InvalidModelError, ScannerError
from scanner.generator import Generator
from scanner.onnx.executor import DEFAULT_MAX_TENSOR_ELEMENTS, OnnxGraphModule, build_executor, default_opset
from scanner.onnx.ops import DEFAULT_DOMAINS
from scanner.specs import FinalActivation, LatentSpec, OutputSpec

META_ARCHITECTURE = "dgmscan.architecture"
META_ARCHITECTURE_CONFIG = "dgmscan.architecture_config"
META_LATENT = "dgmscan.latent"
META_OUTPUT = "dgmscan.output"
_MAX_META_CHARS = 64 * 1024

_SPLIT_ACTIVATIONS: dict[str, FinalActivation] = {"Tanh": "tanh", "Sigmoid": "sigmoid"}
_DEFAULT_RANGE: dict[str, tuple[float, float]] = {"tanh": (-1.0, 1.0), "sigmoid": (0.0, 1.0), "none": (-1.0, 1.0)}


def _metadata_json(props: dict[str, str], key: str) -> Any:
    if key not in props:
        return None
    raw = props[key]
    if len(raw) > _MAX_META_CHARS:
        raise InvalidModelError(f"metadata {key!r} is over {_MAX_META_CHARS} characters")
    try:
        return json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise InvalidModelError(f"metadata {key!r} is not valid JSON: {str(exc)[:200]}") from None


def _architecture_from_metadata(props: dict[str, str]) -> tuple[str | None, dict[str, Any] | None]:
    """The architecture name (and config) the file claims: a plain name, a JSON string, or a
    JSON object {"name": ..., "config": {...}}; config may also sit in dgmscan.architecture_config."""
    raw = props.get(META_ARCHITECTURE)
    name: Any = None
    config: Any = None
    if raw is not None:
        try:
            parsed = json.loads(raw)
        except (ValueError, RecursionError):
            parsed = raw  # a bare name
        if isinstance(parsed, dict):
            name, config = parsed.get("name"), parsed.get("config")
        else:
            name = parsed
    if config is None:
        config = _metadata_json(props, META_ARCHITECTURE_CONFIG)
    if name is not None and (not isinstance(name, str) or len(name) > 100):
        raise InvalidModelError(f"metadata {META_ARCHITECTURE!r} must name an architecture")
    if config is not None and not isinstance(config, dict):
        raise InvalidModelError(f"metadata {META_ARCHITECTURE_CONFIG!r} must be a JSON object")
    return name, config


def _spec(value: Any, cls: type, what: str) -> Any:
    if value is None or isinstance(value, cls):
        return value
    if not isinstance(value, dict):
        raise InvalidModelError(f"{what} spec must be a JSON object, got {type(value).__name__}")
    try:
        return cls.from_dict(value)
    except (TypeError, ValueError) as exc:
        raise InvalidModelError(f"invalid {what} spec {json.dumps(value)[:200]}: {exc}") from None


def _declared_dims(info: onnx.ValueInfoProto) -> list[int | None] | None:
    """Declared dims (None for symbolic/unknown ones), or None when no shape is declared."""
    tensor_type = info.type.tensor_type
    if not info.type.HasField("tensor_type") or not tensor_type.HasField("shape"):
        return None
    return [d.dim_value if d.HasField("dim_value") else None for d in tensor_type.shape.dim]


def split_final_activation(model: onnx.ModelProto) -> tuple[str, str, FinalActivation, str | None]:
    """(graph output, body output, final activation, name of the split-off node).

    When the node producing the (first) graph output is Tanh/Sigmoid, the body stops at its input.
    """
    if not model.graph.output:
        raise InvalidModelError("the graph has no outputs")
    out = model.graph.output[0].name
    producer = next((n for n in model.graph.node if out in n.output), None)
    if (
        producer is not None
        and producer.domain in DEFAULT_DOMAINS
        and producer.op_type in _SPLIT_ACTIVATIONS
        and len(producer.input) == 1
        and producer.input[0]
    ):
        return out, producer.input[0], _SPLIT_ACTIVATIONS[producer.op_type], producer.name or producer.op_type
    return out, out, "none", None


def generator_from_onnx(
    model: onnx.ModelProto,
    *,
    latent: LatentSpec | None = None,
    output: OutputSpec | None = None,
    max_tensor_elements: int = DEFAULT_MAX_TENSOR_ELEMENTS,
) -> Generator:
    """Wrap a vetted ModelProto (see `scanner.onnx.safety.inspect_onnx`) as a Generator.

    Specs: explicit arguments first, then the file's metadata_props (dgmscan.latent,
    dgmscan.output, dgmscan.architecture[_config]), else inferred (latent shape from the input,
    N(0, I); output kind from the rank: C×H×W image, C×L audio). The final activation always
    comes from the graph (a spec cannot make the scanner apply tanh twice).
    """
    props = {p.key: p.value for p in model.metadata_props}
    initializer_names = {t.name for t in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in initializer_names]
    if len(inputs) != 1:
        raise InvalidModelError(
            f"a generator graph takes one latent input; this one takes {len(inputs)}: {[i.name for i in inputs][:5]}"
        )
    graph_out, body_out, activation, split_node = split_final_activation(model)
    body = build_executor(model, outputs=[body_out], max_tensor_elements=max_tensor_elements)

    # -- latent --------------------------------------------------------------------------
    declared_in = _declared_dims(inputs[0])
    latent = _spec(latent, LatentSpec, "latent") or _spec(_metadata_json(props, META_LATENT), LatentSpec, "latent")
    if latent is None:
        if not declared_in or len(declared_in) < 2 or any(d is None or d <= 0 for d in declared_in[1:]):
            raise InvalidModelError(
                f"the latent input {inputs[0].name!r} has no fixed per-sample shape ({declared_in}); give a latent spec"
            )
        latent = LatentSpec(tuple(int(d) for d in declared_in[1:]))  # type: ignore[misc]
    if latent.distribution not in ("normal", "uniform") or not latent.low < latent.high or latent.dim <= 0:
        raise InvalidModelError(f"invalid latent spec {latent}")
    if declared_in and len(declared_in) >= 2:
        declared = declared_in[1:]
        if len(declared) != len(latent.shape) or any(
            d is not None and d > 0 and d != s for d, s in zip(declared, latent.shape, strict=False)
        ):
            raise InvalidModelError(f"latent shape {latent.shape} does not match the graph input {declared_in}")

    # -- probe: run the body once, so a broken graph fails here with a clear message -----
    body.eval()
    try:
        with torch.no_grad():
            z = latent.sample(2, generator=torch.Generator().manual_seed(0))
            probe = body(z)
    except ScannerError:
        raise
    except Exception as exc:  # noqa: BLE001 - any torch error means the graph does not run
        raise InvalidModelError(f"the ONNX graph does not run on a latent batch: {str(exc)[:300]}") from None
    if not isinstance(probe, torch.Tensor) or probe.dim() < 2 or probe.shape[0] != 2:
        raise InvalidModelError("the ONNX graph's output has no batch dimension")
    if not probe.is_floating_point():
        raise InvalidModelError(f"the ONNX graph outputs {probe.dtype}, not floating point values")
    sample_shape = tuple(int(d) for d in probe.shape[1:])

    # -- output ----------------------------------------------------------------------------
    output = _spec(output, OutputSpec, "output") or _spec(_metadata_json(props, META_OUTPUT), OutputSpec, "output")
    notes: list[str] = []
    if output is None:
        if len(sample_shape) == 3:
            kind = "image"
        elif len(sample_shape) == 2:
            kind = "audio"
        else:
            raise InvalidModelError(
                f"cannot tell the output kind from shape {sample_shape} (expected C×H×W or C×L); give an output spec"
            )
        output = OutputSpec(kind, sample_shape, _DEFAULT_RANGE[activation], activation)  # type: ignore[arg-type]
    if output.kind not in ("image", "audio"):
        raise InvalidModelError(f"invalid output kind {output.kind!r}")
    if output.final_activation != activation:
        notes.append(f"output spec said final activation {output.final_activation!r}; the graph's is {activation!r}")
        output = OutputSpec(output.kind, output.shape, output.value_range, activation)
    if tuple(output.shape) != sample_shape:
        raise InvalidModelError(f"output spec shape {output.shape} does not match the graph's output {sample_shape}")
    lo, hi = output.value_range
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise InvalidModelError(f"output value range {output.value_range} must be finite with low < high")

    arch_name, arch_config = _architecture_from_metadata(props)
    metadata: dict[str, Any] = {
        "onnx_model": model,
        "onnx_opset": default_opset(model),
        "onnx_graph_output": graph_out,
        "onnx_body_output": body_out,
        "onnx_final_activation_node": split_node,
        "onnx_recorded_ops": [r.to_dict() for r in body.recorded_ops],
        "onnx_op_counts": body.op_counts(),
        "onnx_metadata_props": {k: v[:1000] for k, v in props.items()},
    }
    if arch_config is not None:
        metadata["architecture_config"] = arch_config
    if notes:
        metadata["spec_notes"] = notes
    generator = Generator(body, latent, output, architecture=arch_name, source_format="onnx", metadata=metadata)
    return generator.eval()


def onnx_body(generator: Generator) -> OnnxGraphModule | None:
    """The executor behind an ONNX-loaded generator (None for other generators)."""
    return generator.body if isinstance(generator.body, OnnxGraphModule) else None
