"""Load an untrusted generator file safely, or say precisely why not.

Policy (docs/DESIGN.md, "Model formats and the safety policy"):
- the format is decided from the bytes (scanner.formats.detect), every read is bounded
  (scanner.formats.limits.LoadLimits);
- ONNX is delegated to scanner.onnx (own allowlisted executor, external data kept inside the upload);
- safetensors: header validated, architecture from `__metadata__["dgmscan.architecture"]` or given,
  weights loaded into the registry model with a strict name/shape check;
- torch.save zips: data.pkl scanned against the state-dict allowlist, then
  `torch.load(weights_only=True)` of the same bytes, registry architecture required;
- pickled modules, TorchScript, torch.export .pt2, torch.package, raw pickles: never loaded
  (RejectedModelError with the findings and how to convert the model);
- truncated / corrupt / lying / over-limit files: InvalidModelError naming the problem.
NaN/Inf weights make a model invalid (checks could not reason about it; Inf can hide a trigger path).
"""

from __future__ import annotations

import copy
import json
import math
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from scanner.errors import Finding, InvalidModelError, RejectedModelError, ScannerError
from scanner.formats import detect
from scanner.formats.limits import DEFAULT_LIMITS, LoadLimits
from scanner.formats.numpy_io import npy_findings, npy_info
from scanner.formats.pickle_scan import scan_pickle
from scanner.formats.report import FileReport
from scanner.formats.safetensors_io import (
    META_ARCHITECTURE,
    META_ARCHITECTURE_CONFIG,
    META_LATENT,
    META_OUTPUT,
    load_tensors,
    nonfinite_tensors,
    parse_header,
    parse_json_metadata,
    save_safetensors,
)
from scanner.formats.torch_zip import inspect_archive, load_state_dict_zip
from scanner.generator import Generator
from scanner.specs import LatentSpec, OutputSpec

__all__ = ["FileReport", "LoadLimits", "inspect_file", "load_generator", "save_safetensors"]

_REPORT_CACHE_SIZE = 16
_REPORT_CACHE: dict[tuple[Any, ...], FileReport] = {}
_REPORT_CACHE_LOCK = threading.Lock()
_MAX_CONFIG_VALUE = 1 << 16  # architecture config ints (widths, latent dims): bounds model size


@dataclass
class _Inspection:
    """A FileReport plus what was already read while inspecting (so loading reads once)."""

    report: FileReport
    tensors: dict[str, torch.Tensor] | None = None
    metadata: dict[str, str] = field(default_factory=dict)
    onnx_model: Any = None


def _read_bounded(path: Path, limits: LoadLimits) -> bytes:
    path = Path(path)
    try:
        if not path.is_file():
            raise InvalidModelError(f"{path}: not a regular file")
        size = path.stat().st_size
        if size > limits.max_file_bytes:
            raise InvalidModelError(
                f"{path.name}: {size} bytes, over LoadLimits.max_file_bytes={limits.max_file_bytes}"
            )
        with path.open("rb") as fh:
            # read(n) allocates n bytes up front: ask for the file's size (+1 detects growth), not the limit
            data = fh.read(min(size, limits.max_file_bytes) + 1)
    except OSError as exc:
        raise InvalidModelError(f"{path}: cannot read: {exc.strerror or exc}") from None
    if len(data) > limits.max_file_bytes:
        raise InvalidModelError(f"{path.name}: over LoadLimits.max_file_bytes={limits.max_file_bytes}")
    return data


def _code_bearing_finding(fmt: str) -> Finding:
    what = {
        detect.TORCHSCRIPT: "a TorchScript archive (holds Python-like code that torch.jit.load runs)",
        detect.TORCH_EXPORT: "a torch.export .pt2 archive (deserialising it can run code)",
        detect.TORCH_PACKAGE: "a torch.package archive (ships Python source it imports and runs)",
        detect.PICKLE: "a raw pickle (pickled module / legacy torch.save): unpickling can run any code",
    }[fmt]
    return Finding(
        "format.code_bearing", f"the file is {what}; dgmscan never loads this format", "high", {"format": fmt}
    )


