"""Decide a model file's format from its bytes, never from its name.

An extension is the uploader's claim; the bytes are the fact. `model.safetensors` holding a
pickle is a pickle, and is treated as one.
"""

from __future__ import annotations

import io
import pickletools
import struct
import zipfile
from typing import Final

from scanner.formats.pickle_scan import looks_like_pickle

ONNX: Final = "onnx"
SAFETENSORS: Final = "safetensors"
TORCH_ZIP: Final = "torch_zip"  # torch.save zip: <root>/data.pkl (+ data/N storages)
TORCHSCRIPT: Final = "torchscript"  # torch.jit.save zip: code/ and constants.pkl
TORCH_EXPORT: Final = "torch_export"  # torch.export .pt2 archive
TORCH_PACKAGE: Final = "torch_package"  # torch.package: .data/extern_modules, pickles + sources
PICKLE: Final = "pickle"  # a raw pickle stream (incl. legacy non-zip torch.save)
NPY: Final = "npy"
NPZ: Final = "npz"
ZIP: Final = "zip"  # a zip we do not recognise as any of the above
UNKNOWN: Final = "unknown"

# Formats whose loading can run code shipped in the file: never loaded, always rejected.
CODE_BEARING_FORMATS: Final = frozenset({TORCHSCRIPT, TORCH_EXPORT, TORCH_PACKAGE, PICKLE})
# Formats dgmscan loads (after their safety checks).
LOADABLE_FORMATS: Final = frozenset({ONNX, SAFETENSORS, TORCH_ZIP})

ZIP_MAGICS: Final = (b"PK\x03\x04", b"PK\x05\x06")  # local file header, empty-archive EOCD
NPY_MAGIC: Final = b"\x93NUMPY"
# The first tag of a serialized ModelProto is almost always field 1 (ir_version, varint).
_ONNX_FIRST_TAG: Final = 0x08
# Tags of ModelProto fields: (field number << 3) | wire type (varint 0 or length-delimited 2).
_MODELPROTO_TAGS: Final = frozenset(
    {(1 << 3) | 0, (2 << 3) | 2, (3 << 3) | 2, (4 << 3) | 2, (5 << 3) | 0, (6 << 3) | 2, (7 << 3) | 2, (8 << 3) | 2}
    | {(14 << 3) | 2, (20 << 3) | 2, (25 << 3) | 2}
)

# First bytes of protocol-0/1 pickles: MARK, GLOBAL, EMPTY_LIST/DICT/TUPLE, a few constants.
_PROTOCOL0_FIRST_OPCODES: Final = frozenset(b"(c]})NIFLSVlidtpg")


def classify_zip_members(names: list[str]) -> str:
    """Name the zip flavour from its member list (root folder stripped, as torch does)."""
    stripped = {n.split("/", 1)[1] if "/" in n else n for n in names}
    if any(n.endswith("archive_format") or n.startswith("models/") for n in stripped) or any(
        n.endswith("serialized_exported_program.json") for n in stripped
    ):
        return TORCH_EXPORT
    if any(n.startswith("code/") for n in stripped) or "constants.pkl" in stripped:
        return TORCHSCRIPT
    if ".data/extern_modules" in stripped or any(n.startswith(".data/") and n.endswith(".storage") for n in stripped):
        return TORCH_PACKAGE
    if "data.pkl" in stripped:
        return TORCH_ZIP
    if names and all(n.endswith(".npy") for n in names):
        return NPZ
    return ZIP


def _is_complete_pickle(head: bytes) -> bool:
    """Does `head` parse as a pickle up to STOP? (only used to recognise protocol 0/1 text pickles)"""
    try:
        for info, _arg, _pos in pickletools.genops(io.BytesIO(head)):
            if info.name == "STOP":
                return True
    except Exception:  # noqa: BLE001 - any parse failure means "not a pickle"
        return False
    return False


def _looks_like_safetensors(data: bytes) -> bool:
    if len(data) < 9:
        return False
    (header_len,) = struct.unpack("<Q", data[:8])
    # The header is a JSON object; its length field is what hostile files lie about, so do not
    # require it to fit: the header validator reports that lie by name.
    return data[8:9] == b"{" and header_len > 0


def _parses_as_onnx(data: bytes) -> bool | None:
    """True/False: parses as a ModelProto with a graph or opsets; None: not a protobuf at all."""
    try:
        import onnx

        model = onnx.load_model_from_string(data)
    except Exception:  # noqa: BLE001 - protobuf raises DecodeError and friends
        return None
    return bool(model.graph.node) or bool(model.opset_import)


def _looks_like_onnx(data: bytes) -> bool:
    if not data:
        return False
    if data[0] == _ONNX_FIRST_TAG:
        # Starts like ONNX: even when it does not parse, let the ONNX reader say what is wrong.
        return _parses_as_onnx(data) is not False
    # Writers order fields by number, so other first tags are rare; accept them only if they parse.
    return data[0] in _MODELPROTO_TAGS and bool(_parses_as_onnx(data))


def detect_format(data: bytes) -> str:
    """The format of `data` (one of the constants above)."""
    head = data[:16]
    if head.startswith(ZIP_MAGICS):
        try:
            with zipfile.ZipFile(io.BytesIO(data)) as zf:
                return classify_zip_members(zf.namelist())
        except Exception:  # noqa: BLE001 - corrupt zip: the zip reader reports the problem
            return ZIP
    if head.startswith(NPY_MAGIC):
        return NPY
    if looks_like_pickle(head):
        return PICKLE
    if _looks_like_safetensors(data):
        return SAFETENSORS
    if _looks_like_onnx(data):
        return ONNX
    if head and head[0] in _PROTOCOL0_FIRST_OPCODES and _is_complete_pickle(data[: 1 << 20]):
        return PICKLE
    return UNKNOWN
