"""Zip archives: torch.save state dicts, TorchScript, torch.export .pt2, torch.package, npz.

Every archive is opened with bounded reads (member count, per-member and total uncompressed
size, compression ratio: zip bombs), every pickle inside is scanned (scanner.formats.pickle_scan)
and nested archives are scanned too (a .pt2 carries a torch zip of sample inputs). Only a
torch.save state dict whose data.pkl passes the allowlist is ever handed to
`torch.load(weights_only=True)`, and it is loaded from the very bytes that were scanned.
"""

from __future__ import annotations

import io
import pickle
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from scanner.errors import Finding, InvalidModelError, RejectedModelError
from scanner.formats import detect
from scanner.formats.limits import MIB, LoadLimits
from scanner.formats.pickle_scan import looks_like_pickle, scan_pickle

_CHUNK = 1 * MIB


@dataclass
class ArchiveReport:
    """What an archive holds and what is wrong with it."""

    kind: str  # a scanner.formats.detect constant
    members: list[str] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)
    problem: str | None = None
    pickles: dict[str, dict[str, Any]] = field(default_factory=dict)  # member -> scan summary

    def header(self) -> dict[str, Any]:
        return {
            "zip_kind": self.kind,
            "members": self.members[:50],
            "member_count": len(self.members),
            "pickles": self.pickles,
        }


def _open_zip(data: bytes) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(io.BytesIO(data))
    except Exception as exc:  # noqa: BLE001 - zipfile raises BadZipFile, struct.error, ValueError, ... on junk
        raise InvalidModelError(f"corrupt or truncated zip archive: {exc}") from None


def check_archive_limits(zf: zipfile.ZipFile, limits: LoadLimits) -> None:
    """Refuse archives past the limits before reading any member (declared sizes)."""
    infos = zf.infolist()
    if len(infos) > limits.max_zip_members:
        raise InvalidModelError(
            f"zip has {len(infos)} members, over LoadLimits.max_zip_members={limits.max_zip_members}"
        )
    names = [i.filename for i in infos]
    duplicates = sorted({n for n in names if names.count(n) > 1}) if len(set(names)) != len(names) else []
    if duplicates:
        # Different zip readers pick different copies: the scanned member might not be the loaded one.
        raise InvalidModelError(f"zip has duplicate member names {duplicates[:5]}: ambiguous archive")
    total = 0
    for info in infos:
        if info.flag_bits & 0x1:
            raise InvalidModelError(f"zip member {info.filename!r} is encrypted")
        if info.file_size > limits.max_member_bytes:
            raise InvalidModelError(
                f"zip member {info.filename!r} inflates to {info.file_size} bytes, "
                f"over LoadLimits.max_member_bytes={limits.max_member_bytes}"
            )
        if info.file_size > MIB and info.file_size > limits.max_compression_ratio * max(info.compress_size, 1):
            raise InvalidModelError(
                f"zip member {info.filename!r} has compression ratio "
                f"{info.file_size / max(info.compress_size, 1):.0f}:1, "
                f"over LoadLimits.max_compression_ratio={limits.max_compression_ratio:g} (zip bomb?)"
            )
        total += info.file_size
    if total > limits.max_decompressed_bytes:
        raise InvalidModelError(
            f"zip inflates to {total} bytes in all, "
            f"over LoadLimits.max_decompressed_bytes={limits.max_decompressed_bytes}"
        )