def _inspect_onnx(path: Path | None, data: bytes, limits: LoadLimits, ins: _Inspection) -> None:
    report = ins.report
    try:
        from scanner.onnx import safety
    except ImportError as exc:
        report.problem = f"ONNX support is not available in this installation: {exc}"
        return
    if path is None:
        report.problem = "ONNX files must be inspected from a path (external data is resolved next to it)"
        return
    try:
        model, findings = safety.inspect_onnx(
            path,
            max_bytes=limits.max_file_bytes,
            max_tensor_elements=limits.max_tensor_elements,
            max_total_elements=limits.max_total_elements,
        )
    except RejectedModelError as exc:  # includes UnsupportedOpError
        report.findings += exc.findings or [Finding("onnx.rejected", str(exc), "high")]
        report.advice_text = exc.advice or None
        return
    except InvalidModelError as exc:
        report.problem = str(exc)
        return
    report.findings += list(findings)
    ins.onnx_model = model
    ins.tensors = _onnx_float_initializers(model)
    _check_finite(ins)
    report.header = {
        "ir_version": int(getattr(model, "ir_version", 0)),
        "opsets": {o.domain or "ai.onnx": int(o.version) for o in model.opset_import},
        "nodes": len(model.graph.node),
        "metadata": {p.key: p.value[:500] for p in model.metadata_props},
    }


def _onnx_float_initializers(model: Any) -> dict[str, torch.Tensor]:
    """Floating-point initializers of the main graph (already size-checked by scanner.onnx.safety)."""
    from onnx import numpy_helper

    out: dict[str, torch.Tensor] = {}
    for init in model.graph.initializer:
        try:
            array = numpy_helper.to_array(init)
        except Exception:  # noqa: BLE001 - odd encodings are the executor's business, not a finiteness question
            continue
        if array.dtype.kind == "f":
            out[init.name] = torch.from_numpy(array.astype("float32"))  # a writable copy
    return out


def _check_finite(ins: _Inspection) -> None:
    bad = nonfinite_tensors(ins.tensors or {})
    if bad:
        listing = ", ".join(f"{k} ({v})" for k, v in list(bad.items())[:5])
        ins.report.findings.append(
            Finding(
                "weights.nonfinite", f"NaN/Inf weights in {len(bad)} tensor(s): {listing}", "medium", {"tensors": bad}
            )
        )
        ins.report.problem = f"weights contain NaN/Inf values in {len(bad)} tensor(s): {listing}"


