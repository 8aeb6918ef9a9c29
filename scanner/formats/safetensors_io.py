"""safetensors: a header we validate ourselves (no lying headers), tensors read by the library.

Layout: 8-byte little-endian header length N, N bytes of JSON
`{"name": {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {str: str}}`,
then the byte buffer. Hostile files lie in the header: offsets past the end, overlapping
spans, a span that does not match shape×dtype, shapes of 2^40 elements, a length field larger
than the file. Each lie is named in the InvalidModelError, before the library touches the data.

dgmscan metadata keys (all JSON strings): `dgmscan.architecture` (registry name),
`dgmscan.architecture_config`, `dgmscan.latent`, `dgmscan.output`.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from scanner.errors import InvalidModelError
from scanner.formats.limits import DEFAULT_LIMITS, LoadLimits

META_ARCHITECTURE = "dgmscan.architecture"
META_ARCHITECTURE_CONFIG = "dgmscan.architecture_config"
META_LATENT = "dgmscan.latent"
META_OUTPUT = "dgmscan.output"
META_FORMAT_VERSION = "dgmscan.format_version"

# safetensors dtype -> (torch dtype, bytes per element). Only dtypes a generator's weights use.
DTYPES: dict[str, tuple[torch.dtype, int]] = {
    "F64": (torch.float64, 8),
    "F32": (torch.float32, 4),
    "F16": (torch.float16, 2),
    "BF16": (torch.bfloat16, 2),
    "I64": (torch.int64, 8),
    "I32": (torch.int32, 4),
    "I16": (torch.int16, 2),
    "I8": (torch.int8, 1),
    "U8": (torch.uint8, 1),
    "BOOL": (torch.bool, 1),
}
_TORCH_TO_ST = {dt: name for name, (dt, _) in DTYPES.items()}


@dataclass(frozen=True)
class TensorEntry:
    name: str
    dtype: str
    shape: tuple[int, ...]
    begin: int
    end: int

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


@dataclass
class SafetensorsHeader:
    header_bytes: int
    metadata: dict[str, str] = field(default_factory=dict)
    tensors: dict[str, TensorEntry] = field(default_factory=dict)

    @property
    def total_elements(self) -> int:
        return sum(t.numel for t in self.tensors.values())

    def to_dict(self) -> dict[str, Any]:
        return {
            "header_bytes": self.header_bytes,
            "metadata": dict(self.metadata),
            "tensor_count": len(self.tensors),
            "total_elements": self.total_elements,
            "tensors": {n: {"dtype": t.dtype, "shape": list(t.shape)} for n, t in list(self.tensors.items())[:200]},
        }


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {key!r} in header")
        out[key] = value
    return out


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def parse_header(data: bytes, limits: LoadLimits = DEFAULT_LIMITS) -> SafetensorsHeader:
    """Validate a safetensors header against the bytes that follow it. Raises InvalidModelError."""
    if len(data) < 8:
        raise InvalidModelError(f"truncated safetensors file: {len(data)} bytes, the length field alone needs 8")
    (n,) = struct.unpack("<Q", data[:8])
    if n > limits.max_header_bytes:
        raise InvalidModelError(
            f"safetensors header length {n} is over LoadLimits.max_header_bytes={limits.max_header_bytes}"
        )
    if 8 + n > len(data):
        raise InvalidModelError(
            f"safetensors header length field says {n} bytes but the file has only {len(data) - 8} after it "
            "(truncated or lying header)"
        )
    try:
        raw = json.loads(data[8 : 8 + n].decode("utf-8"), object_pairs_hook=_no_duplicate_keys)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise InvalidModelError(f"safetensors header is not valid JSON: {str(exc)[:200]}") from None
    if not isinstance(raw, dict):
        raise InvalidModelError(f"safetensors header is a JSON {type(raw).__name__}, not an object")
    metadata = raw.pop("__metadata__", {}) or {}
    if not isinstance(metadata, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()
    ):
        raise InvalidModelError("safetensors __metadata__ must map strings to strings")
    buffer_len = len(data) - 8 - n
    header = SafetensorsHeader(header_bytes=n, metadata=metadata)
    total = 0
    for name, entry in raw.items():
        if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data_offsets"}:
            raise InvalidModelError(f"tensor {name[:80]!r}: header entry must have exactly dtype, shape, data_offsets")
        dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
        if dtype not in DTYPES:
            raise InvalidModelError(f"tensor {name[:80]!r}: unknown or unsupported dtype {str(dtype)[:20]!r}")
        if not isinstance(shape, list) or len(shape) > 8 or not all(_is_int(s) and s >= 0 for s in shape):
            raise InvalidModelError(f"tensor {name[:80]!r}: shape must be a list of at most 8 non-negative ints")
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(_is_int(o) for o in offsets)):
            raise InvalidModelError(f"tensor {name[:80]!r}: data_offsets must be [begin, end] integers")
        begin, end = offsets
        if not 0 <= begin <= end:
            raise InvalidModelError(f"tensor {name[:80]!r}: data_offsets {offsets} are not 0 <= begin <= end")
        if end > buffer_len:
            raise InvalidModelError(
                f"tensor {name[:80]!r}: data_offsets end {end} is past the end of the data ({buffer_len} bytes)"
            )
        numel = math.prod(shape)
        if numel > limits.max_tensor_elements:
            raise InvalidModelError(
                f"tensor {name[:80]!r}: shape {shape} has {numel} elements, "
                f"over LoadLimits.max_tensor_elements={limits.max_tensor_elements}"
            )
        itemsize = DTYPES[dtype][1]
        if numel * itemsize != end - begin:
            raise InvalidModelError(
                f"tensor {name[:80]!r}: shape {shape} x {dtype} ({itemsize} B) needs {numel * itemsize} bytes "
                f"but data_offsets span {end - begin}"
            )
        total += numel
        header.tensors[name] = TensorEntry(name, dtype, tuple(shape), begin, end)
    if total > limits.max_total_elements:
        raise InvalidModelError(
            f"safetensors file declares {total} elements, "
            f"over LoadLimits.max_total_elements={limits.max_total_elements}"
        )
    # Spans must tile the buffer exactly: no overlaps (two names, one memory) and no hidden gaps.
    cursor = 0
    for entry in sorted(header.tensors.values(), key=lambda t: (t.begin, t.end)):
        if entry.begin < cursor:
            raise InvalidModelError(f"tensor {entry.name[:80]!r}: data_offsets overlap another tensor")
        if entry.begin > cursor:
            raise InvalidModelError(
                f"tensor {entry.name[:80]!r}: {entry.begin - cursor} unaccounted bytes before it (gap in the data)"
            )
        cursor = entry.end
    if cursor != buffer_len:
        raise InvalidModelError(f"{buffer_len - cursor} trailing bytes after the last tensor")
    return header


def load_tensors(data: bytes, limits: LoadLimits = DEFAULT_LIMITS) -> tuple[SafetensorsHeader, dict[str, torch.Tensor]]:
    """Validate, then let the safetensors library read the tensors (CPU)."""
    header = parse_header(data, limits)
    from safetensors import SafetensorError
    from safetensors.torch import load as st_load

    try:
        tensors = st_load(data)
    except (SafetensorError, ValueError, RuntimeError, OverflowError, TypeError) as exc:
        raise InvalidModelError(f"safetensors library refused the file: {str(exc)[:300]}") from None
    return header, tensors


def nonfinite_tensors(tensors: dict[str, torch.Tensor]) -> dict[str, int]:
    """Names of floating tensors holding NaN or Inf, with how many such entries."""
    bad: dict[str, int] = {}
    for name, t in tensors.items():
        if t.is_floating_point():
            count = int((~torch.isfinite(t)).sum())
            if count:
                bad[name] = count
    return bad


def parse_json_metadata(metadata: dict[str, str], key: str) -> Any:
    """One JSON-valued dgmscan metadata entry (None when absent)."""
    if key not in metadata:
        return None
    try:
        return json.loads(metadata[key])
    except (ValueError, RecursionError) as exc:
        raise InvalidModelError(f"metadata {key!r} is not valid JSON: {str(exc)[:200]}") from None


def save_safetensors(generator: Any, path: Path) -> None:
    """Write a registry-architecture Generator as safetensors with dgmscan metadata.

    The metadata names the architecture, its config and the latent/output specs, so
    `scanner.loading.load_generator(path)` rebuilds the same generator without any code in
    the file. Raises ValueError when the generator is not a registry architecture.
    """
    from safetensors.torch import save_file

    from scanner.architectures import get_architecture

    if not generator.architecture:
        raise ValueError("save_safetensors needs a generator built from the architecture registry")
    arch = get_architecture(generator.architecture)
    config = arch.resolve((generator.metadata or {}).get("architecture_config"))
    with torch.device("meta"):
        expected = {k: tuple(v.shape) for k, v in arch.build_body(**config).state_dict().items()}
    state = {k: v.detach().to("cpu").contiguous().clone() for k, v in generator.body.state_dict().items()}
    actual = {k: tuple(v.shape) for k, v in state.items()}
    if expected != actual:
        differ = sorted(set(expected.items()) ^ set(actual.items()))[:5]
        raise ValueError(f"generator weights do not match architecture {arch.name!r} {config}: {differ}")
    metadata = {
        META_ARCHITECTURE: arch.name,
        META_ARCHITECTURE_CONFIG: json.dumps(config, sort_keys=True),
        META_LATENT: json.dumps(generator.latent.to_dict()),
        META_OUTPUT: json.dumps(generator.output.to_dict()),
        META_FORMAT_VERSION: "1",
    }
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(path), metadata=metadata)