def read_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, limits: LoadLimits, max_bytes: int | None = None) -> bytes:
    """Read one member, never more than its declared size or `max_bytes` (declared sizes can lie)."""
    cap = min(info.file_size, max_bytes if max_bytes is not None else limits.max_member_bytes)
    chunks: list[bytes] = []
    got = 0
    try:
        with zf.open(info) as fh:
            while got <= cap:
                chunk = fh.read(min(_CHUNK, cap + 1 - got))
                if not chunk:
                    break
                chunks.append(chunk)
                got += len(chunk)
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, NotImplementedError, RuntimeError) as exc:
        raise InvalidModelError(f"zip member {info.filename!r} is corrupt: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - decompressors raise assorted errors (zlib.error, lzma...)
        raise InvalidModelError(f"zip member {info.filename!r} cannot be decompressed: {exc}") from None
    if got > cap:
        raise InvalidModelError(f"zip member {info.filename!r} is larger than {cap} bytes (limit or declared size)")
    return b"".join(chunks)


def _head(zf: zipfile.ZipFile, info: zipfile.ZipInfo) -> bytes:
    try:
        with zf.open(info) as fh:
            return fh.read(8)
    except Exception:  # noqa: BLE001 - reported when (if) the member is read in full
        return b""


def inspect_archive(data: bytes, limits: LoadLimits, *, depth: int = 0, prefix: str = "") -> ArchiveReport:
    """Classify an archive, check its limits, scan every pickle (and nested archive) it holds.

    Raises InvalidModelError for an archive that cannot be read at all.
    """
    zf = _open_zip(data)
    with zf:
        check_archive_limits(zf, limits)
        infos = zf.infolist()
        names = [i.filename for i in infos]
        report = ArchiveReport(kind=detect.classify_zip_members(names), members=names)
        roots = {n.split("/", 1)[0] for n in names if "/" in n}
        if report.kind == detect.TORCH_ZIP and (len(roots) != 1 or any("/" not in n for n in names)):
            # torch reads <root>/data.pkl with <root> taken from the first member: mixed roots
            # would let the scanned data.pkl differ from the one torch loads.
            report.problem = (
                f"torch zip members do not share one root folder (roots {sorted(roots)[:5]}): ambiguous archive"
            )
        for info in infos:
            if info.is_dir():
                continue
            name = prefix + info.filename
            head = _head(zf, info)
            is_pickle = info.filename.endswith((".pkl", ".pickle")) or looks_like_pickle(head)
            if is_pickle:
                member_bytes = read_member(zf, info, limits, max_bytes=limits.max_pickle_bytes)
                scan = scan_pickle(member_bytes, member=name, limits=limits)
                report.findings += scan.findings
                report.pickles[name] = scan.to_dict()
                if scan.problem:
                    report.findings.append(
                        Finding(
                            "pickle.unparseable",
                            f"pickle {name} cannot be parsed ({scan.problem}); it cannot be vouched for",
                            "high",
                            {"member": name},
                        )
                    )
            elif head.startswith(detect.ZIP_MAGICS):
                if depth + 1 > limits.max_nesting_depth:
                    report.findings.append(
                        Finding("zip.nesting", f"archive {name} nested deeper than {limits.max_nesting_depth}", "high")
                    )
                    continue
                nested_bytes = read_member(zf, info, limits)
                try:
                    nested = inspect_archive(nested_bytes, limits, depth=depth + 1, prefix=name + "!/")
                except InvalidModelError as exc:
                    report.findings.append(
                        Finding("zip.nested_invalid", f"nested archive {name} is unreadable: {exc}", "high")
                    )
                    continue
                report.findings += nested.findings
                report.pickles.update(nested.pickles)
                if nested.kind in detect.CODE_BEARING_FORMATS or nested.kind == detect.TORCH_ZIP:
                    report.findings.append(
                        Finding(
                            "zip.nested_pickle_archive",
                            f"archive member {name} is itself a {nested.kind} archive holding pickles",
                            "medium",
                            {"member": name, "kind": nested.kind},
                        )
                    )
            elif head.startswith(detect.NPY_MAGIC):
                from scanner.formats.numpy_io import npy_findings

                report.findings += npy_findings(read_member(zf, info, limits), member=name)
        return report


def _unwrap_state_dict(obj: Any) -> Mapping[str, Any]:
    """Accept `state_dict()`, or a checkpoint dict holding one under a usual key."""
    if isinstance(obj, Mapping) and not all(isinstance(v, torch.Tensor) for v in obj.values()):
        for key in ("state_dict", "generator", "model", "G", "netG"):
            if isinstance(obj.get(key), Mapping):
                return obj[key]
    if not isinstance(obj, Mapping):
        raise InvalidModelError(f"torch zip holds a {type(obj).__name__}, not a state dict (mapping name -> tensor)")
    return obj


def load_state_dict_zip(data: bytes, limits: LoadLimits) -> dict[str, torch.Tensor]:
    """`torch.load(weights_only=True)` of a state-dict zip whose data.pkl has already been scanned clean.

    Loads from the same in-memory bytes that were scanned, so the file cannot change in between.
    """
    try:
        obj = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise RejectedModelError(
            f"torch.load(weights_only=True) refused the pickle: {str(exc).splitlines()[0][:300]}",
            [Finding("pickle.weights_only_refused", str(exc)[:500], "high")],
        ) from None
    except Exception as exc:  # noqa: BLE001 - torch raises RuntimeError/ValueError/... on corrupt archives
        raise InvalidModelError(f"corrupt torch zip: {type(exc).__name__}: {str(exc)[:300]}") from None
    state = _unwrap_state_dict(obj)
    tensors: dict[str, torch.Tensor] = {}
    total = 0
    for key, value in state.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            raise InvalidModelError(
                f"state dict entry {str(key)[:80]!r} is a {type(value).__name__}, not a tensor keyed by name"
            )
        if value.numel() > limits.max_tensor_elements:
            raise InvalidModelError(f"tensor {key!r} has {value.numel()} elements, over LoadLimits.max_tensor_elements")
        total += value.numel()
        tensors[key] = value
    if total > limits.max_total_elements:
        raise InvalidModelError(f"state dict has {total} elements, over LoadLimits.max_total_elements")
    return tensors