def _inspect(
    data: bytes, *, path: Path | None, limits: LoadLimits, load_weights: bool, fit_metadata_architecture: bool = True
) -> _Inspection:
    fmt = detect.detect_format(data)
    report = FileReport(path=str(path) if path else "<bytes>", format=fmt, size_bytes=len(data))
    ins = _Inspection(report)
    try:
        if fmt == detect.SAFETENSORS:
            header, tensors = load_tensors(data, limits) if load_weights else (parse_header(data, limits), None)
            report.header = header.to_dict()
            ins.metadata, ins.tensors = header.metadata, tensors
            if tensors is not None:
                _check_finite(ins)
                if fit_metadata_architecture and not report.problem and META_ARCHITECTURE in header.metadata:
                    # The file names its architecture: say now whether the weights fit it.
                    arch, config, _ = _fit_registry(
                        tensors,
                        architecture=header.metadata[META_ARCHITECTURE],
                        architecture_config=parse_json_metadata(header.metadata, META_ARCHITECTURE_CONFIG),
                        source_format="safetensors",
                        limits=limits,
                    )
                    report.header["architecture"] = {"name": arch.name, "config": config}
        elif fmt == detect.PICKLE:
            scan = scan_pickle(data, limits=limits, stacked=True)
            report.findings += [_code_bearing_finding(fmt), *scan.findings]
            report.header = {"pickle": scan.to_dict()}
        elif fmt in (
            detect.TORCH_ZIP,
            detect.TORCHSCRIPT,
            detect.TORCH_EXPORT,
            detect.TORCH_PACKAGE,
            detect.NPZ,
            detect.ZIP,
        ):
            archive = inspect_archive(data, limits)
            report.format = fmt = archive.kind
            report.header = archive.header()
            report.findings += archive.findings
            if fmt in detect.CODE_BEARING_FORMATS:
                report.findings.insert(0, _code_bearing_finding(fmt))
            elif fmt == detect.NPZ:
                report.problem = "a NumPy .npz archive, not a model"
            elif fmt == detect.ZIP:
                report.problem = "a zip archive that is not a torch.save state dict (no <root>/data.pkl)"
            elif archive.problem:
                report.problem = archive.problem
            elif load_weights and not report.rejected:
                ins.tensors = load_state_dict_zip(data, limits)
                _check_finite(ins)
        elif fmt == detect.NPY:
            report.findings += npy_findings(data)
            report.header = npy_info(data)
            report.problem = "a NumPy .npy array, not a model"
        elif fmt == detect.ONNX:
            _inspect_onnx(path, data, limits, ins)
        else:
            report.problem = (
                "unrecognised format (not ONNX, safetensors, a torch.save zip, TorchScript, .pt2, torch.package, "
                f"pickle or NumPy); first bytes {data[:8].hex() or '(empty file)'}"
            )
    except RejectedModelError as exc:
        report.findings += exc.findings or [Finding("format.rejected", str(exc), "high")]
        report.advice_text = exc.advice or None
    except InvalidModelError as exc:
        report.problem = str(exc)
    except Exception as exc:  # noqa: BLE001 - untrusted input boundary: fail closed, never crash the caller
        report.problem = f"cannot be read ({type(exc).__name__}: {str(exc)[:300]})"
    return ins


def inspect_file(path: Path, limits: LoadLimits | None = None) -> FileReport:
    """Inspect a model file without loading code from it: format, findings, header facts, problem.

    Never raises for hostile content (that is what the report says); raises InvalidModelError
    only when the file cannot be read at all (missing, over the size limit).
    """
    limits = limits or DEFAULT_LIMITS
    path = Path(path)
    # A scan inspects the same file more than once (suite, format.* checks): reuse the report
    # while the file is unchanged. Loading never uses this cache; it re-reads and re-checks.
    try:
        st = path.stat()
        key: tuple[Any, ...] | None = (str(path.resolve()), st.st_ino, st.st_size, st.st_mtime_ns, limits)
    except OSError:
        key = None
    with _REPORT_CACHE_LOCK:
        cached = _REPORT_CACHE.get(key) if key is not None else None
        if cached is not None:
            return copy.deepcopy(cached)
    data = _read_bounded(path, limits)
    report = _inspect(data, path=path, limits=limits, load_weights=True).report
    if key is not None:
        with _REPORT_CACHE_LOCK:
            while len(_REPORT_CACHE) >= _REPORT_CACHE_SIZE:
                _REPORT_CACHE.pop(next(iter(_REPORT_CACHE)))
            _REPORT_CACHE[key] = copy.deepcopy(report)
    return report


def _rejection(report: FileReport) -> RejectedModelError:
    reasons = "; ".join(f.message for f in report.findings if f.severity == "high")[:1500]
    return RejectedModelError(
        f"{Path(report.path).name}: rejected ({report.format}): {reasons}. To scan it, {report.advice}.",
        findings=report.findings,
        advice=report.advice,
    )


def _strip_common_prefix(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Accept Generator.state_dict() ("body.") and DataParallel ("module.") key prefixes."""
    for prefix in ("module.", "body."):
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix) :]: v for k, v in state.items()}
    return state


def _validated_config(arch: Any, config: Any) -> dict[str, Any]:
    if config is None:
        config = {}
    if not isinstance(config, dict):
        raise InvalidModelError(f"architecture config must be a JSON object, got {type(config).__name__}")
    try:
        resolved = arch.resolve(config)
    except ValueError as exc:
        raise InvalidModelError(str(exc)) from None
    for key, value in resolved.items():
        if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= _MAX_CONFIG_VALUE:
            raise InvalidModelError(
                f"architecture {arch.name!r} parameter {key!r}={str(value)[:40]} "
                f"must be an int in [1, {_MAX_CONFIG_VALUE}]"
            )
    return resolved


def _spec_from(value: Any, cls: type, what: str) -> Any:
    if value is None or isinstance(value, cls):
        return value
    if not isinstance(value, dict):
        raise InvalidModelError(f"{what} spec must be a JSON object")
    try:
        return cls.from_dict(value)
    except (TypeError, ValueError) as exc:
        raise InvalidModelError(f"invalid {what} spec {json.dumps(value)[:200]}: {exc}") from None


def _check_specs(arch_name: str, latent: LatentSpec, output: OutputSpec, built: Generator) -> None:
    if latent.shape != built.latent.shape:
        raise InvalidModelError(f"latent shape {latent.shape} does not match {arch_name}'s {built.latent.shape}")
    if latent.distribution not in ("normal", "uniform") or not latent.low < latent.high:
        raise InvalidModelError(f"invalid latent distribution {latent}")
    if output.shape != built.output.shape:
        raise InvalidModelError(f"output shape {output.shape} does not match {arch_name}'s {built.output.shape}")
    lo, hi = output.value_range
    if output.kind not in ("image", "audio") or output.final_activation not in ("tanh", "sigmoid", "none"):
        raise InvalidModelError(f"invalid output spec {output}")
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise InvalidModelError(f"output value range {output.value_range} must be finite with low < high")


def _fit_registry(
    tensors: dict[str, torch.Tensor],
    *,
    architecture: str | None,
    architecture_config: Any,
    source_format: str,
    limits: LoadLimits,
) -> tuple[Any, dict[str, Any], dict[str, torch.Tensor]]:
    """Check that the weights fit a registry architecture, on the meta device (no allocation).

    Returns (architecture, resolved config, state dict with normalised keys).
    """
    from scanner.architectures import REGISTRY

    if not architecture:
        raise InvalidModelError(
            f"{source_format} holds weights only: name the architecture (--architecture, one of {sorted(REGISTRY)}) "
            f"or save with save_safetensors so the file's metadata names it"
        )
    if architecture not in REGISTRY:
        raise InvalidModelError(f"unknown architecture {str(architecture)[:80]!r}; known: {sorted(REGISTRY)}")
    arch = REGISTRY[architecture]
    config = _validated_config(arch, architecture_config)
    try:
        # Shapes first, on the meta device: a hostile config cannot make us allocate anything.
        with torch.device("meta"):
            expected = {k: tuple(v.shape) for k, v in arch.build_body(**config).state_dict().items()}
    except Exception as exc:  # noqa: BLE001 - builders raise assorted errors on odd configs
        raise InvalidModelError(f"architecture {arch.name!r} cannot be built with {config}: {exc}") from None
    if sum(math.prod(s) for s in expected.values()) > limits.max_total_elements:
        raise InvalidModelError(f"architecture {arch.name!r} {config} is over LoadLimits.max_total_elements")
    state = _strip_common_prefix(tensors)
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mismatched = [
        f"{k}: file {tuple(state[k].shape)} vs model {expected[k]}"
        for k in expected
        if k in state and tuple(state[k].shape) != expected[k]
    ]
    if missing or unexpected or mismatched:
        parts = []
        if missing:
            parts.append(f"missing {missing[:5]}{' ...' if len(missing) > 5 else ''}")
        if unexpected:
            parts.append(f"unexpected {unexpected[:5]}{' ...' if len(unexpected) > 5 else ''}")
        if mismatched:
            parts.append(f"shape mismatch {mismatched[:5]}")
        raise InvalidModelError(f"weights do not fit architecture {arch.name!r} {config}: " + "; ".join(parts))
    return arch, config, state


def _build_from_registry(
    tensors: dict[str, torch.Tensor],
    *,
    architecture: str | None,
    architecture_config: Any,
    latent: Any,
    output: Any,
    source_format: str,
    limits: LoadLimits,
) -> Generator:
    arch, config, state = _fit_registry(
        tensors,
        architecture=architecture,
        architecture_config=architecture_config,
        source_format=source_format,
        limits=limits,
    )
    generator = arch.build(config)
    target = generator.body.state_dict()
    try:
        generator.body.load_state_dict({k: v.to(target[k].dtype) for k, v in state.items()}, strict=True)
    except RuntimeError as exc:
        raise InvalidModelError(f"weights do not load into {arch.name!r}: {str(exc)[:300]}") from None
    latent_spec = _spec_from(latent, LatentSpec, "latent") or generator.latent
    output_spec = _spec_from(output, OutputSpec, "output") or generator.output
    _check_specs(arch.name, latent_spec, output_spec, generator)
    generator.latent, generator.output = latent_spec, output_spec
    generator.source_format = source_format
    generator.eval()  # BatchNorm uses its running statistics: the generator as deployed
    return generator


def load_generator(
    path: Path,
    *,
    architecture: str | None = None,
    architecture_config: dict | None = None,
    latent: LatentSpec | None = None,
    output: OutputSpec | None = None,
    limits: LoadLimits | None = None,
) -> Generator:
    """Load a generator from an untrusted file (CPU, eval mode), never executing code from it.

    Explicit `architecture` / `architecture_config` / `latent` / `output` take precedence over
    the file's metadata. Raises RejectedModelError (unsafe or code-bearing; `.findings`,
    `.advice`) or InvalidModelError (unreadable, corrupt, over a limit, weights that do not fit).
    """
    limits = limits or DEFAULT_LIMITS
    path = Path(path)
    data = _read_bounded(path, limits)
    # An explicit architecture overrides the file's metadata, so only check the metadata's own claim otherwise.
    explicit = architecture is not None or architecture_config is not None
    ins = _inspect(data, path=path, limits=limits, load_weights=True, fit_metadata_architecture=not explicit)
    report = ins.report
    if report.rejected:
        raise _rejection(report)
    if report.invalid:
        raise InvalidModelError(f"{path.name}: {report.problem}")
    try:
        if report.format == detect.ONNX:
            from scanner.onnx import generator_from_onnx

            generator = generator_from_onnx(ins.onnx_model, latent=latent, output=output)
            generator.metadata.setdefault("file_findings", [f.to_dict() for f in report.findings])
            return generator
        if report.format == detect.SAFETENSORS:
            meta = ins.metadata
            return _build_from_registry(
                ins.tensors or {},
                architecture=architecture or meta.get(META_ARCHITECTURE),
                architecture_config=architecture_config
                if architecture_config is not None
                else parse_json_metadata(meta, META_ARCHITECTURE_CONFIG),
                latent=latent if latent is not None else parse_json_metadata(meta, META_LATENT),
                output=output if output is not None else parse_json_metadata(meta, META_OUTPUT),
                source_format="safetensors",
                limits=limits,
            )
        if report.format == detect.TORCH_ZIP:
            return _build_from_registry(
                ins.tensors or {},
                architecture=architecture,
                architecture_config=architecture_config,
                latent=latent,
                output=output,
                source_format="torch_state_dict",
                limits=limits,
            )
    except InvalidModelError as exc:
        raise InvalidModelError(f"{path.name}: {exc}") from None
    except ScannerError:
        raise
    except ImportError as exc:
        raise InvalidModelError(f"{path.name}: {report.format} loading is not available here: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - untrusted input boundary: fail closed with our error type
        raise InvalidModelError(
            f"{path.name}: cannot build the generator: {type(exc).__name__}: {str(exc)[:300]}"
        ) from None
    raise InvalidModelError(f"{path.name}: format {report.format!r} is not loadable")
